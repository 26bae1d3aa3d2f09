//! What every Tollgate reference service shares: the JSON error envelope (the gateway's shape),
//! pagination, `/healthz` and `/readyz`, database setup with migrations and busy retries, settings,
//! tracing, graceful shutdown, and (feature `testing`, for their tests only) the harness that runs them
//! as real processes.

pub mod auth;
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
