//! Users: create (unique email), get, list (paginated), update, delete. Owns its own database.
//!
//! Who may do what (checked here, whatever the gateway did): an administrator (a token with scope
//! `admin`) or another service creates and lists users and manages any of them; a user reads, changes
//! and deletes only their own record (the token's `sub`). Everyone else gets `401`/`403`.
//!
//! The layout every reference service has, one job per file, so that each can be read, tested and
//! replaced alone:
//!
//! - `model`: the request and response bodies (and the OpenAPI schemas derived from them);
//! - `domain`: the rules (what is a valid name or email, what is stored), plain functions unit-tested
//!   without a socket or a database;
//! - `store`: the migrations and the SQL, for SQLite and PostgreSQL alike;
//! - `http`: the routes and handlers with their OpenAPI annotations: who may call, then `domain`, then
//!   `store`;
//! - this file: the wiring, [`app`].

pub mod domain;
mod http;
pub mod model;
mod store;

pub use http::{router, ApiDoc};
pub use model::{NewUser, User, UserPatch};

use axum::Router;
use service_kit::auth::Auth;

/// Connect to the database, migrate, and build the router, its callers checked by `auth`.
pub async fn app(database_url: &str, auth: Auth) -> anyhow::Result<Router> {
    let pool = store::connect(database_url).await?;
    Ok(service_kit::auth::with_auth(router(pool), auth))
}
