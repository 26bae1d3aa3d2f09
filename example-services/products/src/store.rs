//! The products and reservations tables: their migrations (one set per dialect, embedded) and every
//! query, written once in the `$1` form SQLite and PostgreSQL both accept. Reads and deletes of a
//! product by id go through `service_kit::crud`, shared with the other services; the reservation
//! transactions are this service's own.
//!
//! Stock never goes negative whatever the concurrency: a reservation decrements with
//! `UPDATE ... SET stock = stock - q WHERE id = ? AND stock >= q` inside one transaction for all its
//! items, so it either takes everything it asked for or nothing (and a `CHECK (stock >= 0)` backs this
//! up). Reserve and release meet on the reservation's primary key, so whichever commits first wins and
//! the other sees it: the stock is held exactly when an active reservation exists.

use service_kit::crud::{self, Table};
use service_kit::db::{self, retry};
use service_kit::{ApiError, ApiResult, Page, PageParams};
use sqlx::migrate::Migrator;
use sqlx::AnyPool;

use crate::domain;
use crate::model::{Product, Reservation, ReservationItem, ReservedItem};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

macro_rules! columns {
    () => {
        "id, name, description, price_cents, stock, created_at, updated_at"
    };
}

/// The table, for `service_kit::crud`.
const PRODUCTS: Table = Table {
    name: "products",
    columns: columns!(),
    noun: "product",
    not_found_code: "product_not_found",
};

/// Connect to `database_url` and bring its schema up to date.
pub async fn connect(database_url: &str) -> anyhow::Result<AnyPool> {
    let (pool, _) = db::connect(database_url, &SQLITE, &POSTGRES).await?;
    Ok(pool)
}

/// The `404` for product `id`.
pub fn product_not_found(id: i64) -> ApiError {
    PRODUCTS.not_found(id)
}

/// Insert a product with fields already checked (`name` trimmed).
pub async fn insert(
    pool: &AnyPool,
    name: &str,
    description: &str,
    price_cents: i64,
    stock: i64,
    now: &str,
) -> ApiResult<Product> {
    Ok(retry(|| {
        sqlx::query_as(concat!(
            "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            columns!()
        ))
        .bind(name)
        .bind(description)
        .bind(price_cents)
        .bind(stock)
        .bind(now)
        .bind(now)
        .fetch_one(pool)
    })
    .await?)
}

/// Product `id`, or its `404`.
pub async fn get(pool: &AnyPool, id: i64) -> ApiResult<Product> {
    crud::get(pool, &PRODUCTS, id).await
}

/// A page of products in `id` order (`422` for a `limit` or `offset` out of range).
pub async fn list(pool: &AnyPool, page: PageParams) -> ApiResult<Page<Product>> {
    crud::list(pool, &PRODUCTS, page).await
}

/// The fields of a product to change: those that are `Some`, already checked (`name` trimmed).
pub struct Changes {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
}

/// Apply `c` to product `id`; `404` if there is none.
pub async fn update(pool: &AnyPool, id: i64, c: Changes, now: &str) -> ApiResult<Product> {
    let product: Option<Product> = retry(|| {
        sqlx::query_as(concat!(
            "UPDATE products SET name = COALESCE($1, name), description = COALESCE($2, description), ",
            "price_cents = COALESCE($3, price_cents), stock = COALESCE($4, stock), updated_at = $5 WHERE id = $6 RETURNING ",
            columns!()
        ))
        .bind(c.name.clone())
        .bind(c.description.clone())
        .bind(c.price_cents)
        .bind(c.stock)
        .bind(now)
        .bind(id)
        .fetch_optional(pool)
    })
    .await?;
    product.ok_or_else(|| product_not_found(id))
}

/// Delete product `id`; its `404` if there is none.
pub async fn delete(pool: &AnyPool, id: i64) -> ApiResult<()> {
    crud::delete(pool, &PRODUCTS, id).await
}

/// A reservation and the request hash it was made with (empty for a release's tombstone).
pub async fn load_reservation(
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

/// What [`reserve`] came to.
pub enum Reserved {
    /// Taken: the total and the items with their prices.
    Created(i64, Vec<ReservedItem>),
    /// A reservation (or a release's tombstone) with this id exists: nothing taken.
    Exists,
    /// Refused (unknown product, not enough stock, a total too large): nothing taken.
    Refused(ApiError),
}

/// Take the stock of all `items` ([`domain::canonical`], so rows are locked in one order) under
/// reservation `id`, or none of it, in one transaction.
pub async fn reserve(
    pool: &AnyPool,
    id: &str,
    items: &[ReservationItem],
    hash: &str,
    now: &str,
) -> Result<Reserved, sqlx::Error> {
    retry(|| async {
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query("INSERT INTO reservations (id, status, request_hash, total_cents, created_at) VALUES ($1, 'active', $2, 0, $3)")
            .bind(id)
            .bind(hash)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(Reserved::Exists),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let mut reserved = Vec::with_capacity(items.len());
        let mut total = 0i64;
        for it in items {
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
                return Ok(Reserved::Refused(err)); // dropping tx rolls back
            };
            sqlx::query("INSERT INTO reservation_items (reservation_id, product_id, qty, unit_price_cents) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(it.product_id)
                .bind(it.qty)
                .bind(unit)
                .execute(&mut *tx)
                .await?;
            let Some(next) = domain::add_line(total, unit, it.qty) else {
                return Ok(Reserved::Refused(domain::total_too_large()));
            };
            total = next;
            reserved.push(ReservedItem { product_id: it.product_id, qty: it.qty, unit_price_cents: unit });
        }
        sqlx::query("UPDATE reservations SET total_cents = $1 WHERE id = $2").bind(total).bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Reserved::Created(total, reserved))
    })
    .await
}

/// Give back the stock of reservation `id`, once; if there is none yet, leave a `released` tombstone
/// under the id that a reservation arriving later finds (and so takes nothing).
pub async fn release(pool: &AnyPool, id: &str, now: &str) -> Result<(), sqlx::Error> {
    retry(|| async {
        let mut tx = pool.begin().await?;
        // The tombstone first: a reservation arriving later with this id finds it and takes nothing.
        // On PostgreSQL this waits for a concurrent reservation with the id to commit or roll back.
        let tombstone = sqlx::query("INSERT INTO reservations (id, status, request_hash, total_cents, created_at, released_at) VALUES ($1, 'released', '', 0, $2, $2) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if tombstone.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(());
        }
        let done = sqlx::query("UPDATE reservations SET status = 'released', released_at = $1 WHERE id = $2 AND status = 'active'")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(()); // released before
        }
        let items: Vec<(i64, i64)> = sqlx::query_as("SELECT product_id, qty FROM reservation_items WHERE reservation_id = $1 ORDER BY product_id")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        for (product_id, qty) in items {
            sqlx::query("UPDATE products SET stock = stock + $1 WHERE id = $2").bind(qty).bind(product_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}
