//! Database setup shared by the services: SQLite (the default, one file per service) or PostgreSQL,
//! chosen by the URL; migrations embedded in each service and run at start; busy retries.
//!
//! Queries are written once with `$1`-style placeholders, which both SQLite and PostgreSQL accept, and
//! run through sqlx's `Any` driver. Each parameter is used in increasing order of first appearance, the one
//! rule that keeps the two dialects' numbering identical.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connect, tune and migrate. `sqlite` and `postgres` are the service's migrations for each dialect.
pub async fn connect(
    url: &str,
    sqlite: &'static Migrator,
    postgres: &'static Migrator,
) -> anyhow::Result<(AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let (url, backend) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        (url.to_string(), Backend::Postgres)
    } else if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let file = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(file).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let url = if path.contains("mode=") {
            url.to_string()
        } else {
            format!("sqlite://{file}?mode=rwc")
        };
        (url, Backend::Sqlite)
    } else {
        anyhow::bail!("unsupported database URL `{url}`: use sqlite://FILE or postgres://...");
    };
    let opts: AnyConnectOptions = url.parse()?;
    let pool = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL: readers never block the writer; NORMAL sync is durable across a process
                    // crash (kill -9), which is what a service must survive; busy_timeout makes a
                    // writer wait for the lock instead of failing at once.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                }
                Ok(())
            })
        })
        .connect_with(opts)
        .await?;
    let migrator = match backend {
        Backend::Sqlite => sqlite,
        Backend::Postgres => postgres,
    };
    migrator.run(&pool).await?;
    Ok((pool, backend))
}

/// Is this the database saying "busy, try again" (SQLite lock contention, PostgreSQL serialization
/// failure or deadlock)?
pub fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            matches!(code, "5" | "6" | "261" | "262" | "517" | "40001" | "40P01")
                || db.message().contains("database is locked")
                || db.message().contains("database table is locked")
        }
        _ => false,
    }
}

/// Run `f` again while the database is busy (up to 20 attempts, jittered backoff up to ~200 ms).
pub async fn retry<T, F, Fut>(mut f: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(e) if is_busy(&e) && attempt < 20 => {
                attempt += 1;
                let base = 5u64 << attempt.min(5);
                tokio::time::sleep(Duration::from_millis(base + fastrand::u64(0..base))).await;
            }
            other => return other,
        }
    }
}

/// Current time as RFC 3339 text (stored as TEXT in both dialects).
pub fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// `t` as fixed-width RFC 3339 UTC text with milliseconds. Fixed width means two such strings compare
/// like the times they denote, which is what lets SQL compare them in both dialects.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(super::rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_123); // leap day 2000
        assert_eq!(super::rfc3339(t), "2000-02-29T00:00:00.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31T23:59:59
        assert_eq!(super::rfc3339(t), "2026-12-31T23:59:59.000Z");
    }
}
