//! The access log: one JSON line per request, written off the request path.
//!
//! A request serializes its line straight into a shared buffer (a short critical section, no per-line
//! allocation) and goes on. One writer thread swaps the buffer out and writes it every 100 ms, or sooner
//! when it passes 256 KiB. The writer never wakes per line: waking a thread for every request cost more
//! CPU than the proxying itself (see benches/README.md). Past 8 MiB of unwritten lines (a stalled disk),
//! lines are dropped and counted rather than let the log slow requests or grow memory. The thread starts
//! on first use, i.e. after Pingora has daemonized, never before a fork.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Lines dropped because the writer fell behind.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 256 * 1024;
const MAX_PENDING: usize = 8 * 1024 * 1024;

struct Shared {
    buf: Mutex<Vec<u8>>,
    ready: Condvar,
}

pub struct AccessLog {
    path: Option<String>,
    shared: OnceLock<Option<Arc<Shared>>>,
}

impl AccessLog {
    /// `path`: append to this file; stdout when `None`.
    pub fn new(path: Option<String>) -> Self {
        AccessLog {
            path,
            shared: OnceLock::new(),
        }
    }

    fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared
            .get_or_init(|| {
                let out: Box<dyn Write + Send> = match &self.path {
                    None => Box::new(std::io::stdout()),
                    Some(p) => match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                    {
                        Ok(f) => Box::new(f),
                        Err(e) => {
                            log::error!("access log: cannot open {p}: {e}; access logging is off");
                            return None;
                        }
                    },
                };
                let shared = Arc::new(Shared {
                    buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
                    ready: Condvar::new(),
                });
                let for_writer = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || writer(&for_writer, out));
                match spawned {
                    Ok(_) => Some(shared),
                    Err(e) => {
                        log::error!("access log: cannot start writer thread: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Append one entry as a JSON line.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some(shared) = self.shared() else { return };
        let Ok(mut buf) = shared.buf.lock() else {
            return;
        };
        if buf.len() > MAX_PENDING {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = buf.len();
        if serde_json::to_writer(&mut *buf, entry).is_err() {
            buf.truncate(before);
            return;
        }
        buf.push(b'\n');
        if buf.len() >= FLUSH_AT {
            shared.ready.notify_one();
        }
    }
}

fn writer(shared: &Shared, out: Box<dyn Write + Send>) {
    let mut out = out;
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT);
    loop {
        {
            let Ok(guard) = shared.buf.lock() else { return };
            let Ok((mut guard, _)) = shared
                .ready
                .wait_timeout_while(guard, FLUSH_EVERY, |b| b.len() < FLUSH_AT)
            else {
                return;
            };
            std::mem::swap(&mut *guard, &mut spare);
        }
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
    }
}

/// The fields of one access-log line.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: std::time::SystemTime,
    pub request_id: &'a str,
    #[serde(serialize_with = "display")]
    pub client_ip: std::net::IpAddr,
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub protocol: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    #[serde(serialize_with = "display_opt")]
    pub target: Option<std::net::SocketAddr>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub user_agent: Option<&'a str>,
    pub trace_id: &'a str,
    /// Who the request was authenticated as (JWT `sub`, or API-key consumer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_opt<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn rfc3339<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339(*t))
}

/// RFC 3339 UTC time with milliseconds, formatted without allocating and without a date crate.
pub struct Rfc3339(pub std::time::SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let now = self
            .0
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = if m <= 2 { y + 1 } else { y };
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            now.subsec_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        let t = super::Rfc3339(std::time::SystemTime::now()).to_string();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
