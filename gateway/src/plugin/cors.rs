//! CORS: the gateway answers preflights itself and adds the CORS headers to every response of an allowed
//! origin (the upstream's and the gateway's own errors, so a browser can read a 401's body).
//!
//! Origins are matched exactly (`https://app.example.com`), by subdomain wildcard (`https://*.example.com`
//! matches `https://a.example.com` and `https://a.b.example.com`, not `https://example.com`), or `*`.
//! `*` with `allow_credentials: true` is refused at load time, as the CORS spec forbids it. A preflight
//! from an origin that is not allowed gets 403; a simple request from one is proxied without CORS
//! headers (the browser then blocks the page from reading it).
//!
//! Preflights are answered in the early phase: the gateway routes a preflight as the request it announces
//! and offers it to that route's early phase (see the `plugin` module doc), so the policy that answers is
//! the one of the route the real request will take.

use std::time::Duration;

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ORIGIN, VARY,
};
use http::{HeaderValue, Method};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;

use super::{
    BuildContext, BuildError, Decision, EarlyView, ExplainRequest, Phases, Plugin, PluginState,
    Reply, RequestView, Verdict,
};
use crate::config::units::HumanDuration;
use crate::error::GatewayError;

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default = "default_headers")]
    pub allow_headers: Vec<String>,
    #[serde(default = "default_expose")]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_headers() -> Vec<String> {
    [
        "authorization",
        "content-type",
        "idempotency-key",
        "x-request-id",
    ]
    .map(String::from)
    .to_vec()
}
fn default_expose() -> Vec<String> {
    ["x-request-id"].map(String::from).to_vec()
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

enum OriginRule {
    Any,
    Exact(String),
    /// `scheme://` and `.suffix[:port]`.
    Subdomain {
        scheme: String,
        suffix: String,
    },
}

pub struct Cors {
    origins: Vec<OriginRule>,
    /// `*` is among the origins and credentials are off: `Access-Control-Allow-Origin: *`.
    any_origin: bool,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    headers: Vec<String>,
    headers_value: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    pub fn build(cfg: CorsConfig, _ctx: &BuildContext) -> Result<Cors, BuildError> {
        let mut origins = Vec::new();
        if cfg.allow_origins.is_empty() {
            return Err(BuildError::at("allow_origins", "list at least one origin"));
        }
        for (i, o) in cfg.allow_origins.iter().enumerate() {
            let at = format!("allow_origins[{i}]");
            let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                if cfg.allow_credentials {
                    return Err(BuildError::at(
                        at,
                        "`*` cannot be used with `allow_credentials: true`; list the origins",
                    ));
                }
                origins.push(OriginRule::Any);
                continue;
            }
            let Some((scheme, host)) = o.split_once("://") else {
                return Err(BuildError::at(
                    at,
                    format!("`{o}` is not an origin like `https://app.example.com`"),
                ));
            };
            if host.is_empty() || host.contains('/') {
                return Err(BuildError::at(
                    at,
                    format!("`{o}` is not an origin like `https://app.example.com`"),
                ));
            }
            if let Some(rest) = host.strip_prefix("*.") {
                if rest.is_empty() || rest.contains('*') {
                    return Err(BuildError::at(
                        at,
                        format!("`{o}`: a wildcard is `https://*.example.com`"),
                    ));
                }
                origins.push(OriginRule::Subdomain {
                    scheme: format!("{scheme}://"),
                    suffix: format!(".{rest}"),
                });
            } else if host.contains('*') {
                return Err(BuildError::at(
                    at,
                    format!("`{o}`: a wildcard is only allowed as the first label"),
                ));
            } else {
                origins.push(OriginRule::Exact(o));
            }
        }
        let mut methods = Vec::new();
        for (i, m) in cfg.allow_methods.iter().enumerate() {
            let up = m.to_ascii_uppercase();
            methods.push(Method::from_bytes(up.as_bytes()).map_err(|_| {
                BuildError::at(
                    format!("allow_methods[{i}]"),
                    format!("`{m}` is not a method"),
                )
            })?);
        }
        let list = |v: &[String]| v.join(", ");
        let headers: Vec<String> = cfg
            .allow_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for (i, h) in headers.iter().enumerate() {
            super::header_name(h, &format!("allow_headers[{i}]"))?;
        }
        let expose = if cfg.expose_headers.is_empty() {
            None
        } else {
            Some(super::header_value(
                &list(&cfg.expose_headers),
                "expose_headers",
            )?)
        };
        let any_origin =
            !cfg.allow_credentials && origins.iter().any(|r| matches!(r, OriginRule::Any));
        Ok(Cors {
            any_origin,
            origins,
            methods_value: super::header_value(
                &methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                "allow_methods",
            )?,
            methods,
            headers_value: super::header_value(&list(&headers), "allow_headers")?,
            headers,
            expose,
            credentials: cfg.allow_credentials,
            max_age: super::header_value(&cfg.max_age.0.as_secs().to_string(), "max_age")?,
        })
    }

    /// Is `origin` allowed? Compared without regard to ASCII case, as the rules were lowercased.
    fn allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|r| match r {
            OriginRule::Any => true,
            OriginRule::Exact(e) => e.eq_ignore_ascii_case(origin),
            OriginRule::Subdomain { scheme, suffix } => origin
                .get(..scheme.len())
                .filter(|s| s.eq_ignore_ascii_case(scheme))
                .and_then(|_| origin.get(scheme.len()..))
                .is_some_and(|host| {
                    host.len() > suffix.len()
                        && host
                            .get(host.len() - suffix.len()..)
                            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
                        && !host[..host.len() - suffix.len()].contains(['/', ':'])
                }),
        })
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

/// Set on a request whose preflight this plugin answered, so its response phase leaves that answer as
/// it is. Shared by every `cors` of the chain: a global and a route `cors` answer a preflight once.
struct AnsweredPreflight;

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn auth_failure_reasons(&self) -> &'static [&'static str] {
        &["cors_origin_not_allowed", "cors_request_not_allowed"]
    }

    fn phases(&self) -> Phases {
        Phases::EARLY | Phases::RESPONSE
    }

    /// A preflight is answered by running the early phase itself (it never awaits, and keeps no
    /// state beyond the request), so explain says exactly what the proxy would answer.
    fn explain(&self, req: &ExplainRequest<'_>) -> Option<Verdict> {
        let Some(origin) = req.req.headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
            return Some(Verdict::pass("no Origin: not a cross-origin request"));
        };
        let Some(method) = super::announced_method(req.req) else {
            return Some(Verdict::pass(if self.allowed(origin) {
                format!("origin {origin} allowed: CORS headers on the answer")
            } else {
                format!("origin {origin} not allowed: no CORS headers")
            }));
        };
        let view = EarlyView {
            request: RequestView {
                req: req.req,
                client_ip: req.client_ip,
                path: req.path,
                route: req.route,
                request_id: "explain",
            },
            routed_as: Some(&method),
        };
        let mut state = PluginState::default();
        Some(
            match futures::executor::block_on(self.early(&view, &mut state)) {
                Decision::Reply(r) => Verdict::answer(
                    r.status,
                    format!("preflight for {method} from {origin} → {}", r.status),
                ),
                Decision::Deny(e) => Verdict::answer(
                    e.status,
                    format!(
                        "preflight for {method} from {origin}: {} → {}",
                        e.message, e.status
                    ),
                ),
                Decision::Continue => Verdict::pass("preflight not answered here"),
            },
        )
    }

    /// Answers a preflight offered to this route; any other request goes on.
    async fn early(&self, req: &EarlyView<'_>, state: &mut PluginState) -> Decision {
        let Some(method) = req.routed_as else {
            return Decision::Continue;
        };
        state.set_slot(AnsweredPreflight);
        let h = &req.req.headers;
        let origin = h
            .get(ORIGIN)
            .cloned()
            .unwrap_or(HeaderValue::from_static("null"));
        if !self.allowed(origin.to_str().unwrap_or("")) {
            return Decision::Deny(GatewayError::new(
                403,
                "cors_origin_not_allowed",
                "this origin may not call this API",
            ));
        }
        let method_ok = self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET));
        let headers_ok = h
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .all(|x| self.headers.iter().any(|h| h.eq_ignore_ascii_case(x)))
            })
            .unwrap_or(true);
        if !method_ok || !headers_ok {
            return Decision::Deny(GatewayError::new(
                403,
                "cors_request_not_allowed",
                "this method or header is not allowed for cross-origin requests",
            ));
        }
        let mut headers = vec![
            (
                ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin_value(&origin),
            ),
            (ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone()),
            (ACCESS_CONTROL_ALLOW_HEADERS, self.headers_value.clone()),
            (ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
            (
                VARY,
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            ),
        ];
        if self.credentials {
            headers.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        Decision::Reply(Reply {
            status: 204,
            headers,
            body: bytes::Bytes::new(),
        })
    }

    fn response(&self, resp: &mut ResponseHeader, req: &RequestHeader, state: &PluginState) {
        if state.slot::<AnsweredPreflight>().is_some() {
            return;
        }
        let _ = resp.append_header(VARY, "Origin");
        let Some(origin) = req.headers.get(ORIGIN) else {
            return;
        };
        if !self.allowed(origin.to_str().unwrap_or("")) {
            return;
        }
        let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if self.credentials {
            let _ = resp.insert_header(ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        if let Some(e) = &self.expose {
            let _ = resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Result<Cors, BuildError> {
        Cors::build(
            serde_yaml_ng::from_str(yaml).unwrap(),
            &BuildContext::detached(&crate::plugin::Providers::default()),
        )
    }

    #[test]
    fn origin_rules() {
        let c = cors("{ allow_origins: [\"https://app.example.com\", \"https://*.shop.io\"] }")
            .unwrap();
        assert!(c.allowed("https://app.example.com"));
        assert!(c.allowed("HTTPS://APP.EXAMPLE.COM"));
        assert!(!c.allowed("http://app.example.com"));
        assert!(!c.allowed("https://app.example.com.evil.io"));
        assert!(c.allowed("https://a.shop.io"));
        assert!(c.allowed("https://a.b.shop.io"));
        assert!(!c.allowed("https://shop.io"));
        assert!(!c.allowed("https://evilshop.io"));
        assert!(!c.allowed("https://a.shop.io:8443"));
        assert!(cors("{ allow_origins: [\"*\"], allow_credentials: true }").is_err());
        assert!(cors("{ allow_origins: [\"app.example.com\"] }").is_err());
    }
}
