//! The model of one request, built once in `request_filter` and read by every later phase.
//!
//! Pingora keeps the request-target as the client sent it (`raw_path()`), and sends those bytes upstream
//! unless the URI is replaced. A gateway that routes on one reading of the target and forwards another
//! can be walked around: `GET admin/users` is routed as `/` but a lenient backend serves `/admin/users`.
//! So the target is classified here ([`parse_target`], RFC 9112 §3.2), the path is normalized
//! ([`crate::path`]), the host is checked ([`host`]), and the upstream target is always *built* from that
//! model ([`upstream_target`]), never copied from the raw bytes.
//!
//! Accepted forms: origin-form (`/path?query`), absolute-form (`http://host/path`, whose authority
//! replaces `Host`, §3.2.2) and asterisk-form (`*`) for `OPTIONS` only. Anything else, including
//! authority-form (`CONNECT host:port`), a path without a leading `/`, another scheme, userinfo, a
//! fragment or a byte outside visible ASCII, is a `400 invalid_target`.

use http::header::HOST;
use http::{HeaderMap, Method, Version};

use crate::error::GatewayError;

/// Which form the request-target took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`
    Absolute,
    /// `*` (OPTIONS only): a question about the server, never forwarded.
    Asterisk,
}

/// A request-target split into the parts the gateway uses. Borrowed from the request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub form: Form,
    /// The path as sent (not yet normalized); `*` for asterisk-form.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The authority of an absolute-form target.
    pub authority: Option<&'a str>,
}

/// The query (after the first `?`, without it) of a request target that [`parse_target`] accepted:
/// for the phases after routing, which read it without classifying the target again. In every form
/// `parse_target` accepts, the query starts at the first `?` (an authority has none).
pub fn query_of(target: &[u8]) -> Option<&str> {
    split_query(std::str::from_utf8(target).ok()?).1
}

/// Check the request line of an HTTP/1 head as the client sent it (`head`, Pingora's raw header
/// bytes) for what the parsed target no longer shows: a fragment. `http::Uri` drops `#...` from an
/// origin-form target, so [`parse_target`] never sees it; a request-target has no fragment (RFC 9112
/// §3.2), and a backend might read one differently, so it is refused here, like every other byte
/// `parse_target` refuses.
pub fn check_sent_target(head: &[u8]) -> Result<(), GatewayError> {
    let line = memchr::memchr(b'\n', head).map_or(head, |lf| &head[..lf]);
    if memchr::memchr(b'#', line).is_some() {
        return Err(invalid_target("the request target has a fragment (`#`)"));
    }
    Ok(())
}

fn invalid_target(message: &'static str) -> GatewayError {
    GatewayError::new(400, "invalid_target", message)
}

fn invalid_host(message: &'static str) -> GatewayError {
    GatewayError::new(400, "invalid_host", message)
}

/// Visible ASCII (RFC 9112 has no room for anything else in a request-target) except `#`: a fragment is
/// never part of a request-target, and a backend might read one differently.
pub(crate) fn target_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b'#'
}

/// Split `path?query`.
fn split_query(pq: &str) -> (&str, Option<&str>) {
    // `memchr`, not `split_once('?')`: the generic char search costs several times as much.
    match memchr::memchr(b'?', pq.as_bytes()) {
        Some(i) => (&pq[..i], Some(&pq[i + 1..])),
        None => (pq, None),
    }
}

/// Classify the request-target `raw` of a request with `method` (RFC 9112 §3.2).
pub fn parse_target<'a>(raw: &'a [u8], method: &Method) -> Result<Target<'a>, GatewayError> {
    if raw.is_empty() || !raw.iter().all(|&b| target_byte(b)) {
        return Err(invalid_target(
            "the request target has bytes outside visible ASCII, a space or a fragment",
        ));
    }
    // Only visible ASCII is left, so this cannot fail.
    let s = std::str::from_utf8(raw).map_err(|_| invalid_target("not ASCII"))?;
    if s.starts_with('/') {
        let (path, query) = split_query(s);
        return Ok(Target {
            form: Form::Origin,
            path,
            query,
            authority: None,
        });
    }
    if s == "*" {
        if *method != Method::OPTIONS {
            return Err(invalid_target("`*` is a request target for OPTIONS only"));
        }
        return Ok(Target {
            form: Form::Asterisk,
            path: "*",
            query: None,
            authority: None,
        });
    }
    let rest = strip_prefix_ignore_case(s, "http://")
        .or_else(|| strip_prefix_ignore_case(s, "https://"))
        .ok_or_else(|| {
            invalid_target("the request target must be a path starting with `/`, or an http(s) URL")
        })?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    if authority.is_empty() {
        return Err(invalid_target("the request URL has no host"));
    }
    if authority.contains('@') {
        return Err(invalid_target(
            "user information in the request URL is not allowed",
        ));
    }
    let (path, query) = split_query(pq);
    Ok(Target {
        form: Form::Absolute,
        // `http://host` and `http://host?q` have the path `/` (RFC 9112 §3.2.2, RFC 3986 §6.2.3).
        path: if path.is_empty() { "/" } else { path },
        query,
        authority: Some(authority),
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Is `h` a valid `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2)? A reg-name of letters, digits and
/// `-._~` (no percent-escapes or sub-delims: no real host name has them, and they read differently in
/// different places), an IPv4 address, or an IPv6 literal in brackets; a port of 1 to 5 digits.
pub fn valid_host(h: &str) -> bool {
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => ("v6", None),
            p => match p.strip_prefix(':') {
                Some(p) => ("v6", Some(p)),
                None => return false,
            },
        }
    } else {
        // `memrchr`, not `rsplit_once(':')`: the generic char search was 150 instructions a call.
        match memchr::memrchr(b':', h.as_bytes()) {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    name_ok && port_ok
}

/// The host the request is for: an absolute-form target's authority (which replaces `Host`, RFC 9112
/// §3.2.2), else HTTP/2's `:authority`, else the one `Host` header. HTTP/1.1 requires exactly one
/// `Host` (§3.2: "a server MUST respond with a 400 to any HTTP/1.1 request message that lacks a Host
/// header field and to any request message that contains more than one Host header field line or a
/// Host header field with an invalid field value"); HTTP/1.0 may have none.
pub fn host<'a>(
    target: &Target<'a>,
    uri_authority: Option<&'a str>,
    headers: &'a HeaderMap,
    version: Version,
) -> Result<Option<&'a str>, GatewayError> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(invalid_host("the request has more than one Host header"));
    }
    let header = match first {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|h| valid_host(h))
                .ok_or_else(|| invalid_host("the Host header is not a valid host[:port]"))?,
        ),
        None => None,
    };
    if let Some(a) = target.authority {
        if !valid_host(a) {
            return Err(invalid_host(
                "the request URL's host is not a valid host[:port]",
            ));
        }
        return Ok(Some(a));
    }
    if version == Version::HTTP_2 {
        if let Some(a) = uri_authority {
            if !valid_host(a) {
                return Err(invalid_host(":authority is not a valid host[:port]"));
            }
            return Ok(Some(a));
        }
        return Ok(header);
    }
    if header.is_none() && version == Version::HTTP_11 {
        return Err(invalid_host("an HTTP/1.1 request needs a Host header"));
    }
    Ok(header)
}

fn bad_framing(message: &'static str) -> GatewayError {
    GatewayError::new(400, "invalid_framing", message)
}

/// The request announces a body: chunked, or a `Content-Length` other than 0 (framing already checked
/// by [`check_framing`]).
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| {
                v.as_bytes()
                    .iter()
                    .any(|&b| b != b'0' && b != b',' && b != b' ')
            })
}

/// Message framing of a request head (RFC 9112 §6): the only transfer coding a request may name is
/// `chunked`, once and last; `Transfer-Encoding` with `Content-Length` is refused (a classic
/// smuggling vector: a front end and a back end may each believe a different one, §6.1 says such a
/// message "ought to be handled as an error", and Envoy refuses it by default); several
/// `Content-Length` values must agree. The connection is closed after the 400.
pub fn check_framing(headers: &HeaderMap) -> Result<(), GatewayError> {
    use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
    let mut codings = 0usize;
    let mut chunked = 0usize;
    for v in headers.get_all(TRANSFER_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| bad_framing("Transfer-Encoding is not ASCII"))?;
        for coding in v.split(',').map(str::trim) {
            codings += 1;
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                return Err(bad_framing(
                    "the only transfer coding accepted in a request is `chunked`",
                ));
            }
        }
    }
    if chunked > 1 {
        return Err(bad_framing(
            "Transfer-Encoding names `chunked` more than once",
        ));
    }
    let mut length: Option<&[u8]> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(bad_framing("Content-Length is not a number"));
            }
            if length.is_some_and(|l| l != part) {
                return Err(bad_framing(
                    "the request has different Content-Length values",
                ));
            }
            length = Some(part);
        }
    }
    if codings > 0 && length.is_some() {
        return Err(bad_framing(
            "the request has both Transfer-Encoding and Content-Length",
        ));
    }
    Ok(())
}

/// The options of a request's `Connection` headers (RFC 9110 §7.6.1), each a header the gateway will
/// remove before the request goes upstream ([`crate::headers::request_hop_by_hop`]). Refused, as
/// Pingora's default upstream policy refuses them (pingora-proxy 0.9.1 `ConnectionNominations::parse`,
/// after Envoy; the gateway does that policy's work itself, see `Upstream::peer`): a tenth option (a
/// bound on the work a request can ask for), a pseudo-header (`:authority`), an option that is not a
/// token (`"X-Forwarded-For"`, which a lenient hop could read as the name), and `Host` or
/// `X-Forwarded-For/-Host/-Proto`, which a client must not take away from what the upstream is told.
/// Checked before routing: such a request is never authenticated, counted against a limit or
/// forwarded. `Connection: keep-alive` or `close`, nearly every HTTP/1 request's, is one short token.
pub fn check_connection(headers: &HeaderMap) -> Result<(), GatewayError> {
    /// Pingora's `MAX_CONNECTION_NOMINATIONS`: the tenth option is refused.
    const MAX_OPTIONS: usize = 10;
    const PROTECTED: [&[u8]; 4] = [
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    ];
    let refuse = |message| Err(GatewayError::new(400, "invalid_connection", message));
    let mut options = 0usize;
    for v in headers.get_all(http::header::CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if t.is_empty() {
                continue;
            }
            options += 1;
            if options >= MAX_OPTIONS {
                return refuse("the request's Connection header names more than 9 options");
            }
            if t[0] == b':' {
                return refuse("the request's Connection header names a pseudo-header");
            }
            // `HeaderName` takes every token up to 65,535 bytes.
            if !t.iter().all(|&b| is_tchar(b)) || t.len() > usize::from(u16::MAX) {
                return refuse("an option of the request's Connection header is not a token");
            }
            if PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p)) {
                return refuse(
                    "the request's Connection header names Host or an X-Forwarded-* header",
                );
            }
        }
    }
    Ok(())
}

/// A `tchar` (RFC 9110 §5.6.2): what a token, a method or a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Percent-encode `value` for the position it is put in by a rewrite: a path segment keeps what a
/// segment may hold (`pchar`, RFC 3986 §3.3, and `/`: a regex capture may span segments of the
/// normalized path) and encodes the rest (`?`, `#`, space...); a query value
/// also encodes `&`, `=`, `+` and `;`, which would start a new parameter or mean a space. Existing
/// percent-escapes (the normalized path keeps them) are kept as they are.
pub fn encode_into(out: &mut String, value: &str, in_query: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        let keep = escape
            || b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b','
                    | b':'
                    | b'@'
                    | b'/'
            )
            || (!in_query && matches!(b, b'&' | b'=' | b'+' | b';'));
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
        i += 1;
    }
}

/// The request-target sent upstream: `path` (already in its upstream form), then the client's `query`
/// without the parameters in `remove` (credentials the chain consumed), joined with `&` when `path`
/// carries a query of its own (a rewrite's).
pub fn upstream_target(path: &str, query: Option<&str>, remove: &[String]) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(path);
    let Some(q) = query else { return out };
    let mut sep = if path.contains('?') { '&' } else { '?' };
    for pair in q.split('&') {
        let name = pair.split_once('=').map_or(pair, |(k, _)| k);
        if pair.is_empty() || remove.iter().any(|r| r == name) {
            continue;
        }
        out.push(sep);
        out.push_str(pair);
        sep = '&';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_pingora_refuses_are_refused() {
        let check = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    http::header::CONNECTION,
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            check_connection(&h).map_err(|e| (e.status, e.code))
        };
        for ok in [
            &[&b"keep-alive"[..]][..],
            &[b"close"],
            &[b"Upgrade"],
            &[b"close, X-Secret, te"],
            &[b" , ,keep-alive,, "],
            &[b"a,b,c,d,e", b"f,g,h,i"],
            &[b"X-Forwarded-Port, Forwarded, x-forwarded-hostname"],
            &[b"!#$%&'*+-.^_`|~09AZaz"],
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            &[&b"a,b,c,d,e,f,g,h,i,j"[..]][..],
            &[b"a,b,c,d,e", b"f,g,h,i,j"],
            &[b":authority"],
            &[b"close, :path"],
            &[b"\"X-Forwarded-For\""],
            &[b"x forwarded"],
            &[b"x/y"],
            &[b"caf\xc3\xa9"],
            &[b"Host"],
            &[b"close, host"],
            &[b"X-Forwarded-For"],
            &[b"keep-alive", b"x-forwarded-HOST"],
            &[b"X-Forwarded-Proto"],
        ] {
            assert_eq!(check(bad), Err((400, "invalid_connection")), "{bad:?}");
        }
        assert_eq!(check(&[]), Ok(()));
    }

    #[test]
    fn a_fragment_in_the_sent_request_line_is_refused() {
        assert!(check_sent_target(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\n\r\n").is_ok());
        // A `#` in a header value is not the target's.
        assert!(check_sent_target(b"GET /a HTTP/1.1\r\nX-Tag: #1\r\n\r\n").is_ok());
        for head in [
            &b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET /a?b=1#x HTTP/1.1\r\n\r\n",
            b"GET http://h/a# HTTP/1.1\n\n",
        ] {
            let e = check_sent_target(head).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_target"));
        }
    }

    #[test]
    fn the_query_after_routing_is_the_one_parse_target_found() {
        for (raw, query) in [
            ("/a?b=1&c", Some("b=1&c")),
            ("/a?", Some("")),
            ("/a", None),
            ("/a?b?c", Some("b?c")),
            ("http://h.example/p?x=%20", Some("x=%20")),
            ("http://h.example?x", Some("x")),
        ] {
            assert_eq!(query_of(raw.as_bytes()), query, "{raw}");
            let parsed = parse_target(raw.as_bytes(), &Method::GET).unwrap();
            assert_eq!(parsed.query, query, "{raw}");
        }
    }

    fn t(raw: &str) -> Result<Target<'_>, &'static str> {
        parse_target(raw.as_bytes(), &Method::GET).map_err(|e| e.code)
    }

    #[test]
    fn target_forms() {
        let o = t("/a/b?x=1").unwrap();
        assert_eq!(
            (o.form, o.path, o.query),
            (Form::Origin, "/a/b", Some("x=1"))
        );
        let a = t("http://api.example.com:8080/a?x").unwrap();
        assert_eq!(
            (a.form, a.authority, a.path, a.query),
            (
                Form::Absolute,
                Some("api.example.com:8080"),
                "/a",
                Some("x")
            )
        );
        assert_eq!(t("HTTPS://h").unwrap().path, "/");
        assert_eq!(t("http://h?q=1").unwrap().path, "/");
        let star = parse_target(b"*", &Method::OPTIONS).unwrap();
        assert_eq!(star.form, Form::Asterisk);
        for bad in [
            "*",
            "admin/users",
            "x:/admin/users",
            "ftp://h/a",
            "h:80",
            "http:///a",
            "http://u@h/a",
            "/a#frag",
            "/caf\u{e9}",
            "",
        ] {
            assert_eq!(t(bad), Err("invalid_target"), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for ok in [
            "a.example",
            "a.example:8080",
            "127.0.0.1",
            "[::1]",
            "[::1]:80",
            "x_y",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "", ":80", "a:b", "a:123456", "a b", "a/b", "[::1", "[zz]", "a@b", "a%2eb", "a:",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
        let origin = t("/").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            host(&origin, None, &h, Version::HTTP_11).unwrap_err().code,
            "invalid_host"
        );
        assert_eq!(host(&origin, None, &h, Version::HTTP_10).unwrap(), None);
        h.append(HOST, "a.example".parse().unwrap());
        assert_eq!(
            host(&origin, None, &h, Version::HTTP_11).unwrap(),
            Some("a.example")
        );
        let abs = t("http://b.example/x").unwrap();
        assert_eq!(
            host(&abs, None, &h, Version::HTTP_11).unwrap(),
            Some("b.example")
        );
        h.append(HOST, "c.example".parse().unwrap());
        assert!(host(&origin, None, &h, Version::HTTP_11).is_err());
    }

    #[test]
    fn framing() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, v.parse().unwrap());
            }
            check_framing(&m).map_err(|e| e.code)
        };
        assert!(h(&[]).is_ok());
        assert!(h(&[("transfer-encoding", "chunked")]).is_ok());
        assert!(h(&[("transfer-encoding", "Chunked")]).is_ok());
        assert!(h(&[("content-length", "5"), ("content-length", "5")]).is_ok());
        for bad in [
            &[("transfer-encoding", "chunked, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "6")],
            &[("content-length", "5, 6")],
            &[("content-length", "-1")],
        ] {
            assert_eq!(h(bad), Err("invalid_framing"), "{bad:?}");
        }
    }

    #[test]
    fn encoding_by_position() {
        let mut s = String::new();
        encode_into(&mut s, "1&admin=true", true);
        assert_eq!(s, "1%26admin%3Dtrue");
        s.clear();
        encode_into(&mut s, "1&admin=true", false);
        assert_eq!(s, "1&admin=true");
        s.clear();
        encode_into(&mut s, "a b?c#d+%2F", true);
        assert_eq!(s, "a%20b%3Fc%23d%2B%2F");
    }

    #[test]
    fn upstream_targets() {
        assert_eq!(upstream_target("/a", None, &[]), "/a");
        assert_eq!(upstream_target("/a", Some("x=1"), &[]), "/a?x=1");
        assert_eq!(upstream_target("/a?q=2", Some("x=1"), &[]), "/a?q=2&x=1");
        let remove = ["api_key".to_string()];
        assert_eq!(
            upstream_target("/a", Some("api_key=s&x=1"), &remove),
            "/a?x=1"
        );
        assert_eq!(upstream_target("/a", Some("api_key=s"), &remove), "/a");
        assert_eq!(upstream_target("/a", Some(""), &[]), "/a");
    }
}
