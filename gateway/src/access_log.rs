//! The access log: one JSON line per request, written off the request path.
//!
//! Requests format their line and hand it to a bounded channel; one writer thread batches lines into a
//! buffered stdout or file and flushes when the channel runs dry. A full channel drops the line (and
//! counts it) rather than slow a request: the log must never become the bottleneck or a way to stall the
//! proxy. The thread starts on first use, i.e. after Pingora has daemonized, never before a fork.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

/// Lines dropped because the writer fell behind.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

pub struct AccessLog {
    path: Option<String>,
    tx: OnceLock<Option<SyncSender<String>>>,
}

impl AccessLog {
    /// `path`: append to this file; stdout when `None`.
    pub fn new(path: Option<String>) -> Self {
        AccessLog {
            path,
            tx: OnceLock::new(),
        }
    }

    fn sender(&self) -> Option<&SyncSender<String>> {
        self.tx
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
                let (tx, rx) = sync_channel::<String>(64 * 1024);
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || writer(rx, out));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        log::error!("access log: cannot start writer thread: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Queue one line (without its newline).
    pub fn write(&self, line: String) {
        if let Some(tx) = self.sender() {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn writer(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        let _ = out.write_all(b"\n");
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
}

/// The fields of one access-log line.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: String,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<String>,
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

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
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
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        let t = super::rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
