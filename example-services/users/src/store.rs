//! The users table: its migrations (one set per dialect, embedded) and every query, written once in
//! the `$1` form SQLite and PostgreSQL both accept. Reads and deletes by id go through
//! `service_kit::crud`, which every service pages and answers a missing row with the same way; inserts
//! and updates, which are this table's own, are here. A taken email is a `409` here, where the unique
//! index that finds it is.

use service_kit::crud::{self, Table};
use service_kit::db::{self, retry};
use service_kit::{ApiError, ApiResult, Page, PageParams};
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

use crate::model::User;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

macro_rules! columns {
    () => {
        "id, name, email, created_at, updated_at"
    };
}

/// The table, for `service_kit::crud`.
const USERS: Table = Table {
    name: "users",
    columns: columns!(),
    noun: "user",
    not_found_code: "user_not_found",
};

/// Connect to `database_url` and bring its schema up to date.
pub async fn connect(database_url: &str) -> anyhow::Result<AnyPool> {
    let (pool, _) = db::connect(database_url, &SQLITE, &POSTGRES).await?;
    Ok(pool)
}

/// The `404` for user `id`.
pub fn not_found(id: i64) -> ApiError {
    USERS.not_found(id)
}

fn email_taken(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::conflict("email_taken", "a user with this email already exists")
        }
        _ => e.into(),
    }
}

/// Insert a user with fields already checked and in their stored form.
pub async fn insert(pool: &AnyPool, name: &str, email: &str, now: &str) -> ApiResult<User> {
    retry(|| {
        sqlx::query_as(concat!("INSERT INTO users (name, email, created_at, updated_at) VALUES ($1, $2, $3, $4) RETURNING ", columns!()))
            .bind(name)
            .bind(email)
            .bind(now)
            .bind(now)
            .fetch_one(pool)
    })
    .await
    .map_err(email_taken)
}

/// User `id`, or its `404`.
pub async fn get(pool: &AnyPool, id: i64) -> ApiResult<User> {
    crud::get(pool, &USERS, id).await
}

/// A page of users in `id` order (`422` for a `limit` or `offset` out of range).
pub async fn list(pool: &AnyPool, page: PageParams) -> ApiResult<Page<User>> {
    crud::list(pool, &USERS, page).await
}

/// Set the fields that are `Some` (checked, in their stored form); `404` if there is no user `id`.
pub async fn update(
    pool: &AnyPool,
    id: i64,
    name: Option<String>,
    email: Option<String>,
    now: &str,
) -> ApiResult<User> {
    let user: Option<User> = retry(|| {
        sqlx::query_as(concat!(
            "UPDATE users SET name = COALESCE($1, name), email = COALESCE($2, email), updated_at = $3 WHERE id = $4 RETURNING ",
            columns!()
        ))
        .bind(name.clone())
        .bind(email.clone())
        .bind(now)
        .bind(id)
        .fetch_optional(pool)
    })
    .await
    .map_err(email_taken)?;
    user.ok_or_else(|| not_found(id))
}

/// Delete user `id`; its `404` if there is none.
pub async fn delete(pool: &AnyPool, id: i64) -> ApiResult<()> {
    crud::delete(pool, &USERS, id).await
}
