//! The products API over HTTP: routes, handlers and the OpenAPI document they are annotated with (the
//! tests in `tests/openapi.rs` check that it lists every status a handler can answer). A handler
//! checks who is calling, then hands over to `domain` (the rules) and `store` (the SQL), in that order.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use service_kit::auth::Caller;
use service_kit::db::{self, retry};
use service_kit::error::{ErrorBody, JsonBody, PathParam, Query};
use service_kit::openapi::BearerAuth;
use service_kit::{ApiError, ApiResult, FieldError, Page, PageParams};
use sqlx::AnyPool;
use utoipa::OpenApi;

use crate::domain;
use crate::model::{
    NewProduct, NewReservation, Product, ProductPatch, Reservation, ReservationItem,
    ReservationStatus, ReservedItem,
};
use crate::store::{self, Reserved};

#[derive(OpenApi)]
#[openapi(
    info(title = "product-service", description = "Tollgate reference service: products and stock reservations"),
    paths(create_product, get_product, list_products, update_product, delete_product, reserve, get_reservation, release),
    components(schemas(Product, NewProduct, ProductPatch, ReservationItem, NewReservation, ReservedItem, Reservation, ReservationStatus, ErrorBody, Page<Product>)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The routes, `/openapi.json` and the health checks, over `pool` (callers not yet checked: see
/// [`crate::app`]).
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
    domain::check_product(
        Some(&p.name),
        Some(&p.description),
        Some(p.price_cents),
        Some(p.stock),
    )?;
    let now = db::now();
    let name = p.name.trim().to_string();
    let product = store::insert(&pool, &name, &p.description, p.price_cents, p.stock, &now).await?;
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
    store::get(&pool, id).await.map(Json)
}

#[utoipa::path(get, path = "/products", params(PageParams),
    responses((status = 200, body = Page<Product>), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 422, description = "limit or offset out of range", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn list_products(
    State(pool): State<AnyPool>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<Product>>> {
    store::list(&pool, page).await.map(Json)
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
    domain::check_product(
        p.name.as_deref(),
        p.description.as_deref(),
        p.price_cents,
        p.stock,
    )?;
    let now = db::now();
    let changes = store::Changes {
        name: p.name.map(|n| n.trim().to_string()),
        description: p.description,
        price_cents: p.price_cents,
        stock: p.stock,
    };
    store::update(&pool, id, changes, &now).await.map(Json)
}

#[utoipa::path(delete, path = "/products/{id}", params(("id" = i64, Path, minimum = 1, description = "product id")), security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator", body = ErrorBody), (status = 404, description = "no such product", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn delete_product(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    store::delete(&pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
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
    domain::check_reservation(&req.id, &req.items)?;
    let items = domain::canonical(&req.items);
    let hash = domain::request_hash(&items);
    let now = db::now();
    match store::reserve(&pool, &req.id, &items, &hash, &now).await? {
        Reserved::Created(total_cents, items) => Ok((
            StatusCode::CREATED,
            Json(Reservation {
                id: req.id,
                status: "active".into(),
                items,
                total_cents,
            }),
        )),
        Reserved::Refused(e) => Err(e),
        Reserved::Exists => {
            let (existing, existing_hash) = retry(|| store::load_reservation(&pool, &req.id))
                .await?
                .ok_or_else(ApiError::internal)?;
            domain::check_replay(&existing, &existing_hash, &hash)?;
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
    match retry(|| store::load_reservation(&pool, &id)).await? {
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
    if !domain::valid_reservation_id(&id) {
        return Err(ApiError::invalid(vec![FieldError::new(
            "id",
            domain::RESERVATION_ID_RULE,
        )]));
    }
    store::release(&pool, &id, &now).await?;
    Ok(StatusCode::NO_CONTENT)
}
