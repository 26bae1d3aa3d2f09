//! Products: CRUD with price in minor units and stock, and reservations that take and give back stock
//! atomically. Owns its own database.
//!
//! Stock never goes negative whatever the concurrency: a reservation decrements with
//! `UPDATE ... SET stock = stock - q WHERE id = ? AND stock >= q` inside one transaction for all its items,
//! so it either takes everything it asked for or nothing (and a `CHECK (stock >= 0)` backs this up).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::auth::Caller;
use service_kit::db::{self, retry};
use service_kit::error::{ErrorBody, JsonBody, PathParam, Query};
use service_kit::openapi::BearerAuth;
use service_kit::{ApiError, ApiResult, FieldError, Page, PageParams};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, FromRow};
use utoipa::{OpenApi, ToSchema};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

const MAX_PRICE: i64 = 1_000_000_000_000;
const MAX_STOCK: i64 = 1_000_000_000;

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// Price in minor units (cents).
    pub price_cents: i64,
    pub stock: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// 1 to 200 characters once trimmed.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price_cents: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price_cents: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationItem {
    pub product_id: i64,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub qty: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReservation {
    /// Chosen by the caller (e.g. the order id); reserving twice with the same id and items is a no-op.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ReservationItem>,
}

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct ReservedItem {
    pub product_id: i64,
    pub qty: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub id: String,
    /// `active` or `released`.
    #[schema(value_type = ReservationStatus)]
    pub status: String,
    pub items: Vec<ReservedItem>,
    pub total_cents: i64,
}

/// The values of [`Reservation::status`], for the schema (the column is text, checked by the database).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    Active,
    Released,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "product-service", description = "Tollgate reference service: products and stock reservations"),
    paths(create_product, get_product, list_products, update_product, delete_product, reserve, get_reservation, release),
    components(schemas(Product, NewProduct, ProductPatch, ReservationItem, NewReservation, ReservedItem, Reservation, ReservationStatus, ErrorBody, Page<Product>)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Connect, migrate, build the router. Who may do what, checked here: anyone reads the catalogue;
/// an administrator (scope `admin`) or a service changes it; only services (the orders service, with
/// the service token) reserve and release stock.
pub async fn app(database_url: &str, auth: service_kit::auth::Auth) -> anyhow::Result<Router> {
    let (pool, _) = db::connect(database_url, &SQLITE, &POSTGRES).await?;
    Ok(service_kit::auth::with_auth(router(pool), auth))
}

pub fn router(pool: AnyPool) -> Router {
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route(
            "/products/{id}",
            get(get_product)
                .patch(update_product)
                .delete(delete_product),
        )
        .route("/reservations", axum::routing::post(reserve))
        .route("/reservations/{id}", get(get_reservation).delete(release))
        .route(
            "/openapi.json",
            get(|| async { Json(service_kit::openapi::document(ApiDoc::openapi())) }),
        )
        .with_state(pool.clone())
        .merge(service_kit::health::routes(pool))
}

macro_rules! columns {
    () => {
        "id, name, description, price_cents, stock, created_at, updated_at"
    };
}

fn product_not_found(id: i64) -> ApiError {
    ApiError::not_found("product_not_found", format!("product {id} does not exist"))
}

fn validate(
    name: Option<&str>,
    description: Option<&str>,
    price: Option<i64>,
    stock: Option<i64>,
) -> Result<(), ApiError> {
    let mut f = Vec::new();
    if let Some(n) = name {
        let len = n.trim().chars().count();
        if len == 0 || len > 200 {
            f.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    if description.is_some_and(|d| d.chars().count() > 2000) {
        f.push(FieldError::new(
            "description",
            "must be at most 2000 characters",
        ));
    }
    if price.is_some_and(|p| !(0..=MAX_PRICE).contains(&p)) {
        f.push(FieldError::new(
            "price_cents",
            format!("must be between 0 and {MAX_PRICE}"),
        ));
    }
    if stock.is_some_and(|s| !(0..=MAX_STOCK).contains(&s)) {
        f.push(FieldError::new(
            "stock",
            format!("must be between 0 and {MAX_STOCK}"),
        ));
    }
    if f.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(f))
    }
}

#[utoipa::path(post, path = "/products", request_body = NewProduct, security(("bearer" = [])),
    responses((status = 201, body = Product, headers(("location" = String, description = "the new product's URL")),
        links(("GetProduct" = (operation_id = "get_product", parameters(("id" = "$response.body#/id")))),
              ("UpdateProduct" = (operation_id = "update_product", parameters(("id" = "$response.body#/id")))),
              ("DeleteProduct" = (operation_id = "delete_product", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator", body = ErrorBody), (status = 415, description = "the body is not `application/json`", body = ErrorBody), (status = 422, description = "invalid fields", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn create_product(
    State(pool): State<AnyPool>,
    caller: Caller,
    JsonBody(p): JsonBody<NewProduct>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    validate(
        Some(&p.name),
        Some(&p.description),
        Some(p.price_cents),
        Some(p.stock),
    )?;
    let now = db::now();
    let name = p.name.trim().to_string();
    let product: Product = retry(|| {
        sqlx::query_as(concat!(
            "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            columns!()
        ))
        .bind(&name)
        .bind(&p.description)
        .bind(p.price_cents)
        .bind(p.stock)
        .bind(&now)
        .bind(&now)
        .fetch_one(&pool)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/products/{}", product.id))],
        Json(product),
    ))
}

#[utoipa::path(get, path = "/products/{id}", params(("id" = i64, Path, minimum = 1, description = "product id")),
    responses((status = 200, body = Product), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 404, description = "no such product", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn get_product(
    State(pool): State<AnyPool>,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<Product>> {
    let p: Option<Product> = retry(|| {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM products WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&pool)
    })
    .await?;
    p.map(Json).ok_or_else(|| product_not_found(id))
}

#[utoipa::path(get, path = "/products", params(PageParams),
    responses((status = 200, body = Page<Product>), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 422, description = "limit or offset out of range", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn list_products(
    State(pool): State<AnyPool>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Product>>> {
    let (limit, offset) = page.resolve()?;
    let items: Vec<Product> = retry(|| {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM products ORDER BY id LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&pool)
    })
    .await?;
    let (total,): (i64,) =
        retry(|| sqlx::query_as("SELECT COUNT(*) FROM products").fetch_one(&pool)).await?;
    Ok(Json(Page::new(items, limit, offset, total)))
}

#[utoipa::path(patch, path = "/products/{id}", request_body = ProductPatch, params(("id" = i64, Path, minimum = 1, description = "product id")), security(("bearer" = [])),
    responses((status = 200, body = Product), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator", body = ErrorBody), (status = 404, description = "no such product", body = ErrorBody), (status = 415, description = "the body is not `application/json`", body = ErrorBody), (status = 422, description = "invalid fields", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn update_product(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(p): JsonBody<ProductPatch>,
) -> ApiResult<Json<Product>> {
    caller.require_admin()?;
    validate(
        p.name.as_deref(),
        p.description.as_deref(),
        p.price_cents,
        p.stock,
    )?;
    let now = db::now();
    let name = p.name.map(|n| n.trim().to_string());
    let product: Option<Product> = retry(|| {
        sqlx::query_as(concat!(
            "UPDATE products SET name = COALESCE($1, name), description = COALESCE($2, description), ",
            "price_cents = COALESCE($3, price_cents), stock = COALESCE($4, stock), updated_at = $5 WHERE id = $6 RETURNING ",
            columns!()
        ))
        .bind(name.clone())
        .bind(p.description.clone())
        .bind(p.price_cents)
        .bind(p.stock)
        .bind(&now)
        .bind(id)
        .fetch_optional(&pool)
    })
    .await?;
    product.map(Json).ok_or_else(|| product_not_found(id))
}

#[utoipa::path(delete, path = "/products/{id}", params(("id" = i64, Path, minimum = 1, description = "product id")), security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator", body = ErrorBody), (status = 404, description = "no such product", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn delete_product(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let done = retry(|| {
        sqlx::query("DELETE FROM products WHERE id = $1")
            .bind(id)
            .execute(&pool)
    })
    .await?;
    if done.rows_affected() == 0 {
        return Err(product_not_found(id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Items merged by product and sorted, so equal requests hash equally and rows are always locked in
/// the same order (no deadlocks between concurrent reservations on PostgreSQL).
fn canonical(items: &[ReservationItem]) -> Vec<ReservationItem> {
    let mut merged: std::collections::BTreeMap<i64, i64> = Default::default();
    for it in items {
        *merged.entry(it.product_id).or_default() += it.qty;
    }
    merged
        .into_iter()
        .map(|(product_id, qty)| ReservationItem { product_id, qty })
        .collect()
}

fn request_hash(items: &[ReservationItem]) -> String {
    items
        .iter()
        .map(|i| format!("{}x{}", i.product_id, i.qty))
        .collect::<Vec<_>>()
        .join(",")
}

async fn load_reservation(
    pool: &AnyPool,
    id: &str,
) -> Result<Option<(Reservation, String)>, sqlx::Error> {
    let head: Option<(String, String, i64)> =
        sqlx::query_as("SELECT status, request_hash, total_cents FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let Some((status, hash, total_cents)) = head else {
        return Ok(None);
    };
    let items: Vec<ReservedItem> = sqlx::query_as("SELECT product_id, qty, unit_price_cents FROM reservation_items WHERE reservation_id = $1 ORDER BY product_id")
        .bind(id)
        .fetch_all(pool)
        .await?;
    Ok(Some((
        Reservation {
            id: id.to_string(),
            status,
            items,
            total_cents,
        },
        hash,
    )))
}

const RESERVATION_ID_RULE: &str = "must be 1 to 64 characters of letters, digits, '-' or '_'";

fn valid_reservation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Reserve stock for all items, or none.
#[utoipa::path(post, path = "/reservations", request_body = NewReservation, security(("bearer" = [])),
    responses((status = 201, body = Reservation,
        links(("GetReservation" = (operation_id = "get_reservation", parameters(("id" = "$response.body#/id")))),
              ("Release" = (operation_id = "release", parameters(("id" = "$response.body#/id")))))),
              (status = 200, description = "replay of an existing reservation", body = Reservation),
              (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not a service of this deployment", body = ErrorBody), (status = 404, description = "an item's product does not exist", body = ErrorBody),
              (status = 409, description = "insufficient stock, or the id was released before it was reserved", body = ErrorBody),
              (status = 415, description = "the body is not `application/json`", body = ErrorBody), (status = 422, description = "invalid fields, a total too large, or the id reused with other items", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn reserve(
    State(pool): State<AnyPool>,
    caller: Caller,
    JsonBody(req): JsonBody<NewReservation>,
) -> ApiResult<(StatusCode, Json<Reservation>)> {
    caller.require_service()?;
    let mut fields = Vec::new();
    if !valid_reservation_id(&req.id) {
        fields.push(FieldError::new("id", RESERVATION_ID_RULE));
    }
    if req.items.is_empty() || req.items.len() > 100 {
        fields.push(FieldError::new("items", "must have 1 to 100 items"));
    }
    for (i, it) in req.items.iter().enumerate() {
        if !(1..=MAX_STOCK).contains(&it.qty) {
            fields.push(FieldError::new(
                &format!("items[{i}].qty"),
                "must be at least 1",
            ));
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::invalid(fields));
    }
    let items = canonical(&req.items);
    let hash = request_hash(&items);
    let now = db::now();

    enum Outcome {
        Created(i64, Vec<ReservedItem>),
        Exists,
        Refused(ApiError),
    }
    let outcome = retry(|| async {
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query("INSERT INTO reservations (id, status, request_hash, total_cents, created_at) VALUES ($1, 'active', $2, 0, $3)")
            .bind(&req.id)
            .bind(&hash)
            .bind(&now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(Outcome::Exists),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let mut reserved = Vec::with_capacity(items.len());
        let mut total = 0i64;
        for it in &items {
            let price: Option<(i64,)> = sqlx::query_as("UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1 RETURNING price_cents")
                .bind(it.qty)
                .bind(it.product_id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((unit,)) = price else {
                let stock: Option<(i64,)> = sqlx::query_as("SELECT stock FROM products WHERE id = $1").bind(it.product_id).fetch_optional(&mut *tx).await?;
                let err = match stock {
                    None => product_not_found(it.product_id),
                    Some((available,)) => ApiError::conflict(
                        "insufficient_stock",
                        format!("product {} has {available} in stock, {} requested", it.product_id, it.qty),
                    ),
                };
                return Ok(Outcome::Refused(err)); // dropping tx rolls back
            };
            sqlx::query("INSERT INTO reservation_items (reservation_id, product_id, qty, unit_price_cents) VALUES ($1, $2, $3, $4)")
                .bind(&req.id)
                .bind(it.product_id)
                .bind(it.qty)
                .bind(unit)
                .execute(&mut *tx)
                .await?;
            // A price up to 10^12 times a quantity up to 10^9 does not fit an i64: refused, never
            // wrapped (release builds do not check overflow).
            let Some(next) = unit.checked_mul(it.qty).and_then(|line| total.checked_add(line)) else {
                return Ok(Outcome::Refused(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "total_too_large",
                    "the reservation's total does not fit in 64 bits of cents",
                )));
            };
            total = next;
            reserved.push(ReservedItem { product_id: it.product_id, qty: it.qty, unit_price_cents: unit });
        }
        sqlx::query("UPDATE reservations SET total_cents = $1 WHERE id = $2").bind(total).bind(&req.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Outcome::Created(total, reserved))
    })
    .await?;

    match outcome {
        Outcome::Created(total_cents, items) => Ok((
            StatusCode::CREATED,
            Json(Reservation {
                id: req.id,
                status: "active".into(),
                items,
                total_cents,
            }),
        )),
        Outcome::Refused(e) => Err(e),
        Outcome::Exists => {
            let (existing, existing_hash) = retry(|| load_reservation(&pool, &req.id))
                .await?
                .ok_or_else(ApiError::internal)?;
            if existing.status == "released" && existing_hash.is_empty() {
                return Err(ApiError::conflict(
                    "reservation_released",
                    "this reservation id was released before it was reserved",
                ));
            }
            if existing_hash != hash {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "reservation_id_reused",
                    "a reservation with this id exists with different items",
                ));
            }
            Ok((StatusCode::OK, Json(existing)))
        }
    }
}

#[utoipa::path(get, path = "/reservations/{id}", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "reservation id, chosen by the caller")), security(("bearer" = [])),
    responses((status = 200, body = Reservation), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not a service of this deployment", body = ErrorBody), (status = 404, description = "no such reservation", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn get_reservation(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Reservation>> {
    caller.require_service()?;
    match retry(|| load_reservation(&pool, &id)).await? {
        Some((r, _)) => Ok(Json(r)),
        None => Err(ApiError::not_found(
            "reservation_not_found",
            format!("reservation {id} does not exist"),
        )),
    }
}

/// Give the stock back. Idempotent: releasing twice gives it back once.
///
/// Releasing an id that was never reserved leaves a `released` tombstone under that id, so a
/// reservation arriving later with it (the orders service timed out, failed the order and released,
/// while its request was still on the way) is refused instead of holding stock nobody will give back.
/// Reserve and release meet on the reservation's primary key, so whichever commits first wins and
/// the other sees it: the stock is held exactly when an active reservation exists.
#[utoipa::path(delete, path = "/reservations/{id}", params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "reservation id, chosen by the caller")), security(("bearer" = [])),
    responses((status = 204, description = "released, or marked released before any reservation with this id"), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not a service of this deployment", body = ErrorBody), (status = 422, description = "not a valid reservation id", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn release(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<StatusCode> {
    caller.require_service()?;
    let now = db::now();
    if !valid_reservation_id(&id) {
        return Err(ApiError::invalid(vec![FieldError::new(
            "id",
            RESERVATION_ID_RULE,
        )]));
    }
    retry(|| async {
        let mut tx = pool.begin().await?;
        // The tombstone first: a reservation arriving later with this id finds it and takes nothing.
        // On PostgreSQL this waits for a concurrent reservation with the id to commit or roll back.
        let tombstone = sqlx::query("INSERT INTO reservations (id, status, request_hash, total_cents, created_at, released_at) VALUES ($1, 'released', '', 0, $2, $2) ON CONFLICT (id) DO NOTHING")
            .bind(&id)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        if tombstone.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(());
        }
        let done = sqlx::query("UPDATE reservations SET status = 'released', released_at = $1 WHERE id = $2 AND status = 'active'")
            .bind(&now)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(()); // released before
        }
        let items: Vec<(i64, i64)> = sqlx::query_as("SELECT product_id, qty FROM reservation_items WHERE reservation_id = $1 ORDER BY product_id")
            .bind(&id)
            .fetch_all(&mut *tx)
            .await?;
        for (product_id, qty) in items {
            sqlx::query("UPDATE products SET stock = stock + $1 WHERE id = $2").bind(qty).bind(product_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
