//! Header hygiene: hop-by-hop headers, request ids.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};
use pingora_http::{RequestHeader, ResponseHeader};

/// Runs `f` on the `http` parts of a request head, where the gateway's own header edits go.
///
/// Why: Pingora's `RequestHeader::insert_header` parses every name again from bytes, allocates it
/// twice and inserts it into two maps (the values and the names' original case), both sized for the
/// client's headers only, so each header the gateway added (`X-Forwarded-*`, `X-Request-Id`,
/// `traceparent`, `Host`) cost about 1,300 instructions with the growth (callgrind,
/// benches/README.md). On the parts it is one insert by an already parsed name into a map reserved
/// once. The price is the case map: the head goes out with canonical names (standard ones
/// Title-Case, `Content-Type`; the others lower case, `x-custom`), as Envoy sends them. Header names
/// are case-insensitive (RFC 9110 §5.1), and HTTP/2 has only lower case.
///
/// What Pingora keeps outside the parts is carried over: an HTTP/2 head's "no END_STREAM on HEADERS"
/// (gRPC-Web). The request target afterwards is the URI: the caller sets it from its own model (the
/// proxy) or the head's target is origin-form already (composition calls, checked when compiling), so
/// no raw target bytes are lost.
pub fn edit_request<R>(h: &mut RequestHeader, f: impl FnOnce(&mut http::request::Parts) -> R) -> R {
    let end_stream = h.send_end_stream();
    // `Request::new` makes no allocation: an empty map, the static `/` URI.
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(h, empty).into();
    let out = f(&mut parts);
    *h = RequestHeader::from(parts);
    if end_stream == Some(false) {
        h.set_send_end_stream(false);
    }
    out
}

/// [`edit_request`] for an answer's head. The reason phrase is Pingora's canonical one afterwards
/// (an upstream's own wording, which carries no meaning, is not passed on; Envoy does the same).
pub fn edit_response<R>(
    h: &mut ResponseHeader,
    f: impl FnOnce(&mut http::response::Parts) -> R,
) -> R {
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(h, empty).into();
    let out = f(&mut parts);
    *h = ResponseHeader::from(parts);
    out
}

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1; `HTTP2-Settings`, RFC
/// 7540 §3.2.1, belongs to an `h2c` upgrade). `Transfer-Encoding` is also hop-by-hop: a request's is
/// removed too ([`request_hop_by_hop`]) and Pingora frames the body it sends upstream again; an
/// answer's is left to Pingora, which frames the client's answer from it.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// `name` is one of [`HOP_BY_HOP`], compared as parsed names (a standard name is a one-byte compare,
/// where the list's strings were compared byte by byte for every header of every message).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::{PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER};
    [
        CONNECTION,
        TE,
        TRAILER,
        UPGRADE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        HTTP2_SETTINGS,
    ]
    .iter()
    .any(|n| n == name)
}

/// Header names to remove: on the stack for the few a message has (no allocation per request).
pub type Names = smallvec::SmallVec<[HeaderName; 4]>;

/// The headers of `h` that the `Connection` headers of `listing` list (RFC 9110 §7.6.1; `listing` is
/// `h` itself for an answer, the client's head for a request, see [`request_hop_by_hop`]),
/// skipping tokens that are hop-by-hop anyway (`keep-alive`, `upgrade`). A token is matched against
/// the names present rather than parsed into a name: `Connection: keep-alive` or `close` on nearly
/// every message then costs a few byte compares and no allocation.
fn connection_listed(h: &HeaderMap, listing: &HeaderMap, out: &mut Names) {
    for v in listing.get_all(CONNECTION) {
        // Most messages: a token that names no other header.
        if v.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        let Ok(v) = v.to_str() else { continue };
        for t in v.split(',').map(str::trim) {
            if HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(t)) {
                continue;
            }
            if let Some(name) = h.keys().find(|n| n.as_str().eq_ignore_ascii_case(t)) {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
    }
}

/// Does this message upgrade the protocol (`Upgrade`, and `upgrade` among the `Connection` options)?
/// An upgrade's answer (`101`) keeps `Connection` and `Upgrade`.
fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The hop-by-hop headers present in an answer's `h`, to be removed. An upgrade's answer (`101`)
/// keeps `Connection` and `Upgrade` so that WebSockets work. One pass over the names the message has
/// (a handful), rather than a hashed lookup per name this function knows; it returns nothing, without
/// allocating, in the common case.
pub fn hop_by_hop_present(h: &HeaderMap) -> Names {
    hop_by_hop(h, None, false)
}

/// The hop-by-hop headers present in a request's `h`, to be removed before it goes upstream: those of
/// [`HOP_BY_HOP`], `Transfer-Encoding` (Pingora frames the body it sends again: chunked when the
/// request has a body and no `Content-Length`) and what `Connection` names
/// ([`crate::request::check_connection`] refused what it may not name). A WebSocket upgrade's
/// `Connection` and `Upgrade` go too: the proxy sets them again, as `Upgrade` and `websocket`
/// ([`websocket_upgrade`]); no other upgrade (`h2c`) is passed on.
///
/// This is the work of Pingora's default upstream request policy (pingora-proxy 0.9.1
/// `sanitize_h1_upstream_request`), which `Upstream::peer` turns off: Pingora removed each of 13 names
/// from both maps of its head, present or not (about 2,800 instructions per request, callgrind),
/// where this is one pass over the names the request has.
///
/// `client` is the client's own head, whose `Connection` says what to remove: towards an HTTP/2
/// upstream Pingora has taken `Connection` out of `h` before the gateway's filter runs (pingora-proxy
/// 0.9.1 `proxy_h2.rs`, `proxy_down_to_up`), and the headers it named would otherwise go up.
pub fn request_hop_by_hop(h: &HeaderMap, client: &HeaderMap) -> Names {
    hop_by_hop(h, Some(client), true)
}

/// A WebSocket upgrade, as Pingora tells one (pingora-proxy 0.9.1 `is_websocket_upgrade_request`):
/// HTTP/1.1 with `Upgrade: websocket`. Its upstream request gets `Connection: Upgrade` and
/// `Upgrade: websocket` after [`request_hop_by_hop`] removed the client's.
pub fn websocket_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// `listing`: the head whose `Connection` names what else to remove (`None`: `h` itself).
fn hop_by_hop(h: &HeaderMap, listing: Option<&HeaderMap>, request: bool) -> Names {
    use http::header::TRANSFER_ENCODING;
    let mut out = Names::new();
    let mut connection = false;
    for name in h.keys() {
        connection |= *name == CONNECTION;
        if is_hop_by_hop(name) || (request && *name == TRANSFER_ENCODING) {
            out.push(name.clone());
        }
    }
    if let Some(l) = listing {
        connection = l.contains_key(CONNECTION);
    }
    if out.is_empty() && !connection {
        return out;
    }
    if !request && is_upgrade(h) {
        out.retain(|n| *n != CONNECTION && *n != UPGRADE);
    }
    if connection {
        let before = out.len();
        connection_listed(h, listing.unwrap_or(h), &mut out);
        // Never let `Connection: host` or similar take away what the proxy itself needs.
        let mut i = before;
        while i < out.len() {
            let t = &out[i];
            if *t == http::header::HOST
                || *t == http::header::CONTENT_LENGTH
                || *t == http::header::TRANSFER_ENCODING
            {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }
    out
}

/// Headers that tell who the client is or how it connected. Only a trusted proxy may send them; from
/// anyone else they are removed (the gateway sets its own `X-Forwarded-For/-Proto/-Host`), or a
/// client could pick the address an upstream logs, rate-limits or trusts.
pub const FROM_TRUSTED_ONLY: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-client-ip",
    "cf-connecting-ip",
];

/// Headers the gateway sets, strips or vouches for.
pub const GATEWAY_SET: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "traceparent",
    "tracestate",
    "host",
    "content-length",
    "transfer-encoding",
];

/// Headers to remove from an upstream request before the gateway adds its own: the
/// [`FROM_TRUSTED_ONLY`] ones unless the peer is a trusted proxy, and, from anyone, a header whose name
/// becomes a stripped or gateway-set one when `_` is read as `-` (`X_Forwarded_For`, `X_User_Id`):
/// CGI, WSGI, Rack and PHP map both spellings to the same variable, so the backend could read the
/// client's copy. `protected` says whether a name (lower case, with `-`) is one the chain sets or
/// strips (identity headers). Allocates nothing in the common case.
pub fn spoofable_present(h: &HeaderMap, trusted: bool, protected: impl Fn(&str) -> bool) -> Names {
    let mut out = Names::new();
    // One pass over the names present (see `hop_by_hop_present`).
    for name in h.keys() {
        let n = name.as_str();
        if !trusted && FROM_TRUSTED_ONLY.contains(&n) {
            out.push(name.clone());
            continue;
        }
        if !n.contains('_') {
            continue;
        }
        let dashed = n.replace('_', "-");
        let d = dashed.as_str();
        if HOP_BY_HOP.contains(&d)
            || GATEWAY_SET.contains(&d)
            || FROM_TRUSTED_ONLY.contains(&d)
            || protected(d)
        {
            out.push(name.clone());
        }
    }
    out
}

/// A client's request id is kept when it is 1..=128 characters of `[A-Za-z0-9._:-]`; otherwise we make one.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A request's id, formatted once into the header value it travels as (`X-Request-Id` upstream and
/// back to the client). The access log, error bodies and plugins read it as text from the same bytes,
/// and every header made from it shares them (a reference count, no copy).
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl Default for RequestId {
    /// No id yet (a request context before its head is read).
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl RequestId {
    /// A new random id: 128 bits as 32 lower-case hex characters, in one allocation shared by every
    /// header that carries it.
    pub fn generate() -> RequestId {
        let mut hex = [0u8; 32];
        crate::trace::put_hex(&mut hex, fastrand::u128(..));
        // Hex digits are a valid header value; the fallback is never taken.
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
            .map_or_else(|_| RequestId::default(), RequestId)
    }

    /// The client's own `X-Request-Id`, kept when it is [`valid_request_id`]. Shares the request
    /// head's bytes.
    pub fn from_client(v: &HeaderValue) -> Option<RequestId> {
        valid_request_id(v.as_bytes()).then(|| RequestId(v.clone()))
    }

    /// The client's id when valid, else a new one.
    pub fn for_request(client: Option<&HeaderValue>) -> RequestId {
        client
            .and_then(RequestId::from_client)
            .unwrap_or_else(RequestId::generate)
    }

    /// The id as text (for the access log, error bodies, plugins' log lines).
    pub fn as_str(&self) -> &str {
        // Valid ids are visible ASCII, and so are generated ones.
        self.0.to_str().unwrap_or_default()
    }

    /// The header value, sharing the id's bytes.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// An IP or socket address as text in a stack buffer, for a header value made without a `String`
/// (`X-Forwarded-For`, `Host`). IPv4, the common case, is written digit by digit; IPv6 through its
/// `Display`, into the same buffer.
pub struct AddrBuf {
    /// Room for the longest socket address, `[` + 45 + `%` + 10 + `]:` + 5.
    buf: [u8; 72],
    len: usize,
}

impl Default for AddrBuf {
    fn default() -> Self {
        AddrBuf::new()
    }
}

impl AddrBuf {
    pub fn new() -> AddrBuf {
        AddrBuf {
            buf: [0; 72],
            len: 0,
        }
    }

    /// `ip` as text (`192.0.2.1`, `2001:db8::1`).
    pub fn ip(&mut self, ip: std::net::IpAddr) -> &[u8] {
        self.len = 0;
        match ip {
            std::net::IpAddr::V4(v4) => self.v4(v4),
            std::net::IpAddr::V6(v6) => {
                let _ = std::fmt::Write::write_fmt(self, format_args!("{v6}"));
            }
        }
        &self.buf[..self.len]
    }

    /// `addr` as text (`192.0.2.1:8080`, `[2001:db8::1]:8080`), as `SocketAddr`'s `Display` writes it.
    pub fn socket(&mut self, addr: std::net::SocketAddr) -> &[u8] {
        self.len = 0;
        match addr {
            std::net::SocketAddr::V4(a) => {
                self.v4(*a.ip());
                self.push(b":");
                self.push(itoa::Buffer::new().format(a.port()).as_bytes());
            }
            std::net::SocketAddr::V6(a) => {
                let _ = std::fmt::Write::write_fmt(self, format_args!("{a}"));
            }
        }
        &self.buf[..self.len]
    }

    fn v4(&mut self, ip: std::net::Ipv4Addr) {
        let mut digits = itoa::Buffer::new();
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b".");
            }
            self.push(digits.format(octet).as_bytes());
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        // Every address fits; a longer write is cut rather than allowed to panic.
        let end = (self.len + bytes.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }
}

impl std::fmt::Write for AddrBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-fine", HeaderValue::from_static("1"));
        let names = hop_by_hop_present(&h);
        for n in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
        }
        assert!(!names.iter().any(|x| x == "x-fine"));
    }

    #[test]
    fn the_parsed_hop_by_hop_names_are_the_list() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
        }
        for n in ["host", "x-secret", "keep-alive-x", "tes", "content-length"] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
        }
        assert_eq!(
            HOP_BY_HOP.len(),
            9,
            "a name added to HOP_BY_HOP goes into is_hop_by_hop too"
        );
    }

    #[test]
    fn connection_lists_only_present_names() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Gone, x-Here,close"),
        );
        h.insert("x-here", HeaderValue::from_static("1"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-stays", HeaderValue::from_static("1"));
        let names: Vec<String> = hop_by_hop_present(&h)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["connection", "x-here", "close"]);
    }

    #[test]
    fn editing_the_parts_keeps_what_pingora_holds_outside_them() {
        let mut h = RequestHeader::build("POST", b"/a?b=1", None).unwrap();
        h.set_version(http::Version::HTTP_2);
        h.set_send_end_stream(false);
        h.insert_header("x-kept", "1").unwrap();
        edit_request(&mut h, |p| {
            p.headers.insert("x-added", HeaderValue::from_static("2"));
        });
        assert_eq!(h.send_end_stream(), Some(false), "gRPC-Web's flag");
        assert_eq!(h.version, http::Version::HTTP_2);
        assert_eq!(h.method, http::Method::POST);
        assert_eq!(h.raw_path(), b"/a?b=1");
        assert_eq!(h.headers["x-kept"], "1");
        assert_eq!(h.headers["x-added"], "2");

        let mut r = ResponseHeader::build(201, None).unwrap();
        r.insert_header("x-kept", "1").unwrap();
        edit_response(&mut r, |p| {
            p.headers.remove("x-kept");
        });
        assert_eq!(r.status, 201);
        assert!(r.headers.is_empty());
    }

    #[test]
    fn connection_never_takes_away_framing_or_host() {
        let mut h = HeaderMap::new();
        let v = "close, Host, Content-Length, Transfer-Encoding, X-A";
        h.insert("connection", HeaderValue::from_static(v));
        for n in ["host", "content-length", "transfer-encoding", "x-a"] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        let names: Vec<String> = hop_by_hop_present(&h)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["connection", "x-a"]);
    }

    #[test]
    fn an_upgrade_answer_keeps_its_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(hop_by_hop_present(&h).is_empty());
    }

    fn names(n: Names) -> Vec<String> {
        n.iter().map(|n| n.to_string()).collect()
    }

    /// What Pingora's default upstream policy removed (pingora-proxy 0.9.1
    /// `strip_standard_hop_by_hop_headers`, the nominated headers, and an upgrade's headers), each
    /// found in a request by `request_hop_by_hop`, whatever the upgrade.
    #[test]
    fn a_request_loses_every_hop_by_hop_header_pingora_would_remove() {
        let all = [
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "connection",
            "upgrade",
            "http2-settings",
        ];
        for upgrade in ["websocket", "h2c", "WebSocket"] {
            let mut h = HeaderMap::new();
            for n in all {
                h.insert(n, HeaderValue::from_static("1"));
            }
            h.insert("connection", HeaderValue::from_static("Upgrade, X-Named"));
            h.insert("upgrade", HeaderValue::from_str(upgrade).unwrap());
            h.insert("x-named", HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            let mut got = names(request_hop_by_hop(&h, &h));
            got.sort();
            let mut want: Vec<String> = all.iter().map(|n| n.to_string()).collect();
            want.push("x-named".into());
            want.sort();
            assert_eq!(got, want, "{upgrade}");
        }
        // A request without any: nothing, and nothing allocated (`Names` on the stack).
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("h"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        assert_eq!(names(request_hop_by_hop(&h, &h)), ["connection"]);
        // What the proxy needs stays, even when named (`Host` is refused before routing).
        h.insert(
            "connection",
            HeaderValue::from_static("close, Content-Length, Host"),
        );
        h.insert("content-length", HeaderValue::from_static("5"));
        assert_eq!(names(request_hop_by_hop(&h, &h)), ["connection"]);
        // Towards HTTP/2, `Connection` is already out of the head: the client's still says.
        let mut client = HeaderMap::new();
        client.insert("connection", HeaderValue::from_static("close, X-Hop"));
        let mut up = HeaderMap::new();
        up.insert("x-hop", HeaderValue::from_static("1"));
        up.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(names(request_hop_by_hop(&up, &client)), ["x-hop"]);
        assert!(request_hop_by_hop(&up, &up).is_empty());
    }

    #[test]
    fn a_websocket_upgrade_is_http_1_1_with_upgrade_websocket() {
        let req = |version, upgrade: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
            r.set_version(version);
            if let Some(u) = upgrade {
                r.insert_header("upgrade", u).unwrap();
            }
            r
        };
        use http::Version;
        assert!(websocket_upgrade(&req(Version::HTTP_11, Some("websocket"))));
        assert!(websocket_upgrade(&req(Version::HTTP_11, Some("WebSocket"))));
        assert!(!websocket_upgrade(&req(
            Version::HTTP_10,
            Some("websocket")
        )));
        assert!(!websocket_upgrade(&req(Version::HTTP_11, Some("h2c"))));
        assert!(!websocket_upgrade(&req(
            Version::HTTP_11,
            Some("websocket, h2c")
        )));
        assert!(!websocket_upgrade(&req(Version::HTTP_11, None)));
    }

    #[test]
    fn spoofable() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_user_id", "7"),
            ("x_fine_header", "1"),
            ("x-fine", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let names = |trusted| {
            let mut v: Vec<String> = spoofable_present(&h, trusted, |n| n == "x-user-id")
                .iter()
                .map(|n| n.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(false),
            ["forwarded", "x-real-ip", "x_forwarded_for", "x_user_id"]
        );
        assert_eq!(names(true), ["x_forwarded_for", "x_user_id"]);
    }

    #[test]
    fn addresses_as_display_writes_them() {
        let mut b = AddrBuf::new();
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "192.168.100.255",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "::",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(b.ip(ip), ip.to_string().as_bytes());
        }
        for a in [
            "127.0.0.1:9001",
            "10.20.30.40:65535",
            "[2001:db8::1]:443",
            "[fe80::1%4294967295]:65535",
        ] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(b.socket(a), a.to_string().as_bytes());
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let id = RequestId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(valid_request_id(id.as_str().as_bytes()));
        assert_eq!(id.header().as_bytes(), id.as_str().as_bytes());
        assert_ne!(RequestId::generate().as_str(), id.as_str());
        let client = HeaderValue::from_static("abc-123");
        assert_eq!(RequestId::for_request(Some(&client)).as_str(), "abc-123");
        let bad = HeaderValue::from_static("has space");
        let made = RequestId::for_request(Some(&bad));
        assert_eq!(made.as_str().len(), 32);
        assert!(RequestId::from_client(&bad).is_none());
        assert_eq!(RequestId::default().as_str(), "");
    }
}
