//! The orders API over HTTP: routes, handlers and the OpenAPI document they are annotated with (the
//! tests in `tests/openapi.rs` check that it lists every status a handler can answer). A handler
//! checks who is calling, then hands over to `domain` (the rules), `store` (the SQL) and, to place an
//! order, `placing` (the steps that call the other services).
//!
//! `Idempotency-Key`: a repeat with the same key and body gets the stored response; the same key with a
//! different body gets 422; a repeat while the first is still running gets 409.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use service_kit::auth::Caller;
use service_kit::db::{self, retry};
use service_kit::error::{ErrorBody, JsonBody, PathParam, Query};
use service_kit::openapi::BearerAuth;
use service_kit::{ApiError, ApiResult, Page, PageParams};
use utoipa::OpenApi;

use crate::domain::{self, order_not_found};
use crate::model::{ListParams, NewOrder, NewOrderItem, Order, OrderItem, OrderStatus};
use crate::placing::{self, stored};
use crate::remote;
use crate::store::{self, Earlier};
use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "order-service", description = "Tollgate reference service: orders"),
    paths(create_order, get_order, list_orders, cancel_order),
    components(schemas(NewOrder, NewOrderItem, Order, OrderItem, OrderStatus, ErrorBody, Page<Order>)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The routes, `/openapi.json` and the health checks, over `state` (callers not yet checked: see
/// [`crate::app`]).
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
    domain::check_may_place(&caller, req.user_id)?;
    let order = domain::canonical(&req)?;
    let key = domain::idempotency_key(&headers)?.map(|k| domain::scoped_key(req.user_id, &k));
    let h = domain::hash(&order);
    let pool = &st.pool;

    let check = |k: &str| {
        let k = k.to_string();
        let h = h.clone();
        async move {
            match retry(|| store::earlier(pool, &k, &h)).await? {
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
    let lease_until = store::lease(&st.settings);
    let inserted = store::insert_pending(
        pool,
        &id,
        order.user_id,
        key.clone(),
        &h,
        &st.instance,
        &lease_until,
        &now,
    )
    .await;
    match inserted {
        Ok(()) => {}
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

    let outcome = placing::holding_lease(&st, &id, remote::place(&st, &id, &order)).await;
    placing::finish(&st, &id, &order, &now, outcome).await
}

#[utoipa::path(get, path = "/orders/{id}", params(("id" = String, Path, description = "order id")), security(("bearer" = [])),
    responses((status = 200, body = Order), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 404, description = "no such order (or another user's)", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn get_order(
    State(st): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Order>> {
    retry(|| store::load_order(&st.pool, &id))
        .await?
        .filter(|o| caller.may_act_for(o.user_id))
        .map(Json)
        .ok_or_else(|| order_not_found(&id))
}

#[utoipa::path(get, path = "/orders", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = Page<Order>), (status = 400, description = "malformed JSON or Idempotency-Key, or a query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "another user's orders", body = ErrorBody), (status = 422, description = "limit or offset out of range", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn list_orders(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListParams>,
) -> ApiResult<Json<Page<Order>>> {
    let user_id = domain::list_scope(&caller, q.user_id)?;
    let (limit, offset) = PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve()?;
    let (items, total) = store::list(&st.pool, user_id, q.status, limit, offset).await?;
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
    let owner = retry(|| store::load_order(&st.pool, &id))
        .await?
        .map(|o| o.user_id);
    if !owner.is_some_and(|o| caller.may_act_for(o)) {
        return Err(order_not_found(&id));
    }
    let now = db::now();
    let cancelled = store::cancel(&st.pool, &id, &st.instance, &st.settings, &now).await?;
    let order = retry(|| store::load_order(&st.pool, &id))
        .await?
        .ok_or_else(|| order_not_found(&id))?;
    if cancelled {
        // If this fails the recovery loop retries it.
        remote::release(&st, &id).await;
    } else if order.status != "cancelled" {
        return Err(domain::not_cancellable(&order.status));
    }
    Ok(Json(order))
}
