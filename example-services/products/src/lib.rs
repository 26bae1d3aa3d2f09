//! Products: CRUD with price in minor units and stock, and reservations that take and give back stock
//! atomically. Owns its own database.
//!
//! Stock never goes negative whatever the concurrency: a reservation decrements with
//! `UPDATE ... SET stock = stock - q WHERE id = ? AND stock >= q` inside one transaction for all its items,
//! so it either takes everything it asked for or nothing (and a `CHECK (stock >= 0)` backs this up).
//!
//! The layout every reference service has, one job per file, so that each can be read, tested and
//! replaced alone:
//!
//! - `model`: the request and response bodies (and the OpenAPI schemas derived from them);
//! - `domain`: the rules (field bounds, valid reservations, their canonical form, totals that never
//!   wrap, what a repeated reservation id means), plain functions unit-tested without a socket or a
//!   database;
//! - `store`: the migrations and the SQL, for SQLite and PostgreSQL alike, the reservation
//!   transactions among it;
//! - `http`: the routes and handlers with their OpenAPI annotations: who may call, then `domain`, then
//!   `store`;
//! - this file: the wiring, [`app`].

pub mod domain;
mod http;
pub mod model;
mod store;

pub use http::{router, ApiDoc};
pub use model::{
    NewProduct, NewReservation, Product, ProductPatch, Reservation, ReservationItem,
    ReservationStatus, ReservedItem,
};

use axum::Router;

/// Connect, migrate, build the router. Who may do what, checked here: anyone reads the catalogue;
/// an administrator (scope `admin`) or a service changes it; only services (the orders service, with
/// the service token) reserve and release stock.
pub async fn app(database_url: &str, auth: service_kit::auth::Auth) -> anyhow::Result<Router> {
    let pool = store::connect(database_url).await?;
    Ok(service_kit::auth::with_auth(router(pool), auth))
}
