//! Orders: place an order (checks the user with the users service, reserves stock with the products
//! service, stores a price snapshot), read them, cancel them. Owns its own database and reaches the other
//! services over HTTP only.
//!
//! No stock leaks, whatever fails when:
//! 1. the order is stored `pending` (with a lease) before anything else is called;
//! 2. stock is reserved under the order's id (idempotent at the products service);
//! 3. the order becomes `confirmed` only if it is still `pending`.
//!
//! Any refusal or failure marks it `rejected`/`failed` and releases the reservation. If the process dies
//! in between, the recovery loop fails pending orders whose lease has run out and releases their stock;
//! releasing is idempotent and retried until the products service confirms it.
//!
//! Several instances may share one database (replicas behind the gateway): every order carries a lease
//! (`lease_owner`, `lease_until`) that the instance working on it renews; an instance confirms, fails or
//! releases only an order it holds, and takes one over only once its lease has run out. Repeats are
//! recognised by the database (the unique `idempotency_key`), never by a process's memory.
//!
//! `Idempotency-Key`: a repeat with the same key and body gets the stored response; the same key with a
//! different body gets 422; a repeat while the first is still running gets 409.
//!
//! The layout every reference service has (`model`, `domain`, `store`, `http`), one job per file,
//! and, because an order spans three services, three more:
//!
//! - `model`: the request and response bodies (and the OpenAPI schemas derived from them);
//! - `domain`: the rules (a valid order and its canonical form, whose idempotency key is whose, who
//!   may place and list whose orders), plain functions unit-tested without a socket or a database;
//! - `store`: the migrations and the SQL, for SQLite and PostgreSQL alike, every write conditional
//!   on the lease;
//! - `remote`: the calls to the users and products services, their answers made an `Outcome`;
//! - `placing`: the steps of placing an order after it is stored pending (lease renewal, confirm,
//!   reject, fail and release);
//! - `recovery`: the loop that settles what no request is working on any more;
//! - `http`: the routes and handlers with their OpenAPI annotations;
//! - this file: the settings and the wiring, [`app`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use sqlx::AnyPool;

pub mod domain;
mod http;
pub mod model;
mod placing;
mod recovery;
mod remote;
mod store;

pub use domain::parse_duration;
pub use http::{router, ApiDoc};
pub use model::{ListParams, NewOrder, NewOrderItem, Order, OrderItem, OrderStatus};
pub use recovery::{recover, Recovery};

/// Where the other services are, and how long to wait for them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub users_url: String,
    /// Base URLs of the products service's instances (one is enough behind a load balancer); a call
    /// goes to the next one when an instance cannot be reached.
    pub products_urls: Vec<String>,
    pub pending_timeout: Duration,
    pub call_timeout: Duration,
    /// The credential this service calls users and products with (`SERVICE_TOKEN`).
    pub service_token: String,
}

/// What the handlers, the placing steps and the recovery loop share.
#[derive(Clone)]
pub struct AppState {
    pool: AnyPool,
    http: reqwest::Client,
    settings: Arc<Settings>,
    /// This process's name in `orders.lease_owner`: random per start, so that a restarted instance
    /// takes over its own old orders like any other's, only once their lease has run out.
    instance: Arc<str>,
    /// Which of `products_urls` the next call to the products service starts with (round robin).
    next_products: Arc<std::sync::atomic::AtomicUsize>,
}

/// The order service: its router, and the recovery loop the server runs beside it
/// ([`Recovery::run`], with `service_kit::server::serve_with`).
pub struct Service {
    pub router: Router,
    pub recovery: Recovery,
}

/// Connect, migrate, build the router. Who may do what, checked here: a user places, reads, lists
/// and cancels their own orders (the token's `sub`); an administrator or a service all of them;
/// without a credential nothing. Calls to users and products carry the service token.
pub async fn app(
    database_url: &str,
    settings: Settings,
    auth: service_kit::auth::Auth,
) -> anyhow::Result<Service> {
    if settings.products_urls.is_empty() {
        anyhow::bail!("at least one products URL is needed");
    }
    let pool = store::connect(database_url).await?;
    let mut creds = reqwest::header::HeaderMap::new();
    let mut bearer =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", settings.service_token))?;
    bearer.set_sensitive(true);
    creds.insert(reqwest::header::AUTHORIZATION, bearer);
    let http = reqwest::Client::builder()
        .default_headers(creds)
        .no_proxy()
        .connect_timeout(settings.call_timeout.min(Duration::from_secs(2)))
        .timeout(settings.call_timeout)
        .build()?;
    let state = AppState {
        pool: pool.clone(),
        http,
        settings: Arc::new(settings),
        instance: uuid::Uuid::new_v4().simple().to_string().into(),
        next_products: Arc::default(),
    };
    Ok(Service {
        router: service_kit::auth::with_auth(router(state.clone()), auth),
        recovery: Recovery { state },
    })
}
