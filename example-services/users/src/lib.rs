//! Users: create (unique email), get, list (paginated), update, delete. Owns its own database.
//!
//! Who may do what (checked here, whatever the gateway did): an administrator (a token with scope
//! `admin`) or another service creates and lists users and manages any of them; a user reads, changes
//! and deletes only their own record (the token's `sub`). Everyone else gets `401`/`403`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::auth::{Auth, Caller};
use service_kit::db::{self, retry};
use service_kit::error::{ErrorBody, JsonBody, PathParam, Query};
use service_kit::openapi::BearerAuth;
use service_kit::{ApiError, ApiResult, FieldError, Page, PageParams};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, FromRow};
use utoipa::{OpenApi, ToSchema};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 100 characters once trimmed.
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// Stored lowercased; unique.
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: Option<String>,
    #[schema(format = Email, min_length = 3, max_length = 254)]
    pub email: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "user-service", description = "Tollgate reference service: users"),
    paths(create_user, get_user, list_users, update_user, delete_user),
    components(schemas(User, NewUser, UserPatch, ErrorBody, Page<User>)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Connect to the database, migrate, and build the router, its callers checked by `auth`.
pub async fn app(database_url: &str, auth: Auth) -> anyhow::Result<Router> {
    let (pool, _) = db::connect(database_url, &SQLITE, &POSTGRES).await?;
    Ok(service_kit::auth::with_auth(router(pool), auth))
}

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

fn validate_name(name: &str, fields: &mut Vec<FieldError>) {
    let n = name.trim().chars().count();
    if n == 0 || n > 100 {
        fields.push(FieldError::new("name", "must be 1 to 100 characters"));
    }
}

/// A deliberately simple check: one `@`, a non-empty local part, a dotted domain, no spaces.
fn validate_email(email: &str, fields: &mut Vec<FieldError>) {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if !ok {
        fields.push(FieldError::new("email", "must be a valid email address"));
    }
}

fn email_taken(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::conflict("email_taken", "a user with this email already exists")
        }
        _ => e.into(),
    }
}

fn user_not_found(id: i64) -> ApiError {
    ApiError::not_found("user_not_found", format!("user {id} does not exist"))
}

macro_rules! columns {
    () => {
        "id, name, email, created_at, updated_at"
    };
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
    let mut fields = Vec::new();
    validate_name(&new.name, &mut fields);
    validate_email(&new.email, &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::invalid(fields));
    }
    let (name, email, now) = (
        new.name.trim().to_string(),
        new.email.trim().to_ascii_lowercase(),
        db::now(),
    );
    let user: User = retry(|| {
        sqlx::query_as(concat!("INSERT INTO users (name, email, created_at, updated_at) VALUES ($1, $2, $3, $4) RETURNING ", columns!()))
            .bind(&name)
            .bind(&email)
            .bind(&now)
            .bind(&now)
            .fetch_one(&pool)
    })
    .await
    .map_err(email_taken)?;
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
    let user: Option<User> = retry(|| {
        sqlx::query_as(concat!("SELECT ", columns!(), " FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&pool)
    })
    .await?;
    user.map(Json).ok_or_else(|| user_not_found(id))
}

#[utoipa::path(get, path = "/users", params(PageParams), security(("bearer" = [])),
    responses((status = 200, body = Page<User>), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 422, description = "limit or offset out of range", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn list_users(
    State(pool): State<AnyPool>,
    caller: Caller,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Page<User>>> {
    caller.require_admin()?;
    let (limit, offset) = p.resolve()?;
    let items: Vec<User> = retry(|| {
        sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM users ORDER BY id LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&pool)
    })
    .await?;
    let (total,): (i64,) =
        retry(|| sqlx::query_as("SELECT COUNT(*) FROM users").fetch_one(&pool)).await?;
    Ok(Json(Page::new(items, limit, offset, total)))
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
    let mut fields = Vec::new();
    if let Some(n) = &patch.name {
        validate_name(n, &mut fields);
    }
    if let Some(e) = &patch.email {
        validate_email(e, &mut fields);
    }
    if !fields.is_empty() {
        return Err(ApiError::invalid(fields));
    }
    let name = patch.name.map(|n| n.trim().to_string());
    let email = patch.email.map(|e| e.trim().to_ascii_lowercase());
    let now = db::now();
    let user: Option<User> = retry(|| {
        sqlx::query_as(concat!(
            "UPDATE users SET name = COALESCE($1, name), email = COALESCE($2, email), updated_at = $3 WHERE id = $4 RETURNING ",
            columns!()
        ))
        .bind(name.clone())
        .bind(email.clone())
        .bind(&now)
        .bind(id)
        .fetch_optional(&pool)
    })
    .await
    .map_err(email_taken)?;
    user.map(Json).ok_or_else(|| user_not_found(id))
}

#[utoipa::path(delete, path = "/users/{id}", params(("id" = i64, Path, minimum = 1, description = "user id")), security(("bearer" = [])),
    responses((status = 204, description = "deleted"), (status = 400, description = "malformed JSON, or a path or query value of the wrong type", body = ErrorBody), (status = 401, description = "no token, or one that does not verify", body = ErrorBody), (status = 403, description = "not an administrator, or another user's record", body = ErrorBody), (status = 404, description = "no such user", body = ErrorBody), (status = 503, description = "the database is busy", body = ErrorBody)))]
async fn delete_user(
    State(pool): State<AnyPool>,
    caller: Caller,
    PathParam(id): PathParam<i64>,
) -> ApiResult<StatusCode> {
    caller.require_self_or_admin(id)?;
    let done = retry(|| {
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&pool)
    })
    .await?;
    if done.rows_affected() == 0 {
        return Err(user_not_found(id));
    }
    Ok(StatusCode::NO_CONTENT)
}
