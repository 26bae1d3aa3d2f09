//! HTTP→HTTPS redirect and HSTS (`server.https_redirect`, `server.hsts`).
//!
//! A request counts as HTTPS when it came over one of the gateway's TLS listeners, or from a trusted
//! proxy (`server.trusted_proxies`) whose `X-Forwarded-Proto` says `https` (a balancer that ends TLS
//! in front): without the second, a gateway behind such a balancer would redirect its own HTTPS
//! traffic forever. Everything else is plain HTTP: with a redirect configured it is answered with one
//! before routing, auth or limits (nothing of it reaches an upstream), except ACME HTTP-01 challenges
//! (`/.well-known/acme-challenge/`, RFC 8555 §8.3), which must be served over plain HTTP by
//! definition. HSTS goes on answers over HTTPS only: a browser ignores it over HTTP, and RFC 6797 §7.2
//! forbids sending it there.
//!
//! The `Location` is built from the gateway's own model of the request: the host it validated
//! (`request::host`), its port replaced by the HTTPS one, and the request-target as it parsed it.

use http::HeaderValue;

/// Where plain-HTTP requests are redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The HTTPS port clients reach (left out of the URL when 443).
    pub port: u16,
    /// 301 or 308.
    pub status: u16,
}

/// The path prefix of ACME HTTP-01 challenges, which are never redirected.
const ACME: &str = "/.well-known/acme-challenge/";

/// Is a request with these `X-Forwarded-Proto` field lines (from a trusted proxy) an HTTPS one? The
/// value the nearest proxy added decides: the last item of the last line (a balancer that appends a
/// line of its own, as HAProxy's `add-header` does, must not be overruled by the client's line).
pub fn forwarded_https<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    lines
        .into_iter()
        .last()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// Is this request for an ACME HTTP-01 challenge, which is served over plain HTTP? Decided on the
/// **normalized** path, the one routing uses: on the path as sent,
/// `/.well-known/acme-challenge/../../api/users` would pass as a challenge and be routed as
/// `/api/users` over plain HTTP.
pub fn acme_challenge(normalized_path: &str) -> bool {
    normalized_path.starts_with(ACME)
}

impl Redirect {
    /// The `Location` for a plain request to `host` (`name[:port]`, already validated) with origin-form
    /// `path_and_query` (as sent); `None` when not in origin form (`OPTIONS *`). ACME challenges are
    /// the caller's to exempt ([`acme_challenge`], on the normalized path).
    pub fn location(&self, host: &str, path_and_query: &str) -> Option<String> {
        if !path_and_query.starts_with('/') {
            return None;
        }
        let name = strip_port(host);
        Some(if self.port == 443 {
            format!("https://{name}{path_and_query}")
        } else {
            format!("https://{name}:{}{path_and_query}", self.port)
        })
    }
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    host.split_once(':').map_or(host, |(name, _)| name)
}

/// The `Strict-Transport-Security` value for this policy (RFC 6797 §6.1).
pub fn hsts_value(max_age_secs: u64, include_subdomains: bool, preload: bool) -> HeaderValue {
    let mut v = format!("max-age={max_age_secs}");
    if include_subdomains {
        v.push_str("; includeSubDomains");
    }
    if preload {
        v.push_str("; preload");
    }
    // Digits, letters, `;`, `=` and spaces only.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
}

/// The least `max-age` the browsers' preload list takes (hstspreload.org: one year).
pub const PRELOAD_MIN_SECS: u64 = 31_536_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let r = Redirect {
            port: 443,
            status: 308,
        };
        assert_eq!(
            r.location("example.com", "/a?b=c").as_deref(),
            Some("https://example.com/a?b=c")
        );
        assert_eq!(
            r.location("example.com:8080", "/").as_deref(),
            Some("https://example.com/")
        );
        assert_eq!(
            r.location("[::1]:80", "/x").as_deref(),
            Some("https://[::1]/x")
        );
        let r = Redirect {
            port: 8443,
            status: 301,
        };
        assert_eq!(
            r.location("127.0.0.1:8080", "/p").as_deref(),
            Some("https://127.0.0.1:8443/p")
        );
        assert_eq!(
            r.location("[2001:db8::1]", "/").as_deref(),
            Some("https://[2001:db8::1]:8443/")
        );
        assert_eq!(r.location("h", "*"), None, "OPTIONS *");
        assert!(acme_challenge("/.well-known/acme-challenge/tok"));
        assert!(!acme_challenge("/.well-known/other"));
        assert!(!acme_challenge("/.well-known/acme-challenge"));
    }

    #[test]
    fn forwarded_proto() {
        let v = |s: &'static str| vec![HeaderValue::from_static(s)];
        assert!(forwarded_https(&v("https")));
        assert!(forwarded_https(&v("HTTPS")));
        assert!(forwarded_https(&v("http, https")));
        assert!(!forwarded_https(&v("https, http")));
        assert!(!forwarded_https(&v("http")));
        assert!(!forwarded_https(&[]));
        let two = [
            HeaderValue::from_static("https"),
            HeaderValue::from_static("http"),
        ];
        assert!(
            !forwarded_https(&two),
            "the client's line first, the balancer's last"
        );
    }

    #[test]
    fn hsts_values() {
        assert_eq!(hsts_value(300, false, false), "max-age=300");
        assert_eq!(
            hsts_value(PRELOAD_MIN_SECS, true, true),
            "max-age=31536000; includeSubDomains; preload"
        );
    }
}
