//! The reads and deletes every resource keyed by an integer `id` does the same way: a page of rows
//! in `id` order with the total, one row or `404`, delete or `404`. Written once here so that users and
//! products (and a service copied from them) page, count and answer a missing row identically; what
//! differs between resources (inserts, updates, their validation) stays in each service's `store.rs`.
//!
//! The SQL is assembled from a [`Table`]'s names, which are constants of the service, never input.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, FromRow};

use crate::db::retry;
use crate::{ApiError, ApiResult, Page, PageParams};

/// A table of rows keyed by an integer `id`, and how its missing rows are answered.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The table's name, e.g. `users`.
    pub name: &'static str,
    /// The columns the row type is read from, comma-separated, e.g. `id, name, email`.
    pub columns: &'static str,
    /// What one row is called in messages, e.g. `user` ("user 7 does not exist").
    pub noun: &'static str,
    /// The error code of a missing row, e.g. `user_not_found`.
    pub not_found_code: &'static str,
}

impl Table {
    /// The `404` for row `id`: `{noun} {id} does not exist`, with the table's code.
    pub fn not_found(&self, id: i64) -> ApiError {
        ApiError::not_found(
            self.not_found_code,
            format!("{} {id} does not exist", self.noun),
        )
    }
}

/// One page of `table` in `id` order (`limit`/`offset` validated first: `422` when out of range),
/// with the table's total row count.
pub async fn list<T>(pool: &AnyPool, table: &Table, params: PageParams) -> ApiResult<Page<T>>
where
    T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
{
    let (limit, offset) = params.resolve()?;
    let select = format!(
        "SELECT {} FROM {} ORDER BY id LIMIT $1 OFFSET $2",
        table.columns, table.name
    );
    let items: Vec<T> = retry(|| {
        sqlx::query_as(&select)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
    })
    .await?;
    let count = format!("SELECT COUNT(*) FROM {}", table.name);
    let (total,): (i64,) = retry(|| sqlx::query_as(&count).fetch_one(pool)).await?;
    Ok(Page::new(items, limit, offset, total))
}

/// Row `id` of `table`, or its [`Table::not_found`].
pub async fn get<T>(pool: &AnyPool, table: &Table, id: i64) -> ApiResult<T>
where
    T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
{
    let select = format!("SELECT {} FROM {} WHERE id = $1", table.columns, table.name);
    let row: Option<T> = retry(|| sqlx::query_as(&select).bind(id).fetch_optional(pool)).await?;
    row.ok_or_else(|| table.not_found(id))
}

/// Delete row `id` of `table`; [`Table::not_found`] if there was none.
pub async fn delete(pool: &AnyPool, table: &Table, id: i64) -> ApiResult<()> {
    let delete = format!("DELETE FROM {} WHERE id = $1", table.name);
    let done = retry(|| sqlx::query(&delete).bind(id).execute(pool)).await?;
    if done.rows_affected() == 0 {
        return Err(table.not_found(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Table;
    use crate::PageParams;

    const THINGS: Table = Table {
        name: "things",
        columns: "id, name",
        noun: "thing",
        not_found_code: "thing_not_found",
    };

    #[derive(sqlx::FromRow, Debug, PartialEq)]
    struct Thing {
        id: i64,
        name: String,
    }

    /// One in-memory SQLite database (one connection: each would get its own) with five things.
    async fn pool() -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            sqlx::query("INSERT INTO things (name) VALUES ($1)")
                .bind(name)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool
    }

    #[test]
    fn a_missing_row_is_a_404_naming_it() {
        let e = THINGS.not_found(7);
        assert_eq!(e.status, axum::http::StatusCode::NOT_FOUND);
        assert_eq!(e.code, "thing_not_found");
        assert_eq!(e.message, "thing 7 does not exist");
    }

    #[tokio::test]
    async fn pages_in_id_order_with_the_total() {
        let pool = pool().await;
        let params = PageParams {
            limit: Some(2),
            offset: Some(3),
        };
        let page = super::list::<Thing>(&pool, &THINGS, params).await.unwrap();
        let names: Vec<_> = page.items.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["d", "e"]);
        assert_eq!((page.total, page.next_offset), (5, None));
        let bad = PageParams {
            limit: Some(0),
            offset: None,
        };
        let e = super::list::<Thing>(&pool, &THINGS, bad).await.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn get_and_delete_answer_404_for_a_missing_row() {
        let pool = pool().await;
        let t: Thing = super::get(&pool, &THINGS, 2).await.unwrap();
        assert_eq!(
            t,
            Thing {
                id: 2,
                name: "b".into()
            }
        );
        super::delete(&pool, &THINGS, 2).await.unwrap();
        let e = super::get::<Thing>(&pool, &THINGS, 2).await.unwrap_err();
        assert_eq!(e.code, "thing_not_found");
        let e = super::delete(&pool, &THINGS, 2).await.unwrap_err();
        assert_eq!(e.message, "thing 2 does not exist");
    }
}
