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

use service_kit::auth::Caller;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::db::{self, retry};
use service_kit::error::{ErrorBody, JsonBody, PathParam, Query};
use service_kit::openapi::BearerAuth;
use service_kit::{ApiError, ApiResult, FieldError, Page, PageParams};
use sha2::{Digest, Sha256};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, FromRow};
use utoipa::{IntoParams, OpenApi, ToSchema};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

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

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    #[schema(minimum = 1)]
    pub product_id: i64,
    #[schema(minimum = 1, maximum = 1000)]
    pub qty: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user_id": 1, "items": [{"product_id": 1, "qty": 1}]}))]
pub struct NewOrder {
    #[schema(minimum = 1)]
    pub user_id: i64,
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<NewOrderItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct OrderItem {
    pub product_id: i64,
    pub qty: i64,
    /// Price per unit when the order was placed, in minor units.
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: String,
    pub user_id: i64,
    /// `pending`, `confirmed`, `rejected`, `failed` or `cancelled`.
    #[schema(value_type = OrderStatus)]
    pub status: String,
    pub total_cents: i64,
    pub items: Vec<OrderItem>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, FromRow)]
struct OrderRow {
    id: String,
    user_id: i64,
    status: String,
    total_cents: i64,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub user_id: Option<i64>,
    #[param(inline)]
    pub status: Option<OrderStatus>,
    /// Items per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// The states of an order (the `status` column holds their names): a filter that names none of
/// them is refused (`400`) rather than answered with an empty page.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Failed,
    Cancelled,
}

impl OrderStatus {
    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "order-service", description = "Tollgate reference service: orders"),
    paths(create_order, get_order, list_orders, cancel_order),
    components(schemas(NewOrder, NewOrderItem, Order, OrderItem, OrderStatus, ErrorBody, Page<Order>)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// `250ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(format!("`{s}`: use a unit, e.g. 500ms, 5s, 1m"));
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    Ok(Duration::from_millis(n * mult))
}

/// The order service: its router, and the recovery loop the server runs beside it
/// ([`Recovery::run`], with `service_kit::server::serve_with`).
pub struct Service {
    pub router: Router,
    pub recovery: Recovery,
}

/// Settles the orders no request is working on any more (see [`recover`]): the loop belongs to the
/// server, which starts it, stops it at shutdown and waits for it.
pub struct Recovery {
    state: AppState,
}

impl Recovery {
    /// Every 500 ms, settle what has to be, until `stop`. The first round runs at once, so that what
    /// a previous run left is settled soon after a start. A round in progress is finished, never cut.
    pub async fn run(self, mut stop: service_kit::server::Stop) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.requested() => break,
                _ = tick.tick() => recover(&self.state, &stop).await,
            }
        }
        tracing::info!("recovery loop stopped");
    }
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
    let (pool, _) = db::connect(database_url, &SQLITE, &POSTGRES).await?;
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

pub fn router(state: AppState) -> Router {
    let pool = state.pool.clone();
    Router::new()
        .route("/orders", get(list_orders).post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route(
            "/openapi.json",
            get(|| async { Json(service_kit::openapi::document(ApiDoc::openapi())) }),
        )
        .with_state(state)
        .merge(service_kit::health::routes(pool))
}

fn lease(settings: &Settings) -> String {
    db::rfc3339(std::time::SystemTime::now() + settings.pending_timeout)
}

/// Validate and canonicalize (merge equal products, sort) a new order.
fn canonical(o: &NewOrder) -> Result<NewOrder, ApiError> {
    let mut f = Vec::new();
    if o.user_id < 1 {
        f.push(FieldError::new("user_id", "must be a user id"));
    }
    if o.items.is_empty() || o.items.len() > 50 {
        f.push(FieldError::new("items", "must have 1 to 50 items"));
    }
    for (i, it) in o.items.iter().enumerate() {
        if it.product_id < 1 {
            f.push(FieldError::new(
                &format!("items[{i}].product_id"),
                "must be a product id",
            ));
        }
        if !(1..=1000).contains(&it.qty) {
            f.push(FieldError::new(
                &format!("items[{i}].qty"),
                "must be between 1 and 1000",
            ));
        }
    }
    if !f.is_empty() {
        return Err(ApiError::invalid(f));
    }
    let mut merged: std::collections::BTreeMap<i64, i64> = Default::default();
    for it in &o.items {
        *merged.entry(it.product_id).or_default() += it.qty;
    }
    Ok(NewOrder {
        user_id: o.user_id,
        items: merged
            .into_iter()
            .map(|(product_id, qty)| NewOrderItem { product_id, qty })
            .collect(),
    })
}

fn hash(o: &NewOrder) -> String {
    let json = serde_json::to_vec(o).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// A response as stored for idempotent replay.
fn stored(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut r = (status, [("content-type", "application/json")], body).into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

async fn load_order(pool: &AnyPool, id: &str) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT id, user_id, status, total_cents, created_at, updated_at FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let items: Vec<OrderItem> = sqlx::query_as("SELECT product_id, qty, unit_price_cents FROM order_items WHERE order_id = $1 ORDER BY product_id")
        .bind(id)
        .fetch_all(pool)
        .await?;
    Ok(Some(Order {
        id: r.id,
        user_id: r.user_id,
        status: r.status,
        total_cents: r.total_cents,
        items,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }))
}

/// What an earlier request with the same idempotency key says.
enum Earlier {
    None,
    Replay(StatusCode, String),
    Mismatch,
    InProgress,
}

async fn earlier(pool: &AnyPool, key: &str, hash: &str) -> Result<Earlier, sqlx::Error> {
    let row: Option<(String, Option<i64>, Option<String>)> =
        sqlx::query_as("SELECT request_hash, response_status, response_body FROM orders WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        None => Earlier::None,
        Some((h, _, _)) if h != hash => Earlier::Mismatch,
        Some((_, Some(status), Some(body))) => Earlier::Replay(
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
            body,
        ),
        Some(_) => Earlier::InProgress,
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 => Ok(Some(s.to_string())),
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Place an order.
#[utoipa::path(post, path = "/orders", request_body = NewOrder, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "repeat-safe key")),
    responses((status = 201, body = Order, headers(("location" = String, description = "the order's URL")),
        links(("GetOrder" = (operation_id = "get_order", parameters(("id" = "$response.body#/id")))),
              ("CancelOrder" = (operation_id = "cancel_order", parameters(("id" = "$response.body#/id")))))),
              (status = 400, description = "malformed JSON or Idempotency-Key, or a query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "an order for another user", body = ErrorBody),
              (status = 409, description = "insufficient stock, or the same key is in progress", body = ErrorBody),
              (status = 415, description = "the body is not `application/json`", body = ErrorBody),
              (status = 422, description = "invalid fields, unknown user or product, or a reused key", body = ErrorBody),
              (status = 503, description = "users or products service unavailable, or the database busy", body = ErrorBody)))]
async fn create_order(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<NewOrder>,
) -> ApiResult<Response> {
    if !caller.may_act_for(req.user_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you may only place orders for yourself",
        ));
    }
    let order = canonical(&req)?;
    // A key is the caller's own: the same key from another user is another key (it neither replays
    // nor collides with theirs, so it tells nothing of what they sent).
    let key = idempotency_key(&headers)?.map(|k| format!("{}:{k}", req.user_id));
    let h = hash(&order);
    let pool = &st.pool;

    let check = |k: &str| {
        let k = k.to_string();
        let h = h.clone();
        async move {
            match retry(|| earlier(pool, &k, &h)).await? {
                Earlier::None => Ok(None),
                Earlier::Replay(status, body) => Ok(Some(stored(status, body, true))),
                Earlier::Mismatch => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                )),
                Earlier::InProgress => Err(ApiError::conflict(
                    "request_in_progress",
                    "a request with this Idempotency-Key is still being processed",
                )),
            }
        }
    };
    if let Some(k) = &key {
        if let Some(resp) = check(k).await? {
            return Ok(resp);
        }
    }

    // 1. Pending, before any other service is touched.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = db::now();
    let lease_until = lease(&st.settings);
    let inserted = retry(|| {
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, idempotency_key, request_hash, lease_owner, lease_until, created_at, updated_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(order.user_id)
        .bind(key.clone())
        .bind(&h)
        .bind(&*st.instance)
        .bind(&lease_until)
        .bind(&now)
        .bind(&now)
        .execute(pool)
    })
    .await;
    match inserted {
        Ok(_) => {}
        // Another request with the same key got in first.
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() && key.is_some() => {
            let k = key.as_deref().unwrap_or_default();
            return match check(k).await? {
                Some(resp) => Ok(resp),
                None => Err(ApiError::conflict(
                    "request_in_progress",
                    "a request with this Idempotency-Key is still being processed",
                )),
            };
        }
        Err(e) => return Err(e.into()),
    }

    let outcome = holding_lease(&st, &id, place(&st, &id, &order)).await;
    finish(&st, &id, &order, &now, outcome).await
}

/// What placing an order came to.
enum Outcome {
    Confirmed(Vec<OrderItem>, i64),
    /// Refused for a reason that will not change on retry (unknown user, no stock): stored for replay.
    Rejected(ApiError),
    /// A dependency failed: not stored for replay; the key may be retried.
    Failed(ApiError),
}

/// Run `work` on order `id` while renewing this instance's lease on it (every third of
/// `pending_timeout`), so that another instance takes it over only if this one stops working on it
/// (a crash, `kill -9`, a hang longer than the lease). A renewal that finds the lease gone changes
/// nothing: the confirmation checks the lease holder and loses then.
async fn holding_lease<T>(
    st: &AppState,
    id: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (st.settings.pending_timeout / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let renewed = retry(|| {
                    sqlx::query("UPDATE orders SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'pending'")
                        .bind(lease(&st.settings))
                        .bind(id)
                        .bind(&*st.instance)
                        .execute(&st.pool)
                })
                .await;
                match renewed {
                    Ok(r) if r.rows_affected() == 1 => {}
                    Ok(_) => tracing::warn!(order = id, "lease lost while placing the order"),
                    Err(e) => tracing::warn!(error = %e, order = id, "could not renew the lease"),
                }
            }
        }
    }
}

/// Steps 2–3: check the user, reserve the stock.
async fn place(st: &AppState, id: &str, order: &NewOrder) -> Outcome {
    let s = &st.settings;
    match st
        .http
        .get(format!("{}/users/{}", s.users_url, order.user_id))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => {}
        Ok(r) if r.status() == 404 => {
            let mut e = ApiError::invalid(vec![FieldError::new(
                "user_id",
                format!("user {} does not exist", order.user_id),
            )]);
            e.code = "unknown_user";
            e.message = "the user does not exist".into();
            return Outcome::Rejected(e);
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), "users service answered unexpectedly");
            return Outcome::Failed(ApiError::unavailable(
                "users_unavailable",
                "the users service is unavailable",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "users service unreachable");
            return Outcome::Failed(ApiError::unavailable(
                "users_unavailable",
                "the users service is unavailable",
            ));
        }
    }
    #[derive(Deserialize)]
    struct Reserved {
        items: Vec<OrderItem>,
        total_cents: i64,
    }
    #[derive(Deserialize)]
    struct Remote {
        error: RemoteError,
    }
    #[derive(Deserialize)]
    struct RemoteError {
        message: String,
    }
    let body = serde_json::json!({ "id": id, "items": order.items });
    match to_products(st, |base| {
        st.http.post(format!("{base}/reservations")).json(&body)
    })
    .await
    {
        Ok(r) if r.status() == 201 || r.status() == 200 => match r.json::<Reserved>().await {
            Ok(res) => Outcome::Confirmed(res.items, res.total_cents),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable reservation");
                Outcome::Failed(ApiError::unavailable(
                    "products_unavailable",
                    "the products service is unavailable",
                ))
            }
        },
        Ok(r) if r.status() == 409 => {
            let msg = r
                .json::<Remote>()
                .await
                .map(|e| e.error.message)
                .unwrap_or_else(|_| "insufficient stock".into());
            Outcome::Rejected(ApiError::conflict("insufficient_stock", msg))
        }
        Ok(r) if r.status() == 404 => {
            let msg = r
                .json::<Remote>()
                .await
                .map(|e| e.error.message)
                .unwrap_or_else(|_| "unknown product".into());
            let mut e = ApiError::invalid(vec![FieldError::new("items", msg)]);
            e.code = "unknown_product";
            e.message = "an ordered product does not exist".into();
            Outcome::Rejected(e)
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), "products service answered unexpectedly");
            Outcome::Failed(ApiError::unavailable(
                "products_unavailable",
                "the products service is unavailable",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "products service unreachable");
            Outcome::Failed(ApiError::unavailable(
                "products_unavailable",
                "the products service is unavailable",
            ))
        }
    }
}

/// Step 4: record the outcome; on anything but confirmation, give back what may be reserved.
async fn finish(
    st: &AppState,
    id: &str,
    req: &NewOrder,
    created_at: &str,
    outcome: Outcome,
) -> ApiResult<Response> {
    let pool = &st.pool;
    let now = db::now();
    match outcome {
        Outcome::Confirmed(mut items, total) => {
            items.sort_by_key(|it| it.product_id);
            let order = Order {
                id: id.to_string(),
                user_id: req.user_id,
                status: "confirmed".into(),
                total_cents: total,
                items,
                created_at: created_at.to_string(),
                updated_at: now.clone(),
            };
            let body = serde_json::to_string(&order).unwrap_or_default();
            // Confirmation, items and the stored response commit together: a crash leaves either a
            // pending order (which recovery fails and releases) or a complete one a repeat can replay.
            let confirmed = retry(|| async {
                let mut tx = pool.begin().await?;
                // Only while this instance holds the lease: once another took the order over (to fail
                // it), confirming would race its release of the stock.
                let done = sqlx::query(
                    "UPDATE orders SET status = 'confirmed', total_cents = $1, response_status = 201, \
                     response_body = $2, updated_at = $3 WHERE id = $4 AND status = 'pending' AND lease_owner = $5",
                )
                .bind(total)
                .bind(&body)
                .bind(&now)
                .bind(id)
                .bind(&*st.instance)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok(false); // another instance's recovery took it over meanwhile
                }
                for it in &order.items {
                    sqlx::query(
                        "INSERT INTO order_items (order_id, product_id, qty, unit_price_cents) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(it.product_id)
                    .bind(it.qty)
                    .bind(it.unit_price_cents)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            })
            .await;
            match confirmed {
                Ok(true) => {
                    let mut resp = stored(StatusCode::CREATED, body, false);
                    if let Ok(v) = HeaderValue::from_str(&format!("/orders/{id}")) {
                        resp.headers_mut().insert("location", v);
                    }
                    Ok(resp)
                }
                Ok(false) => {
                    // The instance that took it over fails it and releases; releasing here too is
                    // harmless (idempotent) and gives the stock back sooner.
                    release(st, id).await;
                    Err(ApiError::unavailable(
                        "order_expired",
                        "the order took too long and was cancelled; try again",
                    ))
                }
                Err(e) => {
                    tracing::error!(error = %e, order = id, "could not confirm order");
                    fail(st, id).await;
                    Err(ApiError::unavailable(
                        "database_busy",
                        "the order could not be stored; try again",
                    ))
                }
            }
        }
        Outcome::Rejected(err) => {
            // Nothing was reserved (reservations are all-or-nothing), so nothing to give back.
            let body = serde_json::to_string(&err.body()).unwrap_or_default();
            retry(|| {
                sqlx::query(
                    "UPDATE orders SET status = 'rejected', stock_released = 1, response_status = $1, response_body = $2, updated_at = $3 \
                     WHERE id = $4 AND status = 'pending' AND lease_owner = $5",
                )
                .bind(i64::from(err.status.as_u16()))
                .bind(&body)
                .bind(&now)
                .bind(id)
                .bind(&*st.instance)
                .execute(pool)
            })
            .await?;
            Err(err)
        }
        Outcome::Failed(err) => {
            fail(st, id).await;
            Err(err)
        }
    }
}

/// Mark a pending order this instance holds failed (freeing its idempotency key for a retry) and
/// release its stock. The lease is kept (renewed) for the release: another instance retries it only if
/// this one does not get it done in time.
async fn fail(st: &AppState, id: &str) {
    let now = db::now();
    let r = retry(|| {
        sqlx::query("UPDATE orders SET status = 'failed', idempotency_key = NULL, updated_at = $1, lease_until = $2 WHERE id = $3 AND status = 'pending' AND lease_owner = $4")
            .bind(&now)
            .bind(lease(&st.settings))
            .bind(id)
            .bind(&*st.instance)
            .execute(&st.pool)
    })
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, order = id, "could not mark order failed; recovery will");
        return;
    }
    release(st, id).await;
}

/// Send a request to the products service, to each of its instances in turn while the answer is a
/// transport error (refused, reset, timed out). Safe for both calls made to it: a reservation is
/// idempotent by the order's id (the same id and items again is a replay, `200`) and so is a release,
/// so what an instance may have done before it failed is not done twice.
async fn to_products(
    st: &AppState,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let urls = &st.settings.products_urls;
    let first = st
        .next_products
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tries = (0..urls.len()).map(|i| &urls[(first + i) % urls.len()]);
    let mut result = match tries.next() {
        Some(base) => request(base).send().await,
        None => request("").send().await, // no URL: refused by `app`; this only reports it
    };
    for base in tries {
        match &result {
            Err(e) => tracing::warn!(error = %e, "products instance unreachable; trying the next"),
            Ok(_) => break,
        }
        result = request(base).send().await;
    }
    result
}

/// Give back the stock of a failed or cancelled order; on success remember it. Idempotent.
async fn release(st: &AppState, id: &str) -> bool {
    match to_products(st, |base| {
        st.http.delete(format!("{base}/reservations/{id}"))
    })
    .await
    {
        Ok(r) if r.status() == 204 || r.status() == 404 => {
            let done = retry(|| {
                sqlx::query("UPDATE orders SET stock_released = 1 WHERE id = $1")
                    .bind(id)
                    .execute(&st.pool)
            })
            .await;
            done.is_ok()
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), order = id, "release refused; will retry");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, order = id, "release failed; will retry");
            false
        }
    }
}

/// Orders at most one round settles: a bound on how long a round (and so a shutdown) can take.
const RECOVERY_BATCH: usize = 100;

/// Settle the orders nobody works on any more, whichever instance left them: a `pending` order whose
/// lease ran out (its instance died or hung before confirming) is failed and its stock released; a
/// `failed` or `cancelled` one whose stock is not yet back is released again.
///
/// Nothing here assumes it is the only instance: each order is first taken over with one conditional
/// `UPDATE ... WHERE lease_until < now ... RETURNING`, which exactly one instance wins (PostgreSQL
/// rechecks the `WHERE` on the row it waited for, under READ COMMITTED; SQLite has one writer), and every
/// later step is conditional on still holding it. One order at a time, so that a lease (taken for
/// `pending_timeout`, longer than the one call a step makes) never runs out under its new holder.
/// Timestamps are this host's clock: instances' clocks must agree to well within `pending_timeout`.
pub async fn recover(st: &AppState, stop: &service_kit::server::Stop) {
    for _ in 0..RECOVERY_BATCH {
        if stop.is_requested() {
            return;
        }
        let now = db::now();
        let claimed: Result<Option<(String, String)>, _> = retry(|| {
            sqlx::query_as(
                "UPDATE orders SET lease_owner = $1, lease_until = $2 \
                 WHERE lease_until < $3 AND (status = 'pending' OR (status IN ('failed', 'cancelled') AND stock_released = 0)) \
                 AND id IN (SELECT id FROM orders WHERE lease_until < $3 \
                            AND (status = 'pending' OR (status IN ('failed', 'cancelled') AND stock_released = 0)) \
                            ORDER BY lease_until LIMIT 1) \
                 RETURNING id, status",
            )
            .bind(&*st.instance)
            .bind(lease(&st.settings))
            .bind(&now)
            .fetch_optional(&st.pool)
        })
        .await;
        let (id, status) = match claimed {
            Ok(Some(c)) => c,
            Ok(None) => return, // nothing to settle
            Err(e) => {
                tracing::warn!(error = %e, "recovery could not claim an order");
                return;
            }
        };
        if status == "pending" {
            tracing::info!(order = %id, "failing an order left pending");
            let failed = retry(|| {
                sqlx::query("UPDATE orders SET status = 'failed', idempotency_key = NULL, updated_at = $1 WHERE id = $2 AND status = 'pending' AND lease_owner = $3")
                    .bind(&now)
                    .bind(&id)
                    .bind(&*st.instance)
                    .execute(&st.pool)
            })
            .await;
            if let Err(e) = failed {
                tracing::warn!(error = %e, order = %id, "could not fail an order; the lease will run out again");
                continue;
            }
        }
        release(st, &id).await;
    }
}

#[utoipa::path(get, path = "/orders/{id}", params(("id" = String, Path, description = "order id")), security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 404, description = "no such order (or another user's)", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn get_order(
    State(st): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Order>> {
    retry(|| load_order(&st.pool, &id))
        .await?
        .filter(|o| caller.may_act_for(o.user_id))
        .map(Json)
        .ok_or_else(|| order_not_found(&id))
}

fn order_not_found(id: &str) -> ApiError {
    ApiError::not_found("order_not_found", format!("order {id} does not exist"))
}

#[utoipa::path(get, path = "/orders", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = Page<Order>), (status = 400, description = "malformed JSON or Idempotency-Key, or a query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "another user's orders", body = ErrorBody), (status = 422, description = "limit or offset out of range", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn list_orders(
    State(st): State<AppState>,
    caller: Caller,
    Query(mut q): Query<ListParams>,
) -> ApiResult<Json<Page<Order>>> {
    // A user lists their own orders; another user's order is "not found" elsewhere, so ids leak
    // nothing.
    if let (false, Some(c)) = (caller.is_admin(), caller.user_id()) {
        if q.user_id.is_some_and(|u| u != c) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "you may only list your own orders",
            ));
        }
        q.user_id = Some(c);
    }
    let (limit, offset) = PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let ids: Vec<(String,)> = retry(|| {
        sqlx::query_as(
            "SELECT id FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2) \
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(q.user_id)
        .bind(q.status.map(OrderStatus::as_str))
        .bind(limit)
        .bind(offset)
        .fetch_all(&st.pool)
    })
    .await?;
    let (total,): (i64,) = retry(|| {
        sqlx::query_as("SELECT COUNT(*) FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2)")
            .bind(q.user_id)
            .bind(q.status.map(OrderStatus::as_str))
            .fetch_one(&st.pool)
    })
    .await?;
    let mut items = Vec::with_capacity(ids.len());
    for (id,) in ids {
        if let Some(o) = retry(|| load_order(&st.pool, &id)).await? {
            items.push(o);
        }
    }
    Ok(Json(Page::new(items, limit, offset, total)))
}

/// Cancel a confirmed order and give its stock back. Cancelling twice is fine.
#[utoipa::path(post, path = "/orders/{id}/cancel", params(("id" = String, Path, description = "order id")), security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 404, description = "no such order (or another user's)", body = ErrorBody), (status = 409, description = "not in a state that can be cancelled", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn cancel_order(
    State(st): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Order>> {
    let owner = retry(|| load_order(&st.pool, &id))
        .await?
        .map(|o| o.user_id);
    if !owner.is_some_and(|o| caller.may_act_for(o)) {
        return Err(order_not_found(&id));
    }
    let now = db::now();
    let done = retry(|| {
        // The lease is this instance's while it releases; another retries the release once it runs out.
        sqlx::query("UPDATE orders SET status = 'cancelled', stock_released = 0, updated_at = $1, lease_owner = $2, lease_until = $3 WHERE id = $4 AND status = 'confirmed'")
            .bind(&now)
            .bind(&*st.instance)
            .bind(lease(&st.settings))
            .bind(&id)
            .execute(&st.pool)
    })
    .await?;
    let order = retry(|| load_order(&st.pool, &id))
        .await?
        .ok_or_else(|| order_not_found(&id))?;
    if done.rows_affected() == 1 {
        // If this fails the recovery loop retries it.
        release(&st, &id).await;
    } else if order.status != "cancelled" {
        return Err(ApiError::conflict(
            "not_cancellable",
            format!("an order in status `{}` cannot be cancelled", order.status),
        ));
    }
    Ok(Json(order))
}
