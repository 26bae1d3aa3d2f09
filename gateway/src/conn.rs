//! Connection states around every HTTP/1 client connection: reading a head, in a request,
//! responded, closing, tunnel. This module watches the bytes the HTTP parser reads and the bytes the
//! gateway writes, and enforces what each state allows.
//!
//! - **Head**: from the start of a request head until its blank line the client has
//!   `header_read_timeout` in total (Pingora times out each *read*, 60 s, so a client that sends a
//!   byte every 59 s would hold the connection forever: slowloris). Empty lines before the request
//!   line (RFC 9112 §2.2 lets a server skip them) count toward it. Past it the client gets a `408`
//!   JSON answer (if any byte of the request arrived) and the connection is closed. For the first
//!   request the clock starts at accept; for later keep-alive requests at their first byte, so idle
//!   keep-alive time is governed by the keep-alive timeout alone.
//! - **Request**: the head is in; body reads are not under the head deadline. An informational
//!   response (`100 Continue`, `103`) keeps the connection here: a slow upload after `Expect:
//!   100-continue` is still a request.
//! - **Responded**: the final response head was written without Pingora's `Connection: close` (it
//!   writes `keep-alive` then); the client's next byte starts a new head. Once the answer is all out
//!   and Pingora waits for the next head, the keep-alive idle timeout runs (see [`KeepAlive`]); past
//!   it the connection is closed without a byte, as Pingora's own keep-alive timeout would.
//! - **Closing**: the final response head said `Connection: close`, so Pingora serves no other
//!   request on this connection. What the client still sends is the rest of a body Pingora may go on
//!   reading after an early answer (a `401` during an upload is written before the body is in: Pingora
//!   then always writes `close`, pingora-core 0.9.1 `protocols/http/v1/server.rs`
//!   `prepare_response_header`). Those bytes are never taken for a head: no head deadline, no
//!   request-line check. Pingora writes that header on every HTTP/1 answer, and only as
//!   `Connection: close` or `Connection: keep-alive` (its `insert_header` replaces any other), so the
//!   exact line is what is looked for, in the head only.
//! - **Tunnel**: the gateway wrote `101 Switching Protocols`. From now on the bytes belong to the
//!   upgraded protocol (a WebSocket): no head deadline, and no byte of the gateway's is ever written
//!   into it. The tunnel closes after `tunnel_idle_timeout` with no byte in either direction.
//!
//! Each request line is checked as it arrives, before the parser sees it ([`LineCheck`]): one with a
//! control byte or a third space, which Pingora's parser would percent-encode and accept, is refused.
//!
//! The wrapper also makes shutdown lossless for new connections. On SIGTERM/SIGQUIT Pingora stops
//! accepting and then (in `cleanup`) drops every connection whose request head it has not read yet,
//! including one accepted a moment earlier whose client has not had the chance to send. That client gets a
//! closed connection instead of an answer: during an upgrade under load, a few requests fail. So
//! [`HeaderDeadline`] counts the connections still waiting for their first head and lets `cleanup`
//! wait for them (at most the head deadline, which would close them anyway) before Pingora's. The
//! [`ConnectionTracker`] also counts open connections, which the drain logic waits for before exiting.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora_core::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

/// The answer a client gets when it was too slow to send its request head.
const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 119\r\n\r\n{\"error\":{\"status\":408,\"code\":\"request_timeout\",\"message\":\"the request head was not received in time\",\"request_id\":\"\"}}";

/// Told about each request Pingora's HTTP/1 parser refused. Pingora answers those itself with a bare
/// `400` before any `ProxyHttp` hook runs (pingora-proxy `process_new_http` → `respond_error(400)`),
/// so the connection swaps that answer for the gateway's JSON error and reports it here, for the
/// access log and the metrics.
pub trait RefusedRequests: Send + Sync {
    fn refused(&self, client: Option<std::net::IpAddr>, request_id: &str, tls: bool);
}

/// Client connections of one listening service, for a shutdown that drops nothing.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    /// Connections being served.
    open: AtomicUsize,
    /// Connections whose first request head has not been read completely yet.
    fresh: AtomicUsize,
    /// The service has stopped accepting and closed its idle connections.
    closed: AtomicBool,
}

impl ConnectionTracker {
    /// Open client connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
    /// Connections accepted that have not sent a whole first request head.
    pub fn fresh(&self) -> usize {
        self.fresh.load(Ordering::Acquire)
    }
    /// True once the service stopped accepting and closed its idle connections (shutdown only).
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Holds one unit of a counter until dropped.
struct Count(
    Arc<ConnectionTracker>,
    fn(&ConnectionTracker) -> &AtomicUsize,
);

impl Count {
    fn new(t: &Arc<ConnectionTracker>, f: fn(&ConnectionTracker) -> &AtomicUsize) -> Count {
        f(t).fetch_add(1, Ordering::AcqRel);
        Count(t.clone(), f)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::AcqRel);
    }
}

/// The keep-alive idle timeout as the running config has it (`server.limits.keepalive_timeout`: a
/// reload changes it for the next idle wait).
///
/// The wrapper runs this timer, not Pingora: Pingora's (`KeepaliveStatus::Timeout`) is a
/// `pingora-timeout` timer registered for every request whose next head the client has not sent
/// yet: with its future and wake-up, 630 instructions more per request than this one
/// (`benches/instructions.sh`, benches/README.md). The wrapper's one timer per connection is
/// pushed back instead: tokio moves a deadline later in place, without the driver's lock, unless
/// the old one has fired (tokio 1.54 `runtime/time/entry.rs`, `reset` and `extend_expiration`),
/// and files the entry again when its old slot comes up. The gateway tells Pingora to wait
/// without a timeout (`set_keepalive(Some(0))`, Pingora's `Infinite`) and the wrapper ends the
/// wait.
///
/// So the wait for a head has no bound but the wrapper's: every state in which Pingora may read a
/// head is timed ([`State::Head`] always, from accept or from a head's first byte; `Responded`
/// once the answer is out), and the states that are not timed (`Request`, `Closing`, `Tunnel`'s
/// own timer aside) are ones in which Pingora reads no head.
///
/// The timer starts only when the answer is all out. Pingora goes on reading the client while it
/// still writes a body, to see it go away, but that read is a one-byte probe (pingora-core 0.9.1
/// `protocols/http/v1/server.rs`, `read_idle_probe`); the read for the next head is into the head
/// buffer (`read_request`: `INIT_HEADER_BUF_SIZE`, 4 KiB). So a read with room for more than one
/// byte, in `Responded`, is the wait for the next head, and only that one starts the clock: an
/// answer streamed for longer than the timeout is never cut (a test through the gateway drives
/// both).
pub type KeepAlive = Arc<dyn Fn() -> Duration + Send + Sync>;

/// HTTP/2's connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Wraps a Pingora app so that every connection it serves has a request-head deadline, and so that
/// shutdown waits for connections that have not sent their first request yet.
pub struct HeaderDeadline<A> {
    pub inner: Arc<A>,
    pub timeout: Duration,
    pub tunnel_idle: Duration,
    pub tracker: Arc<ConnectionTracker>,
    pub refused: Option<Arc<dyn RefusedRequests>>,
    /// Plain connections may be HTTP/2 with prior knowledge (`server.h2c`).
    pub h2c: bool,
    /// Who may start a connection with a PROXY protocol header (`server.proxy_protocol`, as
    /// reloaded); TLS connections had theirs read before the handshake.
    pub proxy_protocol: Option<crate::proxy_protocol::Current>,
    /// The keep-alive idle timeout, which the wrapper enforces in Pingora's stead.
    pub keepalive: KeepAlive,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: Arc<A>, timeout: Duration, tunnel_idle: Duration) -> Self {
        HeaderDeadline {
            inner,
            timeout,
            tunnel_idle,
            tracker: Arc::default(),
            refused: None,
            h2c: false,
            proxy_protocol: None,
            keepalive: Arc::new(|| Duration::from_secs(60)),
        }
    }

    /// Close idle keep-alive connections after what `current` says (default: 60 s).
    pub fn with_keepalive(mut self, current: KeepAlive) -> Self {
        self.keepalive = current;
        self
    }

    /// Read a PROXY protocol header first on plain connections from the peers `current` names.
    pub fn with_proxy_protocol(mut self, current: crate::proxy_protocol::Current) -> Self {
        self.proxy_protocol = Some(current);
        self
    }

    /// Let plain connections that start with HTTP/2's preface be served as HTTP/2 (Pingora's
    /// `HttpServerOptions::h2c` must be on too).
    pub fn with_h2c(mut self, on: bool) -> Self {
        self.h2c = on;
        self
    }

    /// Report requests the parser refused to `sink`.
    pub fn with_refused(mut self, sink: Arc<dyn RefusedRequests>) -> Self {
        self.refused = Some(sink);
        self
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Pingora serves every request of an HTTP/1 connection inside one `process_new` call.
        let _open = Count::new(&self.tracker, |t| &t.open);
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 frames its requests itself; this byte-level watch only knows HTTP/1 heads. An h2
            // connection is bounded by its idle timeout (`h2_idle_timeout`) instead.
            return self.inner.process_new(stream, shutdown).await;
        }
        let mut stream = stream;
        if let Some((policy, deadline)) = self
            .proxy_protocol
            .as_ref()
            .filter(|_| stream.get_ssl_digest().is_none())
            .and_then(|current| current())
        {
            // Before anything reads a byte of the request: the header comes first.
            if let Err(e) = crate::proxy_protocol::accept(&mut *stream, &policy, deadline).await {
                log::debug!("closing a connection: {e}");
                return None;
            }
        }
        let mut known_h1 = false;
        if self.h2c && stream.get_ssl_digest().is_none() {
            // HTTP/2's preface starts with `PRI`, a method RFC 9113 §3.4 reserves for it. Three bytes
            // tell, where Pingora's own check reads all 24 of the preface, with no deadline, and so
            // would hold an HTTP/1.0 request shorter than that, or a silent client, forever.
            let mut first = [0u8; 3];
            match tokio::time::timeout(self.timeout, stream.try_peek(&mut first)).await {
                Ok(Ok(true)) if &first == b"PRI" => {
                    // The whole preface, within the same deadline: Pingora's HTTP/2 handshake has
                    // none, and would wait forever on a client that stops after `PRI`.
                    let mut preface = [0u8; H2_PREFACE.len()];
                    return match tokio::time::timeout(self.timeout, stream.try_peek(&mut preface))
                        .await
                    {
                        Ok(Ok(true)) if preface == *H2_PREFACE => {
                            self.inner.process_new(stream, shutdown).await
                        }
                        _ => None,
                    };
                }
                Ok(Ok(_)) => known_h1 = true,
                // Nothing within the head deadline, or the client went away.
                _ => return None,
            }
        }
        let mut wrapped = DeadlineStream::new(stream, self.timeout, self.tunnel_idle);
        wrapped.known_h1 = known_h1;
        wrapped.refused = self.refused.clone();
        wrapped.keepalive = Some(self.keepalive.clone());
        wrapped.fresh = Some(Count::new(&self.tracker, |t| &t.fresh));
        self.inner.process_new(Box::new(wrapped), shutdown).await
    }

    async fn cleanup(&self) {
        // The accept loops have stopped. Let connections accepted just before start to be served (their
        // tasks may not have run yet), then wait until every accepted client sent its first request
        // head; the head deadline bounds the wait, as it would close them anyway.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let deadline = tokio::time::Instant::now() + self.timeout;
        while self.tracker.fresh() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inner.cleanup().await;
        self.tracker.closed.store(true, Ordering::Release);
    }
}

/// Where a connection is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Head,
    Request,
    Responded,
    Closing,
    Tunnel,
}

/// Why a request line [`LineCheck`] refused is answered `400`.
const LINE_REFUSAL: &str =
    "the request line has a control byte or a space in its target (percent-encode them: %20)";

/// What the parser gets instead of a read that brought a refused request-line byte: a NUL, which
/// httparse refuses in any part of a request line. Pingora then tries to percent-encode the target
/// and parse again (`escape_illegal_request_line`, for httparse's `Token` and `Version` errors), but
/// its pattern needs ` HTTP/d` *after* the target, and nothing follows the NUL: the rewrite changes
/// nothing (or only escapes a `"`, `<` or `>` before it, and fails again the same way), so the head is
/// refused with `InvalidHTTPHeader` and answered through the same path as every head the parser refuses
/// (swapped for the gateway's JSON 400, logged and counted), never routed.
const REFUSED_READ: u8 = 0;

/// The request line of a head, checked as it arrives (it may take several reads) for what Pingora's
/// parser would otherwise *correct*: httparse refuses a control byte or a third space in a request
/// line, and Pingora then percent-encodes the target and parses it again
/// (`escape_illegal_request_line`, pingora-core 0.9.1 `protocols/http/v1/server.rs`), so `GET /a b
/// HTTP/1.1` would be routed and forwarded as `/a%20b`. RFC 9112 §3.2 says a server should not
/// autocorrect an invalid request line and process it, "since the invalid request-line might be
/// deliberately crafted to bypass security filters along the request chain". Pingora rewrites only a
/// line httparse refuses, and httparse accepts the other bytes the rewrite would encode (`"`, `<`, `>`,
/// non-ASCII): such a line is never rewritten, its target is taken as sent.
///
/// Every head the parser reads passes through this check: a head starts only in `Head` (the first)
/// or after a `keep-alive` answer (`Responded`); Pingora's pipelining is off (its default), so bytes
/// read past a request are never parsed as the next one; and after a `close` answer no head follows.
#[derive(Debug, Default, Clone, Copy)]
struct LineCheck {
    spaces: usize,
    /// The last byte seen was a CR: only the LF may follow it.
    cr: bool,
}

impl LineCheck {
    /// Take the next bytes of the request line (without its LF). `false` once the line has a control
    /// byte (a CR is allowed only just before the LF) or a third space.
    fn feed(&mut self, part: &[u8]) -> bool {
        let Some((&last, before_last)) = part.split_last() else {
            return true;
        };
        if self.cr {
            return false;
        }
        self.cr = last == b'\r';
        let body = if self.cr { before_last } else { part };
        let (control, spaces) = classify(body);
        self.spaces += spaces;
        !control && self.spaces <= 2
    }
}

/// Whether `bytes` has a control byte (below 0x20, or DEL), and how many spaces, eight bytes at a time
/// ([`crate::swar`]).
fn classify(bytes: &[u8]) -> (bool, usize) {
    use crate::swar::{below, count, eq, words};
    let (mut control, mut spaces) = (0u64, 0);
    for (w, keep) in words(bytes) {
        control |= (below(w, 0x20) | eq(w, 0x7f)) & keep;
        spaces += count(eq(w, b' ') & keep);
    }
    (control != 0, spaces)
}

/// The end of a response head.
static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
/// The header line Pingora writes in every HTTP/1 answer after which it serves no other request (see
/// [`State::Closing`]). Header values cannot hold a CR or LF, so this is a whole line.
static CONNECTION_CLOSE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\nConnection: close\r\n"));
/// Does this response head (its lines, each with its CRLF, without the blank line) have Pingora's
/// `Connection: close` line? Pingora inserts `Date` and then `Connection` as it writes the head, so
/// unless the answer already had a `Connection` header (whose place the value then takes), that line
/// is the last: looked at first, where it usually is.
fn says_close(head: &[u8]) -> bool {
    const CLOSE: &[u8] = b"\r\nConnection: close\r\n";
    const KEEP_ALIVE: &[u8] = b"\r\nConnection: keep-alive\r\n";
    if head.ends_with(CLOSE) {
        return true;
    }
    !head.ends_with(KEEP_ALIVE) && CONNECTION_CLOSE.find(head).is_some()
}

/// A final response head that takes more than one write (rare: Pingora writes a head in one buffer,
/// which a socket takes whole unless its send buffer is full), read line by line as it comes: nothing
/// is kept but the start of the current line, so no head is too long for it.
#[derive(Debug, Default)]
struct HeadLines {
    /// The head's first bytes were seen, here or in the write that started it.
    started: bool,
    /// The line being read is a header line (the status line comes first).
    in_headers: bool,
    /// The current line's first bytes (as many as `Connection: close\r` has), and its length so far.
    line: [u8; 18],
    len: usize,
    close: bool,
}

impl HeadLines {
    /// The next bytes of the head (after its status); once its blank line is in, whether it had the
    /// `Connection: close` line.
    fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        self.started = true;
        for &b in bytes {
            if b != b'\n' {
                if self.len < self.line.len() {
                    self.line[self.len] = b;
                }
                self.len += 1;
                continue;
            }
            let line = &self.line[..self.len.min(self.line.len())];
            if self.in_headers {
                if self.len <= 1 && line.iter().all(|&c| c == b'\r') {
                    return Some(self.close);
                }
                self.close |= self.len == self.line.len() && line == b"Connection: close\r";
            }
            self.in_headers = true;
            self.len = 0;
        }
        None
    }
}

/// What the gateway's writes have shown of the response head being written (in state `Request`).
#[derive(Debug, Default)]
struct StatusScan {
    /// The first bytes of the head: `HTTP/1.1 101` is 12.
    prefix: [u8; 12],
    len: u8,
    /// How much of `\r\n\r\n` the last bytes matched (to find the end of an informational head).
    terminator: u8,
    /// The status is final (not `1xx`): the rest of the head is looked at for its `Connection` line.
    final_head: bool,
    /// The final head, when it takes more than one write.
    lines: HeadLines,
}

/// A client connection in one of the [`State`]s.
pub struct DeadlineStream {
    inner: Stream,
    /// `HeaderDeadline` peeked at the first bytes: HTTP/1, not an h2c preface.
    known_h1: bool,
    timeout: Duration,
    tunnel_idle: Duration,
    /// One timer per connection, reset rather than reallocated: the head deadline in `Head`, the
    /// keep-alive idle timeout in `Responded`, the idle timeout in `Tunnel`.
    timer: Pin<Box<Sleep>>,
    /// The timer is running (`Head` with a start, `Responded` waiting for the next head, or
    /// `Tunnel`).
    armed: bool,
    state: State,
    /// Bytes of the current head seen (0: none yet), leading empty lines included.
    head_bytes: usize,
    /// The current line of the head has a byte other than CR.
    line_has_content: bool,
    /// A non-empty line of this head was seen (so an empty line now ends it).
    request_line_seen: bool,
    status: StatusScan,
    /// The request line of the current head, as far as it has come.
    line: LineCheck,
    /// The request line is one Pingora's parser would rewrite (see [`LineCheck`]): the parser got
    /// [`REFUSED_READ`] instead, and its `400` is answered with [`LINE_REFUSAL`].
    line_refused: bool,
    /// Counts this connection as waiting for its first request head, until that head is complete.
    fresh: Option<Count>,
    /// The idle timeout between requests (`None`: no idle timeout, for tests of other states).
    keepalive: Option<KeepAlive>,
    refused: Option<Arc<dyn RefusedRequests>>,
    /// The gateway's answer in place of Pingora's bare 400, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    /// The replacement is written: what Pingora writes after it is dropped.
    swallow: bool,
}

impl std::fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish()
    }
}

impl DeadlineStream {
    pub fn new(inner: Stream, timeout: Duration, tunnel_idle: Duration) -> Self {
        DeadlineStream {
            inner,
            known_h1: false,
            timeout,
            tunnel_idle,
            timer: Box::pin(sleep(timeout)),
            armed: true,
            state: State::Head,
            head_bytes: 0,
            line_has_content: false,
            request_line_seen: false,
            status: StatusScan::default(),
            line: LineCheck::default(),
            line_refused: false,
            fresh: None,
            keepalive: None,
            refused: None,
            replacement: None,
            swallow: false,
        }
    }

    /// Is `buf` the start of Pingora's own `400` for a head it could not parse? Every answer of the
    /// gateway's carries `X-Request-Id`; Pingora's pre-built one does not, and names itself.
    fn is_parser_refusal(&self, buf: &[u8]) -> bool {
        if !matches!(self.state, State::Head | State::Request) || self.status.len != 0 {
            return false;
        }
        if !buf.starts_with(b"HTTP/1.1 400 ") {
            return false;
        }
        let head = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => &buf[..end],
            None => buf,
        };
        let lower = head.to_ascii_lowercase();
        let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
        has(b"server: pingora") && !has(b"x-request-id")
    }

    /// Start answering with the gateway's own JSON 400 instead of Pingora's, and report it.
    fn replace_refusal(&mut self) {
        let message = if self.line_refused {
            LINE_REFUSAL
        } else {
            "the request head could not be parsed"
        };
        let id = crate::headers::RequestId::generate();
        let id = id.as_str();
        let client = self
            .inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let tls = self.inner.get_ssl_digest().is_some();
        if let Some(sink) = &self.refused {
            sink.refused(client, id, tls);
        }
        let body = crate::error::GatewayError::new(400, "bad_request", message).body(id);
        let mut out = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        self.replacement = Some((out, 0));
        self.state = State::Closing;
    }

    /// Write what is left of the replacement. `Ready(Ok(()))` once all of it is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, off)) = &mut self.replacement {
            while *off < bytes.len() {
                match Pin::new(&mut *self.inner).poll_write(cx, &bytes[*off..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => *off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.replacement = None;
            self.swallow = true;
        }
        Poll::Ready(Ok(()))
    }

    /// The connection's state (for tests and logs).
    pub fn state(&self) -> State {
        self.state
    }

    fn arm(&mut self, d: Duration) {
        self.timer.as_mut().reset(tokio::time::Instant::now() + d);
        self.armed = true;
    }

    /// Feed bytes the parser just read.
    fn on_read(&mut self, bytes: &[u8]) {
        match self.state {
            State::Responded if !bytes.is_empty() => {
                // The client is sending again after our response: a new request head starts, and its
                // clock with its first byte. A head that came whole in this read (the common case)
                // needs no clock at all, so the timer is reset only for one still incomplete.
                self.state = State::Head;
                self.head_bytes = 0;
                self.scan_head(bytes);
                if self.state == State::Head {
                    self.arm(self.timeout);
                }
            }
            State::Head => self.scan_head(bytes),
            State::Tunnel if !bytes.is_empty() => self.arm(self.tunnel_idle),
            _ => {}
        }
    }

    /// Find the blank line that ends the head. Lines end in LF (a CR before it is optional, as
    /// Pingora's parser accepts both); empty lines before the request line are skipped, not taken
    /// for the end of a head, but their bytes count and the clock keeps running.
    ///
    /// The bytes are read where they are, in the parser's buffer (nothing is copied or allocated), line
    /// by line: find the next LF (`memchr`, a word at a time: a byte-at-a-time search was a
    /// thousand instructions for a hundred-byte head), then look only at whether the line has a byte
    /// other than CR (its first byte, for any real header line).
    ///
    /// The request line (the first line with content) is also checked as it comes ([`LineCheck`]):
    /// one Pingora's parser would rewrite sets `line_refused` and ends the scan.
    fn scan_head(&mut self, bytes: &[u8]) {
        self.head_bytes += bytes.len();
        let mut rest = bytes;
        loop {
            let lf = memchr::memchr(b'\n', rest);
            let part = &rest[..lf.unwrap_or(rest.len())];
            let has_content = self.line_has_content || part.iter().any(|&b| b != b'\r');
            if !self.request_line_seen && has_content && !self.line.feed(part) {
                self.line_refused = true;
                return;
            }
            let Some(lf) = lf else {
                self.line_has_content = has_content;
                return;
            };
            if !has_content && self.request_line_seen {
                self.fresh = None;
                self.state = State::Request;
                self.armed = false;
                self.request_line_seen = false;
                self.line_has_content = false;
                self.line = LineCheck::default();
                self.status = StatusScan::default();
                return;
            }
            self.request_line_seen |= has_content;
            self.line_has_content = false;
            rest = &rest[lf + 1..];
        }
    }

    /// Watch bytes the gateway writes in state `Request` for the response head: its status (`1xx`,
    /// `101` or final), and for a final one, whether it says `Connection: close`.
    fn on_write(&mut self, bytes: &[u8]) {
        match self.state {
            State::Request => {}
            State::Tunnel if !bytes.is_empty() => {
                self.arm(self.tunnel_idle);
                return;
            }
            _ => return,
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let st = &mut self.status;
            if st.final_head {
                self.scan_final_head(rest);
                return;
            }
            let have = st.len as usize;
            if have < st.prefix.len() {
                let take = (st.prefix.len() - have).min(rest.len());
                st.prefix[have..have + take].copy_from_slice(&rest[..take]);
                st.len += take as u8;
                rest = &rest[take..];
                if st.len as usize == st.prefix.len() {
                    // `HTTP/1.1 NNN`
                    match &st.prefix[9..12] {
                        b"101" => {
                            self.state = State::Tunnel;
                            self.arm(self.tunnel_idle);
                            return;
                        }
                        [b'1', _, _] => {}
                        _ => st.final_head = true,
                    }
                }
                continue;
            }
            // An informational head: find its end; the next bytes are another head.
            let b = rest[0];
            rest = &rest[1..];
            st.terminator = match (st.terminator, b) {
                (0 | 2, b'\r') => st.terminator + 1,
                (1 | 3, b'\n') => st.terminator + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if st.terminator == 4 {
                *st = StatusScan::default();
            }
        }
    }

    /// The rest of a final response head, after its status (`bytes` may go on into the body): once its
    /// end is in, the connection is `Closing` if the head has Pingora's `Connection: close` line, else
    /// `Responded`. The status line's CRLF comes after the status, so the line is found whole.
    fn scan_final_head(&mut self, bytes: &[u8]) {
        let st = &mut self.status;
        let close = if st.lines.started {
            match st.lines.feed(bytes) {
                Some(close) => close,
                None => return,
            }
        } else {
            // The whole head in one write (the usual case), looked at where it is.
            match HEAD_END.find(bytes) {
                Some(end) => says_close(&bytes[..end + 2]),
                None => {
                    st.lines.feed(bytes);
                    return;
                }
            }
        };
        self.status = StatusScan::default();
        self.state = if close {
            State::Closing
        } else {
            State::Responded
        };
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_read(&buf.filled()[before..]);
                if this.line_refused && buf.filled().len() > before {
                    // The parser never sees this read: it gets a byte it refuses outright instead
                    // (see `REFUSED_READ`), and its `400` is swapped for the gateway's.
                    buf.set_filled(before);
                    buf.put_slice(&[REFUSED_READ]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.state == State::Responded && !this.armed && buf.remaining() > 1 {
                    // The answer is out and Pingora waits for the next head (see `KeepAlive`).
                    if let Some(idle) = &this.keepalive {
                        let idle = idle();
                        this.arm(idle);
                    }
                }
                if !this.armed || this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.armed = false;
                match this.state {
                    State::Tunnel => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "tunnel idle timeout",
                        )))
                    }
                    State::Responded => {
                        // Idle past the keep-alive timeout: the end of the stream, which Pingora
                        // takes for a client that closed between requests and closes without a byte.
                        this.state = State::Closing;
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
                if this.state == State::Head && this.head_bytes > 0 {
                    // Best effort: tell the client why, without waiting on it.
                    let _ = Pin::new(&mut *this.inner).poll_write(cx, TIMEOUT_RESPONSE);
                    let _ = Pin::new(&mut *this.inner).poll_flush(cx);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not received in time",
                )))
            }
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none() && !this.swallow && this.is_parser_refusal(buf) {
            this.replace_refusal();
        }
        if this.replacement.is_some() {
            match this.poll_replacement(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.swallow {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.on_write(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Where a refusal may be replaced, write one buffer at a time through `poll_write`.
        if this.swallow
            || this.replacement.is_some()
            || (matches!(this.state, State::Head | State::Request) && this.status.len == 0)
        {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        let r = Pin::new(&mut *this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = r {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                this.on_write(&b[..take]);
                n -= take;
            }
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.known_h1 {
            // Only Pingora's h2c check peeks, for the preface; `process_new` found there is none.
            buf.fill(0);
            return Ok(true);
        }
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair(timeout: Duration) -> (DeadlineStream, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(4096);
        (
            DeadlineStream::new(Box::new(a), timeout, Duration::from_secs(100)),
            b,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_times_out() {
        let (mut s, mut client) = pair(Duration::from_secs(10));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut answer = vec![0u8; TIMEOUT_RESPONSE.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408"));
        let body = &TIMEOUT_RESPONSE[TIMEOUT_RESPONSE
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4..];
        assert_eq!(body.len(), 119, "content-length matches the body");
    }

    /// A request on `s` (from `client`), answered with a keep-alive head and an empty body.
    async fn serve_one(s: &mut DeadlineStream, client: &mut tokio::io::DuplexStream) {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(s.state(), State::Responded);
    }

    #[tokio::test(start_paused = true)]
    async fn complete_head_stops_the_clock_and_keepalive_idle_is_free() {
        let (mut s, mut client) = pair(Duration::from_secs(10));
        serve_one(&mut s, &mut client).await;
        let mut buf = [0u8; 64];
        // Idle for longer than the head deadline, then a second request: fine.
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        // A body read after the head is not under the deadline.
        let (mut s, mut client) = pair(Duration::from_secs(10));
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_secs(20)).await;
        client.write_all(b"hello").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 5);
    }

    /// A connection whose keep-alive timeout is `secs` seconds as it is when a wait starts.
    fn idle_pair(
        secs: &Arc<std::sync::atomic::AtomicU64>,
    ) -> (DeadlineStream, tokio::io::DuplexStream) {
        let (mut s, client) = pair(Duration::from_secs(10));
        let current = secs.clone();
        s.keepalive = Some(Arc::new(move || {
            Duration::from_secs(current.load(Ordering::Relaxed))
        }));
        (s, client)
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_idle_times_only_the_wait_for_the_next_head() {
        use std::sync::atomic::AtomicU64;
        let idle_secs = Arc::new(AtomicU64::new(2));
        let (mut s, mut client) = idle_pair(&idle_secs);
        serve_one(&mut s, &mut client).await;
        // Pingora's one-byte probe while it still writes a body: never timed, however long.
        let mut probe = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(30), s.read(&mut probe)).await;
        assert!(waited.is_err(), "a probe was cut: {waited:?}");
        // The wait for the next head (room for a head): the end of the stream after exactly 2 s.
        let mut head = [0u8; 4096];
        let start = tokio::time::Instant::now();
        assert_eq!(s.read(&mut head).await.unwrap(), 0);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        assert_eq!(s.state(), State::Closing);
        drop(s);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(
            !rest.windows(3).any(|w| w == b"408"),
            "closed without a byte"
        );

        // Each wait is timed from its own start (requests 1.5 s apart live on), with the value the
        // config has then (a reload): 5 s after it changed.
        let (mut s, mut client) = idle_pair(&idle_secs);
        for _ in 0..4 {
            serve_one(&mut s, &mut client).await;
            let waited = tokio::time::timeout(Duration::from_millis(1500), s.read(&mut head)).await;
            assert!(waited.is_err(), "closed before its idle timeout");
        }
        idle_secs.store(5, Ordering::Relaxed);
        serve_one(&mut s, &mut client).await;
        let start = tokio::time::Instant::now();
        assert_eq!(s.read(&mut head).await.unwrap(), 0);
        assert!(
            start.elapsed() >= Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_second_request_gets_its_head_deadline_after_the_reset() {
        let (mut s, mut client) = pair(Duration::from_secs(10));
        let mut buf = [0u8; 64];
        // First request: whole head in one read, answered.
        client
            .write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(s.state(), State::Request);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(s.state(), State::Responded);
        // Second request, whole in one read after an idle longer than the deadline: no clock, served.
        tokio::time::sleep(Duration::from_secs(25)).await;
        client
            .write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(s.state(), State::Request);
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        // Third request, head split over reads: its clock starts at its first byte (the timer is reset,
        // not left at the first request's deadline, long past) and still ends it.
        tokio::time::sleep(Duration::from_secs(25)).await;
        client.write_all(b"GET /3 HTTP/1.1\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(s.state(), State::Head);
        // Nothing more for 9 s: still waiting (a timer left at an old deadline would have fired).
        let waited = tokio::time::timeout(Duration::from_secs(9), s.read(&mut buf)).await;
        assert!(waited.is_err(), "cut before its deadline: {waited:?}");
        client.write_all(b"Host: x\r\n").await.unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(s.state(), State::Head);
        // Past 10 s from the head's first byte: cut, with a 408.
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut answer = [0u8; 12];
        let mut seen = Vec::new();
        // The two 200s the test wrote, then the 408.
        while !seen.windows(12).any(|w| w == b"HTTP/1.1 408") {
            let n = client.read(&mut answer).await.unwrap();
            assert!(n > 0, "the connection closed without a 408");
            seen.extend_from_slice(&answer[..n]);
        }
    }

    #[test]
    fn head_scan_across_reads() {
        // Bytes of one head fed in every split: the end is found exactly once, at the blank line, and
        // empty lines before the request line are not taken for it.
        let head = b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\nA: \r\r\n\r\n";
        let rt = runtime();
        let _guard = rt.enter();
        for split in 0..=head.len() {
            let (s, _client) = pair(Duration::from_secs(10));
            let mut s = s;
            s.on_read(&head[..split]);
            let done_early = s.state() == State::Request;
            s.on_read(&head[split..]);
            assert_eq!(s.state(), State::Request, "split at {split}");
            assert!(!done_early || split == head.len(), "ended early at {split}");
            assert_eq!(s.head_bytes, head.len());
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn classify_matches_a_byte_at_a_time_count() {
        let naive = |b: &[u8]| {
            (
                b.iter().any(|&c| c < 0x20 || c == 0x7f),
                b.iter().filter(|&&c| c == b' ').count(),
            )
        };
        crate::swar::each_probe(|line| assert_eq!(classify(line), naive(line), "{line:?}"));
        assert_eq!(classify(b"GET /a?b=c HTTP/1.1"), (false, 2));
    }

    #[test]
    fn request_lines_pingora_would_rewrite_are_refused_in_any_split() {
        let rt = runtime();
        let _guard = rt.enter();
        let refused = |head: &[u8], split: usize| {
            let (mut s, _client) = pair(Duration::from_secs(10));
            s.on_read(&head[..split]);
            if !s.line_refused {
                s.on_read(&head[split..]);
            }
            s.line_refused
        };
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /a?b=%20&c=<\"> HTTP/1.1\nHost: x\n\n",
            b"\r\nGET http://x/a HTTP/1.0\r\n\r\n",
            // Header lines are not the request line: a space, a tab and a CR in them are the parser's.
            b"GET / HTTP/1.1\r\nA: b c\td\r\r\n\r\n",
        ] {
            for split in 0..=head.len() {
                assert!(
                    !refused(head, split),
                    "{:?} at {split}",
                    head.escape_ascii()
                );
            }
        }
        for head in [
            &b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1 HTTP/1.1\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n\r\n",
            b"GET /a\tb HTTP/1.1\r\n\r\n",
            b"GET /a\x7f HTTP/1.1\r\n\r\n",
            b"GET /a\rb HTTP/1.1\r\n\r\n",
            b"GET /a\x00 HTTP/1.1\n\n",
            b"\r\n\r\nGET /a b HTTP/1.1\r\n\r\n",
        ] {
            for split in 0..=head.len() {
                assert!(refused(head, split), "{:?} at {split}", head.escape_ascii());
            }
        }
    }

    #[tokio::test]
    async fn a_refused_request_line_reaches_the_parser_as_a_nul_and_is_answered_by_the_gateway() {
        // The bad byte in the first read, and in a later one.
        for parts in [
            &[&b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..]][..],
            &[b"GET /a HTTP/1.1", b" x\r\n\r\n"],
        ] {
            let (mut s, mut client) = pair(Duration::from_secs(10));
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            for part in parts {
                client.write_all(part).await.unwrap();
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            let mut want = parts[..parts.len() - 1].concat();
            want.push(REFUSED_READ);
            assert_eq!(seen, want, "the parser gets a NUL for the bad read");
            // Pingora's own refusal is swapped for the gateway's, which says why.
            s.write_all(b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            drop(s);
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8(answer).unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{answer}"
            );
            assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
            assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
            assert!(answer.contains(LINE_REFUSAL), "{answer}");
        }
    }

    /// The final head's `Connection` line decides what the client's next bytes are, in any split of the
    /// head over writes: after `close`, body bytes (Pingora may go on reading an upload it answered
    /// early) are never a head; after `keep-alive`, they are.
    #[test]
    fn the_answers_connection_line_tells_a_new_head_from_body_bytes() {
        let rt = runtime();
        let _guard = rt.enter();
        let cases: [(&[u8], State); 8] = [
            (
                b"HTTP/1.1 200 OK\r\nConnection: closed\r\nConnection: close \r\nA:\r\nConnection: clos\r\n\r\n",
                State::Responded,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX: Connection: close\r\n\r\n",
                State::Responded,
            ),
            (
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nDate: x\r\nConnection: close\r\n\r\nok",
                State::Closing,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                State::Closing,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\nConnection: keep-alive\r\n\r\n\r\nConnection: close\r\n\r\n",
                State::Responded,
            ),
            (
                b"HTTP/1.1 200 OK\r\nX-Connection: close\r\nA: Connection: close\r\nConnection: keep-alive\r\n\r\n",
                State::Responded,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\r\n",
                State::Closing,
            ),
            (
                b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\nHTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n",
                State::Responded,
            ),
        ];
        for (answer, want) in cases {
            for split in 0..=answer.len() {
                let (mut s, _client) = pair(Duration::from_secs(10));
                s.on_read(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
                assert_eq!(s.state(), State::Request);
                s.on_write(&answer[..split]);
                s.on_write(&answer[split..]);
                let at = format!("{:?} at {split}", answer.escape_ascii());
                assert_eq!(s.state(), want, "{at}");
                // What the client sends now: a body, or a head.
                s.on_read(b"GET /a b HTTP/1.1\r\nHost: x\r\n");
                match want {
                    State::Closing => {
                        assert_eq!(s.state(), State::Closing, "{at}");
                        assert!(!s.line_refused && !s.armed, "{at}");
                    }
                    _ => assert!(s.line_refused && s.state() == State::Head, "{at}"),
                }
            }
        }
        // A head far longer than any buffer, in three writes: read as it comes.
        let long = format!(
            "HTTP/1.1 200 OK\r\nX-Long: {}\r\nConnection: close\r\n\r\nbody",
            "v".repeat(200_000)
        );
        for split in [13, 20, 100_000, long.len() - 30, long.len() - 13] {
            let (mut s, _client) = pair(Duration::from_secs(10));
            s.on_read(b"GET / HTTP/1.1\r\n\r\n");
            s.on_write(&long.as_bytes()[..split]);
            s.on_write(&long.as_bytes()[split..split + 5]);
            assert_eq!(s.state(), State::Request, "ended early at {split}");
            s.on_write(&long.as_bytes()[split + 5..]);
            assert_eq!(s.state(), State::Closing, "split at {split}");
        }
        // A head in three writes, the last two a byte each, ends where it ends.
        let (mut s, _client) = pair(Duration::from_secs(10));
        s.on_read(b"GET / HTTP/1.1\r\n\r\n");
        for part in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r"[..],
            b"\n",
            b"body",
        ] {
            s.on_write(part);
        }
        assert_eq!(s.state(), State::Closing);
    }

    #[tokio::test(start_paused = true)]
    async fn body_bytes_after_a_close_answer_never_start_the_head_clock() {
        let (mut s, mut client) = pair(Duration::from_secs(10));
        let mut buf = [0u8; 128];
        client
            .write_all(b"POST /upload HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(s.state(), State::Closing);
        // The upload goes on, slowly, with bytes that look like a head that never ends.
        client.write_all(b"GET /a b HTTP/1.1\r\nX: ").await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"GET /a b HTTP/1.1\r\nX: ",
            "passed through as they are"
        );
        let waited = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
        assert!(waited.is_err(), "cut by a head deadline: {waited:?}");
        client.write_all(b"rest").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn leading_empty_lines_count_toward_the_deadline() {
        let (mut s, mut client) = pair(Duration::from_secs(10));
        client.write_all(b"\r\n\r\n\r\n\r\nGET").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(s.state(), State::Head);
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // LF-only heads end too (the parser accepts them).
        let (mut s, mut client) = pair(Duration::from_secs(10));
        client
            .write_all(b"\nGET / HTTP/1.1\nHost: x\n\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert_eq!(s.state(), State::Request);
    }

    #[tokio::test(start_paused = true)]
    async fn informational_responses_keep_the_request_and_101_makes_a_tunnel() {
        let (mut s, mut client) = pair(Duration::from_secs(10));
        client
            .write_all(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 128];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        // Written in pieces, as a socket may take them.
        s.write_all(b"HTTP/1.1 10").await.unwrap();
        s.write_all(b"0 Continue\r\n\r\n").await.unwrap();
        assert_eq!(s.state(), State::Request);
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"hello").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 5, "a slow body is not cut");
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(s.state(), State::Responded);

        let (mut s, mut client) = pair(Duration::from_secs(10));
        client
            .write_all(b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        assert!(s.read(&mut buf).await.unwrap() > 0);
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(s.state(), State::Tunnel);
        // Idle past the head deadline: nothing is written into the tunnel, reads go on.
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"\x81\x02hi").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
        assert_eq!(s.state(), State::Tunnel);
        // Idle past the tunnel timeout: closed, and the client got no byte of ours.
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(s);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.starts_with(b"HTTP/1.1 101"), "only the 101 itself");
        assert!(!rest.windows(3).any(|w| w == b"408"));
    }
}
