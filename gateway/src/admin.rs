//! The admin listener: its own address (default `127.0.0.1:9090`, never a public listener).
//!
//! - `GET /healthz`: the process is up;
//! - `GET /readyz`: a config is loaded and every upstream a route uses has a healthy target;
//! - `GET /metrics`: Prometheus text format;
//! - `GET /admin/routes`, `GET /admin/upstreams`, `GET /admin/config` (secrets redacted),
//!   `GET /admin/reload` (the last reload's outcome), `POST /admin/reload`,
//!   `GET /admin/config/versions` (the last configs applied or refused, with what each changed),
//!   `POST /admin/config/rollback` (`{"version": N}`: serve an applied version again);
//! - `GET /admin/dashboard`: a live page of routes, targets, limits and reloads ([`crate::dashboard`]),
//!   its data at `GET /admin/dashboard/data`.
//!
//! `/admin/*` needs `Authorization: Bearer <server.admin.token>`, compared in constant time; without a
//! configured token those endpoints are off (403). The one exception is the dashboard's page and its
//! script and style, which hold no data: a browser's navigation cannot send a bearer token, so they
//! are served once a token is configured, and the page sends the token on each data request. Health
//! and metrics stay open so that probes and scrapers need no secret; keep the admin address private.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::dashboard::{self, History};
use crate::metrics::TargetHealth;
use crate::reload::{Reloader, RollbackError};

/// Largest admin request body read.
const MAX_BODY: usize = 4096;

/// The version a rollback asks for: `{"version": N}` in the body, or `?version=N`.
fn rollback_target(query: Option<&str>, body: &[u8]) -> Result<u64, String> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
        return v
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| "body: give {\"version\": N}".to_string());
    }
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|p| p.strip_prefix("version="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "give the version: {\"version\": N} or ?version=N".to_string())
}
use crate::snapshot::{Action, Snapshot};

/// The admin app. The token is read from the current snapshot, so a reload can rotate it.
pub struct Admin {
    pub reloader: Arc<Reloader>,
    /// The dashboard's earlier samples, shared by every open page.
    pub dashboard: History,
}

impl Admin {
    /// The admin app of `reloader`'s gateway, with an empty dashboard history.
    pub fn new(reloader: Arc<Reloader>) -> Admin {
        Admin {
            reloader,
            dashboard: History::default(),
        }
    }
}

/// The headers of every dashboard answer: its assets and data are for this listener's own page only
/// (the CSP, no framing), never sniffed into another type, and never cached (the data changes every
/// second and is behind the token).
fn dashboard_headers(mut r: Response<Vec<u8>>) -> Response<Vec<u8>> {
    use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY};
    use http::header::{X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
    let h = r.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CSP),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// An embedded page asset.
fn static_asset(content_type: &'static str, body: &'static str) -> Response<Vec<u8>> {
    let body = body.as_bytes().to_vec();
    let r = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default();
    dashboard_headers(r)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    let mut r = json_response(
        status,
        &json!({"error": {"status": status.as_u16(), "code": code, "message": message}}),
    );
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
        );
    }
    r
}

/// Does the request carry the admin token? Constant time in the token's content and its length:
/// SHA-256 digests of both are compared (`ct_eq` on slices of different lengths returns at once,
/// which would tell the token's length).
pub fn authorized(expected: &str, header: Option<&[u8]>) -> bool {
    use sha2::{Digest, Sha256};
    let Some(h) = header else { return false };
    let Some(token) = h.strip_prefix(b"Bearer ") else {
        return false;
    };
    let (got, want) = (Sha256::digest(token), Sha256::digest(expected.as_bytes()));
    bool::from(got.as_slice().ct_eq(want.as_slice()))
}

/// `/metrics`: the gateway's metrics, with the health gauges taken from `snap`'s targets now.
fn metrics_text(reloader: &Reloader, snap: &Snapshot) -> String {
    let health: Vec<TargetHealth<'_>> = snap
        .upstreams
        .iter()
        .flat_map(|(name, up)| {
            let now = crate::resilience::now();
            up.targets()
                .into_iter()
                .map(move |(target, _, healthy)| TargetHealth {
                    upstream: name,
                    target,
                    healthy,
                    ejected: up.stats.ejected(&target, now),
                })
        })
        .collect();
    reloader
        .metrics()
        .render(health, snap.tls.as_ref().map(|c| c.not_after))
}

/// Every upstream that some route uses, with whether it has a healthy target.
pub fn readiness(snap: &Snapshot) -> (bool, Vec<Value>) {
    let mut used: Vec<&str> = snap
        .routes
        .iter()
        .flat_map(|r| match &r.action {
            Action::Proxy(u) => vec![u.name.as_str()],
            // A composition needs each upstream it calls (an optional call's too: its answer
            // would be partial).
            Action::Compose(c) => c.calls.iter().map(|c| c.upstream.name.as_str()).collect(),
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut ready = true;
    let list = used
        .into_iter()
        .map(|name| {
            let healthy = snap
                .upstreams
                .get(name)
                .is_some_and(|u| u.targets().iter().any(|(_, _, h)| *h));
            ready &= healthy;
            json!({"upstream": name, "healthy": healthy})
        })
        .collect();
    (ready, list)
}

/// In match order ([`Snapshot::routes_in_order`]), with each route's place in the file.
fn routes(snap: &Snapshot) -> Value {
    Value::Array(
        snap.routes_in_order()
            .map(|(r, headers)| {
                let (host, methods, path) = &r.describe;
                json!({"name": r.name, "index": r.index, "host": host, "methods": methods,
                       "path": path, "headers": headers, "upstream": r.upstream_label(),
                       "plugins": r.chain.names()})
            })
            .collect(),
    )
}

fn upstreams(snap: &Snapshot) -> Value {
    let mut out = serde_json::Map::new();
    for (name, u) in &snap.upstreams {
        let targets: Vec<Value> = u
            .targets()
            .into_iter()
            .map(|(addr, weight, healthy)| {
                let mut t = json!({"addr": addr.to_string(), "weight": weight, "healthy": healthy});
                if let Some(s) = u.stats.get(&addr) {
                    t["in_flight"] = json!(s.in_flight());
                    t["latency_ewma_ms"] = json!(s.ewma_ms());
                    t["ejected"] = match s.ejection() {
                        Some((left_ms, times, reason)) => json!({
                            "for_ms": left_ms, "times": times, "reason": reason,
                        }),
                        None => Value::Null,
                    };
                }
                t
            })
            .collect();
        let mut entry = json!({
            "balance": format!("{:?}", u.balance), "health_check": u.health.is_some(),
            "targets": targets,
            "retry": u.retry.describe(),
            "retry_budget": u.budget.is_some(),
            "outlier_detection": u.outlier.is_some(),
        });
        if let Some(b) = &u.breaker {
            entry["circuit_breaker"] = json!({
                "max_requests": b.config.max_requests, "in_flight": b.in_flight(),
                "max_pending": b.config.max_pending,
            });
        }
        out.insert(name.clone(), entry);
    }
    Value::Object(out)
}

/// Keys whose values are secrets, wherever they appear.
const SECRET_KEYS: &[&str] = &["secret", "token", "password", "sha256", "api_key", "url"];

fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                let k = k.to_ascii_lowercase();
                if SECRET_KEYS
                    .iter()
                    .any(|s| k == *s || k.ends_with(&format!("_{s}")))
                    && !val.is_object()
                    && !val.is_array()
                {
                    // URLs may carry credentials (redis://:pw@...); keep them only without userinfo.
                    let keep = k.ends_with("url") && val.as_str().is_some_and(|s| !s.contains('@'));
                    if !keep {
                        *val = Value::String("<redacted>".into());
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// A config's text as written (`${VAR}` references not expanded, so values from the environment never
/// show), with secret-looking values redacted anyway.
pub fn redacted_config(text: &str) -> Result<Value, String> {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let mut v = serde_json::to_value(yaml).map_err(|e| e.to_string())?;
    redact(&mut v);
    Ok(v)
}

impl Admin {
    async fn handle(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        auth: Option<&[u8]>,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        let snap = self.reloader.shared.load_full();
        match (method.as_str(), path) {
            ("GET" | "HEAD", "/healthz") => {
                return json_response(StatusCode::OK, &json!({"status": "ok"}))
            }
            ("GET" | "HEAD", "/readyz") => {
                let (ready, upstreams) = readiness(&snap);
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return json_response(status, &json!({"ready": ready, "upstreams": upstreams}));
            }
            ("GET" | "HEAD", "/metrics") => {
                let body = metrics_text(&self.reloader, &snap).into_bytes();
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default();
            }
            _ => {}
        }
        if !path.starts_with("/admin/") {
            return error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint");
        }
        let Some(token) = &snap.settings.admin_token else {
            return error(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "set server.admin.token to use /admin/*",
            );
        };
        // The page and its assets hold no data: a browser's navigation cannot send the token, so
        // they are served to anyone here, and the page sends the token on its data requests.
        if let Some((content_type, body)) = dashboard::asset(path) {
            if !matches!(method.as_str(), "GET" | "HEAD") {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "wrong method for this endpoint",
                );
            }
            return static_asset(content_type, body);
        }
        if !authorized(token, auth) {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a valid admin bearer token is required",
            );
        }
        match (method.as_str(), path) {
            ("GET", "/admin/routes") => json_response(StatusCode::OK, &routes(&snap)),
            ("GET", "/admin/dashboard/data") => {
                let data = dashboard::data(
                    &snap,
                    &self.reloader,
                    &self.dashboard,
                    std::time::Instant::now(),
                );
                dashboard_headers(json_response(StatusCode::OK, &data))
            }
            ("GET", "/admin/upstreams") => json_response(StatusCode::OK, &upstreams(&snap)),
            ("GET", "/admin/config") => {
                // The config being served, which after a refused reload or a rollback is not what
                // the files hold: the main file's, and each included file's.
                let source = self.reloader.served_source();
                let included: Result<Vec<Value>, String> = source
                    .included()
                    .map(|(p, t)| redacted_config(t).map(|v| json!({"path": p, "config": v})))
                    .collect();
                match (redacted_config(source.main().1), included) {
                    (Ok(v), Ok(included)) => {
                        let mut body = json!({"path": self.reloader.path,
                                "version": self.reloader.current_version(), "config": v});
                        if !included.is_empty() {
                            body["included"] = Value::Array(included);
                        }
                        json_response(StatusCode::OK, &body)
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        error(StatusCode::INTERNAL_SERVER_ERROR, "config_unreadable", &e)
                    }
                }
            }
            ("GET", "/admin/config/versions") => {
                let (versions, current) = self.reloader.versions();
                json_response(
                    StatusCode::OK,
                    &json!({"current": current, "versions": versions}),
                )
            }
            ("POST", "/admin/config/rollback") => match rollback_target(query, body) {
                Err(m) => error(StatusCode::BAD_REQUEST, "invalid_request", &m),
                Ok(v) => match self.reloader.rollback(v).await {
                    Ok(s) => json_response(
                        StatusCode::OK,
                        &json!({"ok": true, "version": self.reloader.current_version(),
                                "rolled_back_to": v, "warnings": s.warnings}),
                    ),
                    Err(RollbackError::Unknown(v)) => error(
                        StatusCode::NOT_FOUND,
                        "unknown_version",
                        &format!("no applied version {v} is kept (see /admin/config/versions)"),
                    ),
                    Err(RollbackError::Refused(s)) => {
                        json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!(s))
                    }
                },
            },
            ("GET", "/admin/reload") => {
                json_response(StatusCode::OK, &json!(self.reloader.status()))
            }
            ("POST", "/admin/reload") => {
                let s = self.reloader.reload("admin").await;
                let status = if s.ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                json_response(status, &json!(s))
            }
            (
                _,
                "/admin/routes"
                | "/admin/upstreams"
                | "/admin/config"
                | "/admin/reload"
                | "/admin/config/versions"
                | "/admin/config/rollback"
                | "/admin/dashboard/data",
            ) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "wrong method for this endpoint",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let query = req.uri.query().map(str::to_string);
        let auth = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        // Only a rollback takes a body, and a small one.
        let mut body = Vec::new();
        let mut too_large = false;
        if method == http::Method::POST {
            while let Ok(Some(chunk)) = session.read_request_body().await {
                if body.len() + chunk.len() > MAX_BODY {
                    too_large = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
        }
        let mut r = if too_large {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "admin request bodies are at most 4 KiB",
            )
        } else {
            self.handle(&method, &path, query.as_deref(), auth.as_deref(), &body)
                .await
        };
        // Route and upstream names from the config (team files too) are in these answers: never
        // sniffed into another type.
        r.headers_mut().insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::HeaderValue::from_static("nosniff"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check() {
        assert!(authorized("s3cret", Some(b"Bearer s3cret")));
        assert!(!authorized("s3cret", Some(b"Bearer s3cres")));
        assert!(!authorized("s3cret", Some(b"Bearer s3cret2")));
        assert!(!authorized("s3cret", Some(b"s3cret")));
        assert!(!authorized("s3cret", None));
    }

    #[test]
    fn redaction() {
        let mut v = json!({"auth": {"jwt": {"a": {"secret": "x", "jwks_url": "https://idp/jwks"}},
                           "api_keys": {"p": {"keys": [{"id": "acme", "sha256": "ab"}]}}},
                           "redis": {"url": "redis://:pw@127.0.0.1"}, "server": {"admin": {"token": "t"}}});
        redact(&mut v);
        assert_eq!(v["auth"]["jwt"]["a"]["secret"], "<redacted>");
        assert_eq!(v["auth"]["jwt"]["a"]["jwks_url"], "https://idp/jwks");
        assert_eq!(
            v["auth"]["api_keys"]["p"]["keys"][0]["sha256"],
            "<redacted>"
        );
        assert_eq!(v["auth"]["api_keys"]["p"]["keys"][0]["id"], "acme");
        assert_eq!(v["redis"]["url"], "<redacted>");
        assert_eq!(v["server"]["admin"]["token"], "<redacted>");
    }
}
