//! `tollgate explain`: what the gateway would do with one request, worked out offline.
//!
//! The answer is built from the functions the proxy's `request_filter` and `upstream_request_filter`
//! call, in the same order ([`request::parse_target`], [`request::host`], [`request::check_framing`],
//! [`request::check_connection`], [`path::normalize`], [`Router::find`], [`Route::upstream_path`],
//! [`request::upstream_target`] with the chain's query removals), so explain cannot say one thing
//! while the proxy does another. What only the explanation needs (why close routes did not match:
//! [`Router::near`]; what each plugin would decide: [`crate::plugin::Plugin::explain`]) sits beside
//! them and never runs for a real request. Nothing here binds a socket, resolves a name, fetches a JWKS or counts a rate limit.
//!
//! The request-header limits (`server.limits`: URI, header count and size) are the proxy's own check
//! and are not repeated here.
//!
//! [`Router::find`]: crate::router::Router::find
//! [`Router::near`]: crate::router::Router::near
//! [`Route::upstream_path`]: crate::snapshot::Route::upstream_path

use std::net::IpAddr;

use http::{Method, Version};
use pingora_http::RequestHeader;
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::plugin::{announced_method, Chain, ExplainRequest, Phases, Verdict};
use crate::request::{self, Form};
use crate::router::{Found, Miss};
use crate::snapshot::{Route, Snapshot};
use crate::{path, upstream::Upstream};

/// The request to explain, as given on the command line or in a cases file.
#[derive(Debug, Clone)]
pub struct Ask {
    pub method: String,
    /// Origin-form (`/path?query`) or absolute-form (`http://host/path`).
    pub url: String,
    /// `Name: value` pairs, in order (repeats allowed).
    pub headers: Vec<(String, String)>,
    /// Assume a verified token with these claims (`--token-claims`).
    pub claims: Option<Map<String, Json>>,
    pub client_ip: IpAddr,
}

/// What the gateway would do; [`Explanation::text`] is the plain form, serde the `--json` one.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explanation {
    pub method: String,
    pub url: String,
    /// The normalized path (absent when the target was refused before normalizing).
    pub path: Option<String>,
    pub route: Option<String>,
    /// Route parameters captured by the match.
    pub params: Vec<(String, String)>,
    /// Routes whose path matched but that did not take the request, in match order.
    pub near: Vec<NearRoute>,
    /// The chain that ran: the route's, or the global one for a request no route took.
    pub plugins: Vec<Step>,
    /// The status the gateway answers with itself; `None` when the request goes upstream.
    pub status: Option<u16>,
    /// Why it answers (the error message, or the plugin's note).
    pub reason: Option<String>,
    /// Which plugin answered, if one did.
    pub answered_by: Option<String>,
    pub upstream: Option<UpstreamPlan>,
    /// The calls of a composition route (`name → upstream`, and the calls each waits for).
    pub compose: Vec<String>,
    /// Headers the plugins set on the request sent upstream (the gateway's own `X-Forwarded-*`,
    /// `X-Request-Id` and `Host` are not listed).
    pub upstream_headers: Vec<(String, String)>,
    /// Things assumed to answer offline (a default `Host`...).
    pub assumed: Vec<String>,
}

/// A route that looked close.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NearRoute {
    pub route: String,
    /// `host`, `method`, `header` or `shadowed`.
    pub why: &'static str,
    pub detail: String,
}

/// One plugin of the chain and what it would decide.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    pub plugin: &'static str,
    /// `None` when the plugin cannot say offline.
    pub verdict: Option<Verdict>,
}

/// Where a proxied request goes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UpstreamPlan {
    pub name: String,
    pub balance: String,
    /// As written, with weights.
    pub targets: Vec<(String, usize)>,
    /// The path the upstream receives (after strip_prefix or rewrite), without the client's query.
    pub path: String,
    /// What is tried again if a try fails, for this request's method (absent when nothing is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// The whole request-target sent upstream: the path and the query, minus removed parameters.
    pub target: String,
}

impl Explanation {
    fn new(ask: &Ask) -> Explanation {
        Explanation {
            method: ask.method.clone(),
            url: ask.url.clone(),
            path: None,
            route: None,
            params: Vec::new(),
            near: Vec::new(),
            plugins: Vec::new(),
            status: None,
            reason: None,
            answered_by: None,
            upstream: None,
            compose: Vec::new(),
            upstream_headers: Vec::new(),
            assumed: Vec::new(),
        }
    }

    fn answer(mut self, status: u16, reason: impl Into<String>) -> Explanation {
        self.status = Some(status);
        self.reason = Some(reason.into());
        self
    }
}

/// The request head as the proxy would receive it. `Err` for a request that cannot be written at
/// all (a bad method or header), which is the caller's mistake rather than the gateway's answer.
fn request_head(ask: &Ask, assumed: &mut Vec<String>) -> Result<RequestHeader, String> {
    let method = Method::from_bytes(ask.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", ask.method))?;
    let mut req = RequestHeader::build(method, ask.url.as_bytes(), None)
        .map_err(|e| format!("cannot build a request for `{}`: {e}", ask.url))?;
    for (n, v) in &ask.headers {
        let name = http::HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| format!("`{n}` is not a header name"))?;
        let value = http::HeaderValue::from_str(v.trim())
            .map_err(|_| format!("the value of header `{n}` is not valid"))?;
        req.append_header(name, value)
            .map_err(|e| format!("header `{n}`: {e}"))?;
    }
    // HTTP/1.1 requires a Host; an origin-form URL without one gets `localhost`, said so.
    if !req.headers.contains_key(http::header::HOST) && ask.url.starts_with('/') {
        req.insert_header(http::header::HOST, "localhost")
            .map_err(|e| format!("Host: {e}"))?;
        assumed.push("Host: localhost (no Host header given)".to_string());
    }
    req.set_version(Version::HTTP_11);
    Ok(req)
}

/// What each plugin of `chain` would decide, in order, until one answers. `only` limits it to
/// the plugins of a phase (the early phase, for a preflight offered to another route). Returns the
/// answering plugin and its verdict.
fn run_chain(
    chain: &Chain,
    only: Option<Phases>,
    base: &ExplainRequest<'_>,
    out: &mut Explanation,
) -> Option<(&'static str, Verdict)> {
    let mut claims = base.claims.cloned();
    let mut consumer: Option<String> = base.consumer.map(str::to_string);
    for p in chain.plugins() {
        if only.is_some_and(|ph| !p.phases().contains(ph)) {
            continue;
        }
        let req = ExplainRequest {
            req: base.req,
            client_ip: base.client_ip,
            path: base.path,
            route: base.route,
            claims: claims.as_ref(),
            consumer: consumer.as_deref(),
        };
        let verdict = p.explain(&req);
        if let Some(v) = &verdict {
            out.upstream_headers
                .extend(v.upstream_headers.iter().cloned());
            if v.claims.is_some() {
                claims.clone_from(&v.claims);
            }
            if v.consumer.is_some() {
                consumer.clone_from(&v.consumer);
            }
        }
        out.plugins.push(Step {
            plugin: p.name(),
            verdict: verdict.clone(),
        });
        if let Some(v) = verdict.filter(|v| v.answers.is_some()) {
            return Some((p.name(), v));
        }
    }
    None
}

/// The one place that reads what a route does with a request that passed its chain (proxy to an
/// upstream, or compose calls), so that a change to [`Route`]'s action touches explain here only.
fn route_action(route: &Route) -> Result<&Upstream, Vec<String>> {
    match route.composition() {
        Some(c) => Err(c
            .calls
            .iter()
            .map(|call| {
                let after: Vec<&str> = call
                    .deps
                    .iter()
                    .filter_map(|&d| c.calls.get(d).map(|x| x.name.as_str()))
                    .collect();
                if after.is_empty() {
                    format!("{} → {}", call.name, call.upstream.name)
                } else {
                    format!(
                        "{} → {} (after {})",
                        call.name,
                        call.upstream.name,
                        after.join(", ")
                    )
                }
            })
            .collect()),
        None => match route.upstream() {
            Some(u) => Ok(u),
            None => Err(Vec::new()),
        },
    }
}

/// The route's retry policy as it applies to a request with `method`.
fn retry_text(p: &crate::resilience::RetryPolicy, method: &Method) -> Option<String> {
    if p.attempts < 2 {
        return None;
    }
    let when = p.when.names();
    if when.is_empty() {
        return None;
    }
    let replayable = method.is_idempotent() || p.non_idempotent;
    let scope = if replayable {
        format!("on {}", when.join(", "))
    } else if when.iter().any(|w| w == "connect_failure") {
        format!("only on connect_failure ({method} is not idempotent: once sent, never again)")
    } else {
        return Some(format!(
            "none ({method} is not idempotent and the route does not opt in)"
        ));
    };
    let mut t = format!("up to {} tries {scope}", p.attempts);
    if let Some(total) = p.timeout {
        t.push_str(&format!(", within {total:?}"));
    }
    Some(t)
}

fn balance_label(u: &Upstream) -> String {
    let b = match u.balance {
        crate::config::raw::Balance::RoundRobin => "round_robin".to_string(),
        crate::config::raw::Balance::Weighted => "weighted".to_string(),
        crate::config::raw::Balance::ConsistentHash => "consistent_hash".to_string(),
        crate::config::raw::Balance::LeastRequest => "least_request".to_string(),
        crate::config::raw::Balance::Ewma => "ewma".to_string(),
    };
    match &u.hash_on {
        Some(crate::upstream::HashOn::ClientIp) => format!("{b} on client_ip"),
        Some(crate::upstream::HashOn::Header(h)) => format!("{b} on header {h}"),
        Some(crate::upstream::HashOn::Cookie(c)) => format!("{b} on cookie {c}"),
        None => b,
    }
}

fn miss_text(m: &Miss) -> (&'static str, String) {
    let methods = |ms: &[Method]| ms.iter().map(Method::as_str).collect::<Vec<_>>().join(",");
    match m {
        Miss::Host => ("host", "its host does not match".to_string()),
        Miss::Method(ms) => ("method", format!("it allows only {}", methods(ms))),
        Miss::Header(h) => ("header", format!("it needs header {h}")),
        Miss::Shadowed => (
            "shadowed",
            "it matches too, but the route chosen comes first in match order".to_string(),
        ),
    }
}

/// Explain `ask` against `snap`. `Err` only for a request that cannot be written (see
/// [`request_head`]); every answer of the gateway, 400s included, is an `Ok`.
pub fn explain<'r>(snap: &'r Snapshot, ask: &Ask) -> Result<Explanation, String> {
    let mut out = Explanation::new(ask);
    let req = request_head(ask, &mut out.assumed)?;
    // The proxy's `route`, step by step.
    let target = match request::parse_target(req.raw_path(), &req.method) {
        Ok(t) => t,
        Err(e) => return Ok(out.answer(e.status, e.message)),
    };
    let host = match request::host(
        &target,
        req.uri.authority().map(|a| a.as_str()),
        &req.headers,
        req.version,
    ) {
        Ok(h) => h,
        Err(e) => return Ok(out.answer(e.status, e.message)),
    };
    if let Err(e) = request::check_framing(&req.headers) {
        return Ok(out.answer(e.status, e.message));
    }
    if let Err(e) = request::check_connection(&req.headers) {
        return Ok(out.answer(e.status, e.message));
    }
    if target.form == Form::Asterisk {
        return Ok(out.answer(200, "`OPTIONS *` is answered by the gateway itself"));
    }
    let norm = match path::normalize(target.path) {
        Ok(p) => p,
        Err(e) => return Ok(out.answer(400, e.message())),
    };
    out.path = Some(norm.to_string());
    let base = |route: &'r str| ExplainRequest {
        req: &req,
        client_ip: ask.client_ip,
        path: &norm,
        route,
        claims: ask.claims.as_ref(),
        consumer: None,
    };
    // A preflight is first offered to the early phase of the route it asks about.
    if let Some(m) = announced_method(&req) {
        if let Found::Route(i, _) = snap.router.find(host, &m, &norm, &req.headers) {
            let r = &snap.routes[i];
            if r.chain.phases().contains(Phases::EARLY) {
                let req_for = base(&r.name);
                if let Some((by, v)) = run_chain(&r.chain, Some(Phases::EARLY), &req_for, &mut out)
                {
                    out.route = Some(r.name.clone());
                    out.answered_by = Some(by.to_string());
                    let note = format!("preflight offered to route {}: {}", r.name, v.note);
                    return Ok(out.answer(v.answers.unwrap_or(204), note));
                }
                out.plugins.clear();
                out.upstream_headers.clear();
            }
        }
    }
    let found = snap.router.find(host, &req.method, &norm, &req.headers);
    let chosen = match &found {
        Found::Route(i, _) => Some(*i),
        _ => None,
    };
    for (i, miss) in snap
        .router
        .near(host, &req.method, &norm, &req.headers, chosen)
    {
        let (why, detail) = miss_text(&miss);
        out.near.push(NearRoute {
            route: snap.routes[i].name.clone(),
            why,
            detail,
        });
    }
    let (i, params) = match found {
        Found::Route(i, params) => (i, params),
        unrouted => {
            // Unrouted requests run the global chain (limits, IP rules) before their 404/405.
            if let Some((by, v)) = run_chain(&snap.global, None, &base(""), &mut out) {
                out.answered_by = Some(by.to_string());
                return Ok(out.answer(v.answers.unwrap_or(200), v.note));
            }
            let (status, why) = match unrouted {
                Found::MethodNotAllowed(allow) => {
                    let list = allow
                        .iter()
                        .map(Method::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let e = crate::error::GatewayError::method_not_allowed(allow);
                    (e.status, format!("{} (Allow: {list})", e.message))
                }
                _ => {
                    let e = crate::error::GatewayError::not_found();
                    (e.status, e.message.into_owned())
                }
            };
            return Ok(out.answer(status, why));
        }
    };
    let route = &snap.routes[i];
    out.route = Some(route.name.clone());
    out.params = params.pairs(&norm);
    let req_for = base(&route.name);
    if let Some((by, v)) = run_chain(&route.chain, None, &req_for, &mut out) {
        out.answered_by = Some(by.to_string());
        return Ok(out.answer(v.answers.unwrap_or(200), v.note));
    }
    match route_action(route) {
        Ok(up) => {
            let up_path = route.upstream_path(&norm, &params);
            let target = request::upstream_target(
                &up_path,
                target.query,
                route.chain.query_params_removed(),
            );
            out.upstream = Some(UpstreamPlan {
                name: up.name.clone(),
                balance: balance_label(up),
                targets: up.target_specs(),
                path: up_path.split('?').next().unwrap_or("").to_string(),
                retry: retry_text(&route.retry, &req.method),
                target,
            });
        }
        Err(calls) => out.compose = calls,
    }
    Ok(out)
}

impl Explanation {
    /// The plain-text form: one fact a line, the plugin chain as a numbered list.
    pub fn text(&self) -> String {
        let mut s = format!("request:  {} {}\n", self.method, self.url);
        for a in &self.assumed {
            s.push_str(&format!("assumed:  {a}\n"));
        }
        match &self.path {
            Some(p) => s.push_str(&format!("path:     {p}\n")),
            None => s.push_str("path:     (refused before normalizing)\n"),
        }
        match &self.route {
            Some(r) => s.push_str(&format!("route:    {r}\n")),
            None if self.path.is_some() => s.push_str("route:    none\n"),
            None => {}
        }
        if !self.params.is_empty() {
            let p: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("params:   {}\n", p.join(" ")));
        }
        for n in &self.near {
            s.push_str(&format!(
                "near:     {} not taken ({}): {}\n",
                n.route, n.why, n.detail
            ));
        }
        if !self.plugins.is_empty() {
            s.push_str("plugins:\n");
            for (k, step) in self.plugins.iter().enumerate() {
                let (what, note) = match &step.verdict {
                    Some(v) => (
                        v.answers
                            .map_or("continue".to_string(), |st| format!("→ {st}")),
                        v.note.as_str(),
                    ),
                    None => ("?".to_string(), "cannot be explained offline"),
                };
                s.push_str(&format!(
                    "  {}. {:<16} {:<9} {note}\n",
                    k + 1,
                    step.plugin,
                    what
                ));
            }
        }
        if let Some(u) = &self.upstream {
            let targets: Vec<String> = u
                .targets
                .iter()
                .map(|(t, w)| {
                    if *w == 1 {
                        t.clone()
                    } else {
                        format!("{t} (weight {w})")
                    }
                })
                .collect();
            s.push_str(&format!(
                "upstream: {} ({}; {})\n",
                u.name,
                u.balance,
                targets.join(", ")
            ));
            s.push_str(&format!("sent as:  {} {}\n", self.method, u.target));
            if let Some(r) = &u.retry {
                s.push_str(&format!("retry:    {r}\n"));
            }
        }
        if !self.compose.is_empty() {
            s.push_str(&format!("compose:  {}\n", self.compose.join(", ")));
        }
        for (n, v) in &self.upstream_headers {
            s.push_str(&format!("header:   {n}: {v}\n"));
        }
        match (self.status, &self.upstream) {
            (Some(st), _) => {
                let by = self
                    .answered_by
                    .as_ref()
                    .map_or(String::new(), |p| format!(" by {p}"));
                s.push_str(&format!(
                    "answer:   {st}{by}: {}\n",
                    self.reason.as_deref().unwrap_or("")
                ));
            }
            (None, Some(u)) => s.push_str(&format!("answer:   proxied to {}\n", u.name)),
            (None, None) => s.push_str("answer:   composed by the gateway\n"),
        }
        s
    }
}
