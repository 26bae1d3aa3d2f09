//! gRPC over the gateway: telling a gRPC request, answering one in gRPC's terms, and its deadline.
//!
//! A gRPC client reads the outcome of a call from the `grpc-status` trailer, not from the HTTP status
//! (which is 200 for every call that reached a server, gRPC over HTTP/2, "Responses"). So an answer the
//! gateway makes itself to a gRPC request is a *Trailers-Only* response: `200`, `content-type:
//! application/grpc`, `grpc-status` and `grpc-message` in the one header block, no body; clients map
//! it like any server's answer. The codes follow gRPC's own HTTP mapping ("HTTP to gRPC Status Code
//! Mapping" in grpc/doc/http-grpc-status-mapping.md), except that a gateway's `429` is
//! `RESOURCE_EXHAUSTED` (a quota ran out) rather than `UNAVAILABLE`, and a `504` is
//! `DEADLINE_EXCEEDED`.
//!
//! `grpc-timeout` (gRPC over HTTP/2, "Requests": up to 8 digits and a unit `H M S m u n`) bounds the
//! gateway's wait for the upstream's response head like `retry.timeout` does, the shorter of the two
//! winning; the upstream is told the time left.

use std::time::Duration;

use http::HeaderValue;
use pingora_http::RequestHeader;

/// `content-type` of gRPC (`application/grpc`, `application/grpc+proto`, ...; not gRPC-Web's
/// `application/grpc-web`, which browsers read as HTTP).
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+') | Some(b';'))
        })
}

/// The gRPC status code of an answer the gateway makes with HTTP status `status`.
pub fn status_for(status: u16) -> u8 {
    match status {
        400 => 13, // INTERNAL (gRPC's mapping: a malformed request is the client library's fault)
        401 => 16, // UNAUTHENTICATED
        403 => 7,  // PERMISSION_DENIED
        404 | 405 => 12, // UNIMPLEMENTED
        408 | 504 => 4, // DEADLINE_EXCEEDED
        413 | 429 => 8, // RESOURCE_EXHAUSTED
        499 => 1,  // CANCELLED
        500 => 13, // INTERNAL
        502 | 503 => 14, // UNAVAILABLE
        _ => 2,    // UNKNOWN
    }
}

/// `grpc-message`: the text percent-encoded where gRPC requires it (bytes outside printable ASCII,
/// and `%`).
pub fn message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of a `grpc-timeout` header, or `None` when it is not one (then it is ignored, as gRPC
/// servers do).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `d` as a `grpc-timeout` value, in milliseconds (at least 1).
pub fn format_timeout(d: Duration) -> String {
    format!("{}m", d.as_millis().clamp(1, 99_999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ct: &str) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Method", None).unwrap();
        r.insert_header("content-type", ct).unwrap();
        r
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&req("application/grpc")));
        assert!(is_grpc(&req("application/grpc+proto")));
        assert!(is_grpc(&req("Application/GRPC; charset=x")));
        assert!(!is_grpc(&req("application/grpc-web")));
        assert!(!is_grpc(&req("application/json")));
        assert!(!is_grpc(&RequestHeader::build("GET", b"/", None).unwrap()));
    }

    #[test]
    fn statuses_map_to_grpc_codes() {
        for (http, grpc) in [
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 8),
            (503, 14),
            (504, 4),
            (502, 14),
        ] {
            assert_eq!(status_for(http), grpc, "{http}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message("no route: 100% ok"), "no route: 100%25 ok");
        assert_eq!(message("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn timeouts_parse_by_the_spec() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"5000u"), Some(Duration::from_millis(5)));
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"123456789m",
            b"1x",
            b"-1S",
            b"1.5S",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(format_timeout(Duration::from_micros(10)), "1m");
        assert_eq!(format_timeout(Duration::from_millis(2500)), "2500m");
    }
}
