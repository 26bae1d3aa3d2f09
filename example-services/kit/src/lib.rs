//! What every Tollgate reference service shares: the JSON error envelope (the gateway's shape),
//! pagination and the list/get/delete of rows keyed by id (`crud`), `/healthz` and `/readyz`, database
//! setup with migrations and busy retries, the flags every service takes (`server::CommonArgs`),
//! tracing, graceful shutdown, and (feature `testing`, for their tests only) the harness that runs them
//! as real processes.

pub mod auth;
pub mod crud;
pub mod db;
pub mod error;
pub mod health;
pub mod openapi;
pub mod pagination;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{ApiError, ApiResult, FieldError};
pub use pagination::{Page, PageParams};
