//! The orders tables: their migrations (one set per dialect, embedded) and every query, written once
//! in the `$1` form SQLite and PostgreSQL both accept.
//!
//! Several instances may share the database, so every change an instance makes to an order it is
//! working on is conditional on holding its lease (`lease_owner = <instance>`), and repeats of a
//! request are found here (the unique `idempotency_key`), never in a process's memory.

use axum::http::StatusCode;
use service_kit::db::{self, retry};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, FromRow};

use crate::model::{Order, OrderItem, OrderStatus};
use crate::Settings;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// Connect to `database_url` and bring its schema up to date.
pub async fn connect(database_url: &str) -> anyhow::Result<AnyPool> {
    let (pool, _) = db::connect(database_url, &SQLITE, &POSTGRES).await?;
    Ok(pool)
}

/// When a lease taken now runs out.
pub fn lease(settings: &Settings) -> String {
    db::rfc3339(std::time::SystemTime::now() + settings.pending_timeout)
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

/// Order `id` with its items (not retried: callers wrap it in `retry`).
pub async fn load_order(pool: &AnyPool, id: &str) -> Result<Option<Order>, sqlx::Error> {
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
pub enum Earlier {
    None,
    Replay(StatusCode, String),
    Mismatch,
    InProgress,
}

/// What is stored under idempotency `key`, compared with this request's `hash` (not retried).
pub async fn earlier(pool: &AnyPool, key: &str, hash: &str) -> Result<Earlier, sqlx::Error> {
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

/// A new order, stored `pending` and held by `instance` until `lease_until`, before any other service
/// is called. A unique violation (when `key` is given) is another request with the same key.
#[allow(clippy::too_many_arguments)]
pub async fn insert_pending(
    pool: &AnyPool,
    id: &str,
    user_id: i64,
    key: Option<String>,
    hash: &str,
    instance: &str,
    lease_until: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    retry(|| {
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, idempotency_key, request_hash, lease_owner, lease_until, created_at, updated_at) \
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(user_id)
        .bind(key.clone())
        .bind(hash)
        .bind(instance)
        .bind(lease_until)
        .bind(now)
        .bind(now)
        .execute(pool)
    })
    .await?;
    Ok(())
}

/// Extend `instance`'s lease on pending order `id`; `false` when it holds it no more.
pub async fn renew_lease(
    pool: &AnyPool,
    id: &str,
    instance: &str,
    settings: &Settings,
) -> Result<bool, sqlx::Error> {
    let r = retry(|| {
        sqlx::query("UPDATE orders SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'pending'")
            .bind(lease(settings))
            .bind(id)
            .bind(instance)
            .execute(pool)
    })
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Confirm `order` with its stored response `body`, if it is still pending and `instance` holds it
/// (`false` otherwise: another instance took it over meanwhile). Confirmation, items and the stored
/// response commit together: a crash leaves either a pending order (which recovery fails and
/// releases) or a complete one a repeat can replay.
pub async fn confirm(
    pool: &AnyPool,
    instance: &str,
    order: &Order,
    body: &str,
    now: &str,
) -> Result<bool, sqlx::Error> {
    let id = order.id.as_str();
    retry(|| async {
        let mut tx = pool.begin().await?;
        // Only while this instance holds the lease: once another took the order over (to fail
        // it), confirming would race its release of the stock.
        let done = sqlx::query(
            "UPDATE orders SET status = 'confirmed', total_cents = $1, response_status = 201, \
             response_body = $2, updated_at = $3 WHERE id = $4 AND status = 'pending' AND lease_owner = $5",
        )
        .bind(order.total_cents)
        .bind(body)
        .bind(now)
        .bind(id)
        .bind(instance)
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
    .await
}

/// Mark pending order `id` (held by `instance`) rejected with the stored response, for replays.
/// Nothing was reserved (reservations are all-or-nothing), so there is no stock to give back.
pub async fn reject(
    pool: &AnyPool,
    id: &str,
    instance: &str,
    status: StatusCode,
    body: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    retry(|| {
        sqlx::query(
            "UPDATE orders SET status = 'rejected', stock_released = 1, response_status = $1, response_body = $2, updated_at = $3 \
             WHERE id = $4 AND status = 'pending' AND lease_owner = $5",
        )
        .bind(i64::from(status.as_u16()))
        .bind(body)
        .bind(now)
        .bind(id)
        .bind(instance)
        .execute(pool)
    })
    .await?;
    Ok(())
}

/// Mark pending order `id` (held by `instance`) failed, freeing its idempotency key for a retry, and
/// renew the lease for the release that follows.
pub async fn mark_failed(
    pool: &AnyPool,
    id: &str,
    instance: &str,
    settings: &Settings,
) -> Result<(), sqlx::Error> {
    let now = db::now();
    retry(|| {
        sqlx::query("UPDATE orders SET status = 'failed', idempotency_key = NULL, updated_at = $1, lease_until = $2 WHERE id = $3 AND status = 'pending' AND lease_owner = $4")
            .bind(&now)
            .bind(lease(settings))
            .bind(id)
            .bind(instance)
            .execute(pool)
    })
    .await?;
    Ok(())
}

/// Remember that the stock of order `id` is back.
pub async fn mark_released(pool: &AnyPool, id: &str) -> Result<(), sqlx::Error> {
    retry(|| {
        sqlx::query("UPDATE orders SET stock_released = 1 WHERE id = $1")
            .bind(id)
            .execute(pool)
    })
    .await?;
    Ok(())
}

/// Take over one order nobody works on any more (its lease ran out at `now`: pending, or failed or
/// cancelled with its stock not yet back), for `instance`: its id and status. One conditional
/// `UPDATE ... RETURNING`, which exactly one instance wins (PostgreSQL rechecks the `WHERE` on the row
/// it waited for, under READ COMMITTED; SQLite has one writer).
pub async fn claim_abandoned(
    pool: &AnyPool,
    instance: &str,
    settings: &Settings,
    now: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    retry(|| {
        sqlx::query_as(
            "UPDATE orders SET lease_owner = $1, lease_until = $2 \
             WHERE lease_until < $3 AND (status = 'pending' OR (status IN ('failed', 'cancelled') AND stock_released = 0)) \
             AND id IN (SELECT id FROM orders WHERE lease_until < $3 \
                        AND (status = 'pending' OR (status IN ('failed', 'cancelled') AND stock_released = 0)) \
                        ORDER BY lease_until LIMIT 1) \
             RETURNING id, status",
        )
        .bind(instance)
        .bind(lease(settings))
        .bind(now)
        .fetch_optional(pool)
    })
    .await
}

/// Fail pending order `id` that `instance` took over (its idempotency key freed).
pub async fn fail_abandoned(
    pool: &AnyPool,
    id: &str,
    instance: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    retry(|| {
        sqlx::query("UPDATE orders SET status = 'failed', idempotency_key = NULL, updated_at = $1 WHERE id = $2 AND status = 'pending' AND lease_owner = $3")
            .bind(now)
            .bind(id)
            .bind(instance)
            .execute(pool)
    })
    .await?;
    Ok(())
}

/// One page of the orders of `user_id` (everyone's if `None`) in `status` (any if `None`), oldest
/// first, and how many there are in all.
pub async fn list(
    pool: &AnyPool,
    user_id: Option<i64>,
    status: Option<OrderStatus>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Order>, i64), sqlx::Error> {
    let ids: Vec<(String,)> = retry(|| {
        sqlx::query_as(
            "SELECT id FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2) \
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(user_id)
        .bind(status.map(OrderStatus::as_str))
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
    })
    .await?;
    let (total,): (i64,) = retry(|| {
        sqlx::query_as("SELECT COUNT(*) FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2)")
            .bind(user_id)
            .bind(status.map(OrderStatus::as_str))
            .fetch_one(pool)
    })
    .await?;
    let mut items = Vec::with_capacity(ids.len());
    for (id,) in ids {
        if let Some(o) = retry(|| load_order(pool, &id)).await? {
            items.push(o);
        }
    }
    Ok((items, total))
}

/// Cancel confirmed order `id`, `instance` holding it for the release that follows (another retries
/// the release once the lease runs out); `false` if it was not confirmed.
pub async fn cancel(
    pool: &AnyPool,
    id: &str,
    instance: &str,
    settings: &Settings,
    now: &str,
) -> Result<bool, sqlx::Error> {
    let done = retry(|| {
        sqlx::query("UPDATE orders SET status = 'cancelled', stock_released = 0, updated_at = $1, lease_owner = $2, lease_until = $3 WHERE id = $4 AND status = 'confirmed'")
            .bind(now)
            .bind(instance)
            .bind(lease(settings))
            .bind(id)
            .execute(pool)
    })
    .await?;
    Ok(done.rows_affected() == 1)
}
