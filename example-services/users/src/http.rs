//! The users API over HTTP: routes, handlers and the OpenAPI document they are annotated with (the
//! tests in `tests/openapi.rs` check that it lists every status a handler can answer). A handler
//! checks who is calling, then hands over to `domain` (the rules) and `store` (the SQL), in that order.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use service_kit::auth::Caller;
use service_kit::db;
use service_kit::error::{ErrorBody, JsonBody, PathParam, Query};
use service_kit::openapi::BearerAuth;
use service_kit::{ApiResult, Page, PageParams};
use sqlx::AnyPool;
use utoipa::OpenApi;

use crate::domain;
use crate::model::{NewUser, User, UserPatch};
use crate::store;

#[derive(OpenApi)]
#[openapi(
    info(title = "user-service", description = "Tollgate reference service: users"),
    paths(create_user, get_user, list_users, update_user, delete_user),
    components(schemas(User, NewUser, UserPatch, ErrorBody, Page<User>)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The routes, `/openapi.json` and the health checks, over `pool` (callers not yet checked: see
/// [`crate::app`]).
pub fn router(pool: AnyPool) -> Router {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route(
            "/openapi.json",
            get(|| async { Json(service_kit::openapi::document(ApiDoc::openapi())) }),
        )
        .with_state(pool.clone())
        .merge(service_kit::health::routes(pool))
}

#[utoipa::path(post, path = "/users", request_body = NewUser, security(("bearer" = [])),
    responses((status = 201, body = User, headers(("location" = String, description = "the new user's URL")),
        links(("GetUser" = (operation_id = "get_user", parameters(("id" = "$response.body#/id")))),
              ("UpdateUser" = (operation_id = "update_user", parameters(("id" = "$response.body#/id")))),
              ("DeleteUser" = (operation_id = "delete_user", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 409, description = "the email is taken", body = ErrorBody), (status = 415, description = "the body is not `application/json`", body = ErrorBody), (status = 422, description = "invalid fields", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn create_user(
    State(pool): State<AnyPool>,
    caller: Caller,
    JsonBody(new): JsonBody<NewUser>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    domain::check_new(&new)?;
    let (name, email, now) = (
        domain::stored_name(&new.name),
        domain::stored_email(&new.email),
        db::now(),
    );
    let user = store::insert(&pool, &name, &email, &now).await?;
    let location = format!("/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(user),
    ))
}

#[utoipa::path(get, path = "/users/{id}", params(("id" = i64, Path, minimum = 1, description = "user id")), security(("bearer" = [])),
    responses((status = 200, body = User), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 404, description = "no such user", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn get_user(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<User>> {
    caller.require_self_or_admin(id)?;
    store::get(&pool, id).await.map(Json)
}

#[utoipa::path(get, path = "/users", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = Page<User>), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 422, description = "limit or offset out of range", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn list_users(
    State(pool): State<AnyPool>,
    caller: Caller,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Page<User>>> {
    caller.require_admin()?;
    store::list(&pool, p).await.map(Json)
}

#[utoipa::path(patch, path = "/users/{id}", request_body = UserPatch, params(("id" = i64, Path, minimum = 1, description = "user id")), security(("bearer" = [])),
    responses((status = 200, body = User), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 404, description = "no such user", body = ErrorBody), (status = 409, description = "the email is taken", body = ErrorBody), (status = 415, description = "the body is not `application/json`", body = ErrorBody), (status = 422, description = "invalid fields", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn update_user(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
    JsonBody(patch): JsonBody<UserPatch>,
) -> ApiResult<Json<User>> {
    caller.require_self_or_admin(id)?;
    domain::check_patch(&patch)?;
    let name = patch.name.as_deref().map(domain::stored_name);
    let email = patch.email.as_deref().map(domain::stored_email);
    store::update(&pool, id, name, email, &db::now())
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/users/{id}", params(("id" = i64, Path, minimum = 1, description = "user id")), security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 404, description = "no such user", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn delete_user(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> ApiResult<StatusCode> {
    caller.require_self_or_admin(id)?;
    store::delete(&pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
