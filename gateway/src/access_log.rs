//! The access log: one JSON line per request, written off the request path.
//!
//! A request formats its line into a buffer of its thread (no lock held while serializing, no per-line
//! allocation), then appends the bytes to a shared buffer under a short lock and goes on. One writer
//! thread swaps the shared buffer out and writes it every 100 ms, or sooner when it passes 256 KiB. The
//! writer never wakes per line: waking a thread for every request cost more CPU than the proxying
//! itself (see benches/README.md). Past 8 MiB of unwritten lines (a stalled disk), lines are dropped and
//! counted in `tollgate_access_log_dropped_total` rather than let the log slow requests or grow memory.
//! The thread starts on first use, i.e. after Pingora has daemonized, never before a fork; on a graceful
//! shutdown [`AccessLog::close`] has it write what is left and stop, and waits for that.
//!
//! [`AccessLog::reopen`] (SIGUSR1, logrotate's `postrotate`) has the writer write what it holds to the
//! file it has open, then open the path again (`O_APPEND|O_CREAT`, mode 0644 less the umask, as at the
//! start): every line lands in exactly one of the two files, none twice. If the path cannot be opened,
//! the writer keeps the old file and says so.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 256 * 1024;
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// A line buffer that grew past this (a huge user agent) is given back rather than kept per thread.
const KEEP_LINE_BUFFER: usize = 64 * 1024;

thread_local! {
    /// Where a request thread formats its line before taking the lock.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// What the request threads and the writer share.
#[derive(Default)]
struct State {
    /// Lines not yet handed to the writer.
    buf: Vec<u8>,
    /// [`AccessLog::close`] was called: the writer writes what is left and stops.
    closing: bool,
    /// The writer has stopped; later lines are dropped.
    closed: bool,
    /// [`AccessLog::reopen`] was called: the writer opens the file again after writing what it has.
    reopen: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: a full buffer, or closing.
    ready: Condvar,
    /// Wakes [`AccessLog::close`]: the writer has written everything and stopped.
    stopped: Condvar,
}

pub struct AccessLog {
    path: Option<String>,
    shared: OnceLock<Option<Arc<Shared>>>,
    /// `tollgate_access_log_dropped_total`.
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    /// `path`: append to this file; stdout when `None`. Lines that cannot be written in time are
    /// counted in `dropped`.
    pub fn new(path: Option<String>, dropped: prometheus::IntCounter) -> Self {
        AccessLog {
            path,
            shared: OnceLock::new(),
            dropped,
        }
    }

    fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared
            .get_or_init(|| {
                let out: Box<dyn Write + Send> = match &self.path {
                    None => Box::new(std::io::stdout()),
                    Some(p) => match open(p) {
                        Ok(f) => Box::new(f),
                        Err(e) => {
                            log::error!("access log: cannot open {p}: {e}; access logging is off");
                            return None;
                        }
                    },
                };
                let shared = Arc::new(Shared {
                    state: Mutex::new(State {
                        buf: Vec::with_capacity(FLUSH_AT),
                        ..State::default()
                    }),
                    ready: Condvar::new(),
                    stopped: Condvar::new(),
                });
                let for_writer = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn({
                        let path = self.path.clone();
                        move || writer(&for_writer, out, path.as_deref())
                    });
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
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            entry.write_json(&mut line);
            line.push(b'\n');
            let full = match shared.state.lock() {
                Ok(mut s) if !s.closed && s.buf.len() <= MAX_PENDING => {
                    s.buf.extend_from_slice(&line);
                    Some(s.buf.len() >= FLUSH_AT)
                }
                _ => None,
            };
            match full {
                Some(true) => shared.ready.notify_one(),
                Some(false) => {}
                None => self.dropped.inc(),
            }
            if line.capacity() > KEEP_LINE_BUFFER {
                *line = Vec::with_capacity(1024);
            }
        });
    }

    /// Have the writer write the lines it holds to the file it has open, then open the path again
    /// (after logrotate renamed it). Returns at once; nothing to do for stdout or a log not started
    /// yet (the first line opens the path as it is then).
    pub fn reopen(&self) {
        if self.path.is_none() {
            return;
        }
        let Some(Some(shared)) = self.shared.get() else {
            return;
        };
        if let Ok(mut s) = shared.state.lock() {
            s.reopen = true;
        }
        shared.ready.notify_one();
    }

    /// Write every line appended so far, stop the writer and wait (at most `timeout`) until it has.
    /// For a graceful shutdown: the process may exit once this returns `true`. Lines appended later
    /// are dropped (and counted).
    pub fn close(&self, timeout: Duration) -> bool {
        // Never started: no line was ever written, nothing to flush.
        let Some(Some(shared)) = self.shared.get() else {
            return true;
        };
        let Ok(mut s) = shared.state.lock() else {
            return false;
        };
        s.closing = true;
        shared.ready.notify_one();
        match shared.stopped.wait_timeout_while(s, timeout, |s| !s.closed) {
            Ok((s, _)) => s.closed,
            Err(_) => false,
        }
    }
}

/// The log file, opened for appending (created 0644 less the umask if missing).
fn open(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

fn writer(shared: &Shared, out: Box<dyn Write + Send>, path: Option<&str>) {
    let mut out = out;
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_AT);
    loop {
        let (closing, reopen) = {
            let Ok(guard) = shared.state.lock() else {
                return;
            };
            let Ok((mut guard, _)) = shared.ready.wait_timeout_while(guard, FLUSH_EVERY, |s| {
                s.buf.len() < FLUSH_AT && !s.closing && !s.reopen
            }) else {
                return;
            };
            std::mem::swap(&mut guard.buf, &mut spare);
            (guard.closing, std::mem::take(&mut guard.reopen))
        };
        if !spare.is_empty() {
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
        // The lines taken above went to the old file; the ones appended since wait in the shared
        // buffer for the new one.
        if let (true, Some(p)) = (reopen, path) {
            match open(p) {
                Ok(f) => {
                    out = Box::new(f);
                    log::info!("access log: reopened {p}");
                }
                Err(e) => {
                    log::error!("access log: cannot reopen {p}: {e}; writing to the old file")
                }
            }
        }
        if closing {
            // Everything appended before `closing` was set went out with this last swap; lines
            // appended since see `closed` and are dropped.
            if let Ok(mut s) = shared.state.lock() {
                if !s.buf.is_empty() {
                    let _ = out.write_all(&s.buf);
                    let _ = out.flush();
                    s.buf.clear();
                }
                s.closed = true;
            }
            shared.stopped.notify_all();
            return;
        }
    }
}

/// The fields of one access-log line.
#[derive(serde::Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub time: std::time::SystemTime,
    pub request_id: &'a str,
    #[serde(serialize_with = "ip")]
    pub client_ip: std::net::IpAddr,
    /// A method token (`Method::as_str`: tchars only, so never escaped, like `scheme`, `protocol`,
    /// `trace_id` and `span_id`; debug builds assert it).
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub protocol: &'a str,
    /// The host the request was for (absolute-form authority, `:authority` or `Host`, as validated).
    pub host: Option<&'a str>,
    pub path: &'a str,
    /// The raw query string, without the `?` (`None`: the target had none).
    pub query: Option<&'a str>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    #[serde(serialize_with = "socket_opt")]
    pub target: Option<std::net::SocketAddr>,
    pub status: u16,
    /// The status the upstream answered with (`None`: no upstream answered), which differs from
    /// `status` when a plugin replaced the answer or a retry followed it.
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    /// Tries made to the upstream (0: answered by the gateway; more than 1: retried).
    pub tries: u32,
    /// The gRPC status of a gRPC call's answer (the upstream's `grpc-status`, or the gateway's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub user_agent: Option<&'a str>,
    /// 32 hex digits, or empty.
    pub trace_id: &'a str,
    /// The gateway's span of this request (16 hex digits; the `parent-id` it sent upstream).
    pub span_id: &'a str,
    /// Who the request was authenticated as (JWT `sub`, or API-key consumer), also on the 403 of a
    /// valid token that lacked a scope or role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// A composition route's calls: `[{"call","index"?,"status","ms","target"?,"error"?}]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<&'a serde_json::Value>,
}

impl Entry<'_> {
    /// The entry as one JSON object, byte for byte what `serde_json::to_writer` makes of it (the
    /// `Serialize` derive above; a test compares the two), written field by field: a string that needs
    /// no escaping (every field of a usual request) is copied as it is, numbers go through `itoa`, and
    /// only the rest (escapes, floats) through serde_json. Serde's generic path cost about 7,000
    /// instructions per line (benches/README.md, Profile).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut time = [0u8; 24];
        out.extend_from_slice(b"{\"time\":");
        match Rfc3339(self.time).write_to(&mut time) {
            Some(t) => json_ascii(out, t.as_bytes()),
            None => json_str(out, &Rfc3339(self.time).to_string()),
        }
        key!(out, "request_id");
        json_str(out, self.request_id);
        key!(out, "client_ip");
        let mut addr = crate::headers::AddrBuf::new();
        json_ascii(out, addr.ip(self.client_ip));
        key!(out, "method");
        json_ascii(out, self.method.as_bytes());
        key!(out, "scheme");
        json_ascii(out, self.scheme.as_bytes());
        key!(out, "protocol");
        json_ascii(out, self.protocol.as_bytes());
        key!(out, "host");
        json_opt_str(out, self.host);
        key!(out, "path");
        json_str(out, self.path);
        key!(out, "query");
        json_opt_str(out, self.query);
        key!(out, "route");
        json_opt_str(out, self.route);
        key!(out, "upstream");
        json_opt_str(out, self.upstream);
        key!(out, "target");
        match self.target {
            Some(a) => json_ascii(out, addr.socket(a)),
            None => out.extend_from_slice(b"null"),
        }
        let mut n = itoa::Buffer::new();
        key!(out, "status");
        out.extend_from_slice(n.format(self.status).as_bytes());
        key!(out, "upstream_status");
        match self.upstream_status {
            Some(v) => out.extend_from_slice(n.format(v).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        key!(out, "duration_ms");
        json_f64(out, self.duration_ms);
        key!(out, "upstream_ms");
        match self.upstream_ms {
            Some(v) => json_f64(out, v),
            None => out.extend_from_slice(b"null"),
        }
        key!(out, "tries");
        out.extend_from_slice(n.format(self.tries).as_bytes());
        if let Some(g) = self.grpc_status {
            key!(out, "grpc_status");
            out.extend_from_slice(n.format(g).as_bytes());
        }
        key!(out, "bytes_in");
        out.extend_from_slice(n.format(self.bytes_in).as_bytes());
        key!(out, "bytes_out");
        out.extend_from_slice(n.format(self.bytes_out).as_bytes());
        key!(out, "user_agent");
        json_opt_str(out, self.user_agent);
        key!(out, "trace_id");
        json_ascii(out, self.trace_id.as_bytes());
        key!(out, "span_id");
        json_ascii(out, self.span_id.as_bytes());
        if let Some(p) = self.principal {
            key!(out, "principal");
            json_str(out, p);
        }
        if let Some(e) = self.error {
            key!(out, "error");
            json_str(out, e);
        }
        if let Some(c) = self.calls {
            // Rare (composition routes only): serde's own writer is fine here.
            key!(out, "calls");
            let _ = serde_json::to_writer(&mut *out, c);
        }
        out.push(b'}');
    }
}

/// `,"name":` (every field but the first), one constant made at compile time.
macro_rules! key {
    ($out:expr, $name:literal) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
    };
}
use key;

/// Does `s` hold a byte JSON must escape (a control character, `"` or `\`)? Eight bytes at a time
/// ([`crate::swar`]): the byte-by-byte test was a third of a log line's cost.
fn needs_escape(s: &[u8]) -> bool {
    use crate::swar::{below, eq, words};
    words(s).any(|(w, keep)| (below(w, 0x20) | eq(w, b'"') | eq(w, b'\\')) & keep != 0)
}

/// `s` as a JSON string: copied when nothing in it needs an escape, else as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Text the gateway formatted itself (addresses, the time: digits, hex, `.:[]%-TZ`) or a method token,
/// which never needs an escape: copied between quotes without the escape check (five fields of a
/// line: about 100 instructions each, callgrind).
fn json_ascii(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.is_ascii() && !needs_escape(b), "{b:?}");
    out.push(b'"');
    out.extend_from_slice(b);
    out.push(b'"');
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A float as serde_json writes it (`null` when not finite).
fn json_f64(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

// The fields below are written as JSON strings from stack buffers, not through `collect_str`: the
// formatting machinery (padding, `Display` of addresses) was most of a line's cost (benches/README.md,
// Profile). The text is the same as their `Display`.

fn ip<S: serde::Serializer>(v: &std::net::IpAddr, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = crate::headers::AddrBuf::new();
    // Addresses are ASCII.
    s.serialize_str(std::str::from_utf8(buf.ip(*v)).unwrap_or_default())
}

fn socket_opt<S: serde::Serializer>(
    v: &Option<std::net::SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(a) => {
            let mut buf = crate::headers::AddrBuf::new();
            s.serialize_str(std::str::from_utf8(buf.socket(*a)).unwrap_or_default())
        }
        None => s.serialize_none(),
    }
}

fn rfc3339<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 24];
    match Rfc3339(*t).write_to(&mut buf) {
        Some(text) => s.serialize_str(text),
        None => s.collect_str(&Rfc3339(*t)),
    }
}

/// RFC 3339 UTC time with milliseconds, formatted without allocating and without a date crate.
pub struct Rfc3339(pub std::time::SystemTime);

impl Rfc3339 {
    /// `(year, month, day, seconds of the day, milliseconds)`, UTC.
    fn parts(&self) -> (i64, i64, i64, i64, u32) {
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
        (y, m, d, rem, now.subsec_millis())
    }

    /// The time as `YYYY-MM-DDTHH:MM:SS.mmmZ` in `buf`, digit by digit; `None` past the year 9999.
    pub fn write_to<'b>(&self, buf: &'b mut [u8; 24]) -> Option<&'b str> {
        let (y, m, d, rem, ms) = self.parts();
        if !(0..=9999).contains(&y) {
            return None;
        }
        let mut put = |at: usize, v: i64, digits: usize| {
            let mut v = v;
            for k in (0..digits).rev() {
                buf[at + k] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y, 4);
        put(5, m, 2);
        put(8, d, 2);
        put(11, rem / 3600, 2);
        put(14, rem / 60 % 60, 2);
        put(17, rem % 60, 2);
        put(20, i64::from(ms), 3);
        for (at, c) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ] {
            buf[at] = c;
        }
        std::str::from_utf8(&buf[..]).ok()
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d, rem, ms) = self.parts();
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(request_id: &str) -> Entry<'_> {
        Entry {
            time: std::time::SystemTime::now(),
            request_id,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            method: "GET",
            scheme: "http",
            protocol: "HTTP/1.1",
            host: None,
            path: "/",
            query: None,
            route: None,
            upstream: None,
            target: None,
            status: 200,
            upstream_status: None,
            duration_ms: 0.1,
            upstream_ms: None,
            tries: 0,
            grpc_status: None,
            bytes_in: 0,
            bytes_out: 0,
            user_agent: None,
            trace_id: "",
            span_id: "",
            principal: None,
            calls: None,
            error: None,
        }
    }

    #[test]
    fn close_writes_every_line_and_later_lines_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let log = AccessLog::new(Some(path.display().to_string()), dropped.clone());
        assert!(
            log.close(Duration::from_secs(5)),
            "never started: nothing to do"
        );
        // Lines from several threads, each formatted in its thread's buffer.
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..250 {
                        log.write(&entry(&format!("{t}-{i}")));
                    }
                });
            }
        });
        assert!(log.close(Duration::from_secs(5)));
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: std::collections::BTreeSet<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string()
            })
            .collect();
        assert_eq!((text.lines().count(), ids.len()), (1000, 1000));
        assert_eq!(dropped.get(), 0);
        log.write(&entry("late"));
        assert_eq!(
            dropped.get(),
            1,
            "a line after close is not written but counted"
        );
        assert!(!std::fs::read_to_string(&path).unwrap().contains("late"));
    }

    #[test]
    fn reopen_puts_every_line_in_exactly_one_of_the_two_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let log = AccessLog::new(Some(path.display().to_string()), dropped.clone());
        let ids = |p: &std::path::Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string()
                })
                .collect()
        };
        for i in 0..100 {
            log.write(&entry(&format!("old-{i}")));
        }
        // Lines still held by the writer when the file is renamed go to the renamed file.
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(std::time::Instant::now() < deadline, "never reopened");
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..100 {
            log.write(&entry(&format!("new-{i}")));
        }
        assert!(log.close(Duration::from_secs(5)));
        let (old, new) = (ids(&rotated), ids(&path));
        assert_eq!(old.len(), 100, "{old:?}");
        assert!(old.iter().all(|i| i.contains("old-")));
        assert_eq!(new.len(), 100, "{new:?}");
        assert!(new.iter().all(|i| i.contains("new-")));
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn escapes_are_found_in_every_position() {
        for len in 0..24 {
            let clean = "a".repeat(len);
            assert!(!needs_escape(clean.as_bytes()), "{len}");
            assert!(!needs_escape("é€ \u{7f}~!#".repeat(len).as_bytes()));
            for at in 0..len {
                for bad in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut b = clean.clone().into_bytes();
                    b[at] = bad;
                    assert!(needs_escape(&b), "{len} {at} {bad}");
                }
            }
        }
    }

    #[test]
    fn time_format() {
        let t = super::Rfc3339(std::time::SystemTime::now()).to_string();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
        // Written digit by digit, the same text as the `Display` (which the log used to go through).
        let mut buf = [0u8; 24];
        for ms in [
            0u64,
            951_782_400_123,
            1_700_000_000_999,
            4_102_444_799_000,
            253_402_300_799_999,
        ] {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            let r = super::Rfc3339(at);
            assert_eq!(r.write_to(&mut buf), Some(r.to_string().as_str()), "{ms}");
        }
        let far = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(super::Rfc3339(far).write_to(&mut buf), None, "year 10000");
    }

    #[test]
    fn the_hand_written_line_is_byte_for_byte_serdes() {
        let base = entry("rid-1");
        let mut cases = vec![base];
        let mut e = entry("0af7651916cd43dd8448eb211c80319c");
        e.client_ip = "2001:db8::7".parse().unwrap();
        e.route = Some("orders");
        e.upstream = Some("orders-svc");
        e.target = Some("[2001:db8::9]:8443".parse().unwrap());
        e.status = 503;
        e.duration_ms = 12.345;
        e.upstream_ms = Some(0.001);
        e.bytes_in = 1 << 20;
        e.bytes_out = usize::MAX;
        e.user_agent = Some("curl/8.5.0 \"quoted\" back\\slash \u{7f} caf\u{e9} \u{1f600}");
        e.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        e.principal = Some("user\n42\t\u{1}");
        e.error = Some("no_healthy_upstream");
        e.path = "/a/\u{8}b";
        e.host = Some("api.example.com:8443");
        e.query = Some("q=caf%C3%A9&x=\"y\"");
        e.upstream_status = Some(200);
        e.span_id = "00f067aa0ba902b7";
        cases.push(e);
        let mut e = entry("x");
        e.duration_ms = f64::NAN;
        e.upstream_ms = Some(f64::INFINITY);
        e.time = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        e.method = "-";
        e.path = "-";
        cases.push(e);
        for e in &cases {
            let mut mine = Vec::new();
            e.write_json(&mut mine);
            let serde = serde_json::to_vec(e).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&mine),
                String::from_utf8_lossy(&serde)
            );
        }
    }

    #[test]
    fn addresses_and_time_are_written_as_their_display() {
        let mut e = entry("rid");
        e.client_ip = "2001:db8::7".parse().unwrap();
        e.target = Some("10.1.2.3:8080".parse().unwrap());
        e.time = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(v["client_ip"], "2001:db8::7");
        assert_eq!(v["target"], "10.1.2.3:8080");
        assert_eq!(v["time"], "2023-11-14T22:13:20.042Z");
        e.target = None;
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert!(v["target"].is_null());
    }
}
