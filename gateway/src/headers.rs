//! Header hygiene: hop-by-hop headers, request ids.

use http::header::{HeaderMap, HeaderName, CONNECTION, UPGRADE};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1). `Transfer-Encoding` is
/// also hop-by-hop but Pingora re-frames bodies from it, so the proxy leaves it to Pingora.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Names listed in `Connection` headers (lower-case), minus `close`/`keep-alive`/`upgrade` tokens that
/// name no header of their own.
fn connection_tokens(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Is this a protocol upgrade (WebSocket) request? Those keep `Connection: upgrade` and `Upgrade`.
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The hop-by-hop headers present in `h`, to be removed. Returns nothing in the common case without
/// allocating. Upgrade requests keep `Connection` and `Upgrade` so that WebSockets work.
pub fn hop_by_hop_present(h: &HeaderMap) -> Vec<HeaderName> {
    let upgrade = is_upgrade(h);
    let mut out = Vec::new();
    for name in HOP_BY_HOP {
        if upgrade && (*name == "connection" || *name == "upgrade") {
            continue;
        }
        if h.contains_key(*name) {
            out.push(HeaderName::from_static(name));
        }
    }
    if h.contains_key(CONNECTION) {
        for t in connection_tokens(h) {
            if upgrade && t == UPGRADE {
                continue;
            }
            // Never let `Connection: host` or similar take away what the proxy itself needs.
            if t == http::header::HOST
                || t == http::header::CONTENT_LENGTH
                || t == http::header::TRANSFER_ENCODING
            {
                continue;
            }
            if !out.contains(&t) {
                out.push(t);
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
const GATEWAY_SET: &[&str] = &[
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
pub fn spoofable_present(
    h: &HeaderMap,
    trusted: bool,
    protected: impl Fn(&str) -> bool,
) -> Vec<HeaderName> {
    let mut out = Vec::new();
    if !trusted {
        for name in FROM_TRUSTED_ONLY {
            if h.contains_key(*name) {
                out.push(HeaderName::from_static(name));
            }
        }
    }
    for name in h.keys() {
        let n = name.as_str();
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

/// A new random request id: 32 lower-case hex characters (128 bits).
pub fn new_request_id() -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{:032x}", fastrand::u128(..));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
    fn upgrade_is_kept() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(hop_by_hop_present(&h).is_empty());
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
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(id.as_bytes()));
    }
}
