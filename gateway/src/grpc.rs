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

/// A `grpc-status` value (0 to 16; anything else is not one).
pub fn parse_status(v: &[u8]) -> Option<u8> {
    let n: u8 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    (n <= 16).then_some(n)
}

/// The `code` label of `tollgate_grpc_responses_total`: the status's name.
pub fn code_label(code: u8) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
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

/// The active health check of `health_check: { kind: grpc }`: `grpc.health.v1.Health/Check` for
/// `service` on each target, over HTTP/2 (h2 by ALPN, or h2c); healthy when the call succeeds
/// (`grpc-status: 0`) and the answer says `SERVING`. Each check opens its connection and closes it.
pub struct HealthCheck {
    /// Address, TLS, timeouts and HTTP/2 ALPN; the address is set per target.
    pub peer: pingora_core::upstreams::peer::HttpPeer,
    pub connector: pingora_core::connectors::http::Connector,
    /// The `:authority` sent.
    pub authority: String,
    /// The service asked about (`""`: the server as a whole).
    pub service: String,
    pub healthy: usize,
    pub unhealthy: usize,
}

/// `HealthCheckResponse.status` of `grpc.health.v1` that means serving.
const SERVING: u64 = 1;

/// The request message of `Health/Check`, length-prefixed: `HealthCheckRequest { service }`
/// (field 1, a string; absent when empty).
fn check_request(service: &str) -> bytes::Bytes {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

/// The `status` of a length-prefixed `HealthCheckResponse` (field 1, a varint; absent = 0, UNKNOWN).
fn check_status(body: &[u8]) -> Option<u64> {
    let (prefix, msg) = body.split_at_checked(5)?;
    if prefix[0] != 0
        || u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize != msg.len()
    {
        return None;
    }
    let mut i = 0;
    let mut status = 0;
    while i < msg.len() {
        let (key, n) = varint(&msg[i..])?;
        i += n;
        match (key >> 3, key & 7) {
            (1, 0) => {
                let (v, n) = varint(&msg[i..])?;
                status = v;
                i += n;
            }
            // Any other field: skip it by its wire type.
            (_, 0) => i += varint(&msg[i..])?.1,
            (_, 2) => {
                let (len, n) = varint(&msg[i..])?;
                i = i.checked_add(n)?.checked_add(usize::try_from(len).ok()?)?;
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            _ => return None,
        }
    }
    (i == msg.len()).then_some(status)
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn check_failed(why: impl Into<String>) -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::Custom("grpc health check"),
        why.into(),
    )
}

#[async_trait::async_trait]
impl pingora_load_balancing::health_check::HealthCheck for HealthCheck {
    async fn check(&self, target: &pingora_load_balancing::Backend) -> pingora_error::Result<()> {
        use pingora_core::protocols::http::client::HttpSession;
        let mut peer = self.peer.clone();
        peer._address = target.addr.clone();
        let (session, _) = self.connector.get_http_session(&peer).await?;
        let HttpSession::H2(mut h2) = session else {
            return Err(check_failed("the target does not speak HTTP/2"));
        };
        let mut req = RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
        req.insert_header(http::header::TE, "trailers")?;
        req.insert_header(http::header::USER_AGENT, "tollgate-health-check")?;
        req.set_uri(
            http::Uri::builder()
                .scheme(if peer.is_tls() { "https" } else { "http" })
                .authority(self.authority.as_str())
                .path_and_query("/grpc.health.v1.Health/Check")
                .build()
                .map_err(|e| check_failed(format!("authority `{}`: {e}", self.authority)))?,
        );
        h2.read_timeout = peer.options.read_timeout;
        h2.write_request_header(Box::new(req), false)?;
        h2.write_request_body(check_request(&self.service), true)
            .await?;
        h2.read_response_header().await?;
        let head = h2
            .response_header()
            .ok_or_else(|| check_failed("no response head"))?;
        if head.status != 200 {
            return Err(check_failed(format!("HTTP status {}", head.status)));
        }
        // A Trailers-Only answer carries `grpc-status` in the head.
        let mut grpc_status = head
            .headers
            .get("grpc-status")
            .map(|v| v.as_bytes().to_vec());
        let mut body = Vec::new();
        while let Some(chunk) = h2.read_response_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > 64 * 1024 {
                return Err(check_failed("answer larger than 64 KiB"));
            }
        }
        if grpc_status.is_none() {
            grpc_status = h2
                .read_trailers()
                .await?
                .and_then(|t| t.get("grpc-status").map(|v| v.as_bytes().to_vec()));
        }
        match grpc_status.as_deref() {
            Some(b"0") => {}
            Some(s) => {
                return Err(check_failed(format!(
                    "grpc-status {}",
                    String::from_utf8_lossy(s)
                )))
            }
            None => return Err(check_failed("no grpc-status")),
        }
        match check_status(&body) {
            Some(SERVING) => Ok(()),
            Some(s) => Err(check_failed(format!("status {s} (not SERVING)"))),
            None => Err(check_failed("not a HealthCheckResponse")),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy
        } else {
            self.unhealthy
        }
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn health_messages_round_trip() {
        assert_eq!(&check_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &check_request("pkg.Svc")[..],
            b"\0\0\0\0\x09\x0a\x07pkg.Svc"
        );
        assert_eq!(check_status(&[0, 0, 0, 0, 2, 8, 1]), Some(1));
        assert_eq!(check_status(&[0, 0, 0, 0, 2, 8, 2]), Some(2));
        assert_eq!(check_status(&[0, 0, 0, 0, 0]), Some(0), "absent: UNKNOWN");
        // Unknown fields are skipped; a truncated or mislabelled frame is not an answer.
        assert_eq!(check_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 8, 1]), Some(1));
        assert_eq!(check_status(&[0, 0, 0, 0, 3, 8, 1]), None);
        assert_eq!(check_status(&[1, 0, 0, 0, 2, 8, 1]), None);
        assert_eq!(check_status(&[0, 0, 0]), None);
    }
}
