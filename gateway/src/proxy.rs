//! The Pingora `ProxyHttp` implementation. Phases stay thin: each one asks a small module for a decision
//! and acts on it. Every answer the gateway makes itself goes through [`Gateway::respond`].
//!
//! Phase by phase:
//! - `early_request_filter`: request id, trusted client IP, keep-alive timeout;
//! - `request_filter`: size limits, path normalization, routing (404/405/400/414/431 answered here), a
//!   CORS preflight offered to the route it asks about, the chain's early and request phases;
//! - `request_body_filter`: the chain's request-body phase;
//! - `upstream_peer`: the chain's pick, or a healthy target of the route's upstream (503 when none);
//! - `upstream_request_filter`: upstream path, hop-by-hop headers, `X-Forwarded-*`, `X-Request-Id`, Host;
//! - `response_filter`: hop-by-hop headers out, `X-Request-Id` in, the chain's upstream-response phase
//!   (which may replace the answer) and response phase;
//! - `response_body_filter`: a replacement's body instead of the upstream's, the chain's body phase;
//! - `fail_to_connect` / `fail_to_proxy`: retries on connect failure, 502/503/504 as JSON;
//! - `logging`: one access-log line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};

use crate::access_log::{self, AccessLog};
use crate::compose::{self, Composition};
use crate::error::{self, GatewayError};
use crate::forwarded;
use crate::headers::{self, RequestId};
use crate::metrics::{Metrics, RouteSeries};
use crate::otlp::Exporter;
use crate::path;
use crate::plugin::{
    self, Chain, Decision, EarlyView, HeaderEdit, Phases, Pick, PluginState, Reply, RequestView,
    UpstreamView,
};
use crate::request::{self, Form};
use crate::resilience::{Attempt, BreakerSlot, Failure};
use crate::router::{Found, Params};
use crate::snapshot::{Route, Snapshot};
use crate::trace::TraceContext;
use crate::upstream::Upstream;
use crate::upstream::{ip_key, HashOn};

// Header names as `&'static str` for Pingora's `insert_header` (gateway-made answers), and as parsed
// `HeaderName`s for lookups and for the edits of `headers::edit_request`/`edit_response`, which then
// skip parsing the name on every request.
const X_REQUEST_ID: &str = "x-request-id";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const TRACEPARENT: &str = "traceparent";
const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);
const X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_FOR);
const X_FORWARDED_PROTO_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_PROTO);
const X_FORWARDED_HOST_NAME: HeaderName = HeaderName::from_static(X_FORWARDED_HOST);
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A header value the gateway built that `http` refused (cannot happen for the values above).
fn header_error() -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value")
}

/// The proxy. Holds the current config snapshot; each request pins the one it started with. Counts in
/// the metrics and sends spans to the exporter it is given (the server's), never through a global.
pub struct Gateway {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    log: Option<Arc<AccessLog>>,
    metrics: Arc<Metrics>,
    exporter: Arc<Exporter>,
    /// The request counters of requests that matched no route (`route=""`).
    unrouted: RouteSeries,
    /// Connections of composition calls (Pingora's connector: same peers, TLS and reuse as proxying).
    connector: Arc<Connector>,
    /// `server.grpc_web` at start: the bridge module is set up only then (it costs an allocation and
    /// four filter calls per request), so turning it on takes a restart or an upgrade.
    grpc_web: bool,
    /// Answers being compressed now (bounded by `limits.max_compressing`).
    compressing: crate::compression::Gate,
}

impl Gateway {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        exporter: Arc<Exporter>,
    ) -> Self {
        let s = snapshot.load();
        let log = s.settings.access_log.then(|| {
            Arc::new(AccessLog::new(
                s.settings.access_log_path.clone(),
                metrics.access_log_dropped.clone(),
            ))
        });
        Gateway {
            snapshot,
            log,
            metrics,
            exporter,
            unrouted: RouteSeries::default(),
            connector: Arc::new(Connector::new(None)),
            grpc_web: s.settings.grpc_web,
            compressing: crate::compression::Gate::default(),
        }
    }

    /// The access log, when it is on (for the drain at shutdown, which has it written out).
    pub fn access_log(&self) -> Option<Arc<AccessLog>> {
        self.log.clone()
    }

    /// Accounts for requests Pingora's parser refused (see [`crate::conn::RefusedRequests`]).
    pub fn refused_requests(&self) -> Arc<dyn crate::conn::RefusedRequests> {
        Arc::new(Refused {
            log: self.log.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

/// Access-log line and request count of a request the parser refused: nothing of it is known but
/// the peer, so method and path are `-`.
struct Refused {
    log: Option<Arc<AccessLog>>,
    metrics: Arc<Metrics>,
}

impl crate::conn::RefusedRequests for Refused {
    fn refused(&self, client: Option<IpAddr>, request_id: &str, tls: bool) {
        // Rare (a broken client or a scanner): looked up by label.
        self.metrics
            .requests
            .with_label_values(&["", "OTHER", "400"])
            .inc();
        let Some(log) = &self.log else { return };
        log.write(&access_log::Entry {
            time: std::time::SystemTime::now(),
            request_id,
            client_ip: client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            method: "-",
            scheme: if tls { "https" } else { "http" },
            protocol: "HTTP/1.1",
            host: None,
            path: "-",
            query: None,
            route: None,
            upstream: None,
            target: None,
            status: 400,
            upstream_status: None,
            duration_ms: 0.0,
            upstream_ms: None,
            tries: 0,
            grpc_status: None,
            bytes_in: 0,
            bytes_out: 0,
            user_agent: None,
            trace_id: "",
            span_id: "",
            principal: None,
            error: Some("bad_request"),
            calls: None,
        });
    }
}

/// Per-request state.
pub struct Ctx {
    snapshot: Option<Arc<Snapshot>>,
    start: Instant,
    /// Formatted once; every header and log line that carries it shares these bytes.
    request_id: RequestId,
    client_ip: IpAddr,
    /// The address the connection comes from (read once, for `X-Forwarded-For`).
    peer: Option<IpAddr>,
    peer_trusted: bool,
    route: Option<Arc<Route>>,
    /// The route's parameters, as byte ranges of `path`.
    params: Option<Params>,
    /// Normalized request path (what was routed, what the log shows).
    path: String,
    /// The authority of an absolute-form target, which stands for `Host` (RFC 9112 §3.2.2).
    authority: Option<String>,
    /// The request matched no route and ran the global chain: its response phase applies.
    global_chain: bool,
    /// The upstream answered `101 Switching Protocols`: the connection is a tunnel now.
    upgraded: bool,
    target: Option<SocketAddr>,
    upstream_start: Option<Instant>,
    upstream_ms: Option<f64>,
    /// The status of the upstream's (last) answer, before any plugin replaced it.
    upstream_status: Option<u16>,
    /// The host the request was for, as validated (for the access log and the HTTPS redirect).
    host: Option<String>,
    /// Tries started to the upstream.
    tries: u32,
    /// Targets whose tries failed (a retry goes elsewhere when it can).
    tried: Vec<SocketAddr>,
    /// When the request's `retry.timeout` runs out.
    deadline: Option<Instant>,
    /// The response phase decided to try again after this answer (and took the budget for it).
    retrying: Option<Failure>,
    /// Tries made again on Pingora's word (a pooled connection the upstream had closed, an HTTP/2
    /// stream refused or a connection going away): they count against neither `attempts` nor the
    /// target.
    free: u32,
    /// The next try is such a free one (same target, no backoff).
    free_pending: bool,
    /// Request-body bytes this try has passed on, and the most any try passed to the chain. A retry
    /// sends the body again from its start (Pingora replays its retry buffer through the body phase,
    /// pingora-proxy 0.9.1 `proxy_h1.rs` `send_body_to_pipe`): the chain sees each byte once.
    body_sent: u64,
    body_checked: u64,
    /// The try in flight, counted in its target's requests in flight.
    attempt: Option<Attempt>,
    /// This request's slot in its upstream's circuit breaker.
    slot: Option<BreakerSlot>,
    /// A gRPC request (its deadline is told to the upstream).
    grpc: bool,
    /// The gRPC status of the answer: the gateway's own, or the upstream's `grpc-status`.
    grpc_status: Option<u8>,
    /// What the gateway answered with, when it answered itself.
    error: Option<GatewayError>,
    /// State of the route's plugin chain.
    plugins: PluginState,
    /// A CORS preflight to offer to the route of the request it announces, before it is answered as
    /// routed by its own method (see `plugin`'s module doc).
    offer: Option<Offer>,
    /// Whether a plugin replaced the upstream's answer.
    replaced: Replaced,
    trace: Option<TraceContext>,
    /// Counts this request in `tollgate_requests_in_flight` until dropped.
    _in_flight: Option<InFlight>,
    /// The client connection is TLS (an HTTPS listener).
    tls: bool,
    /// The client spoke HTTPS: `tls`, or a trusted proxy's `X-Forwarded-Proto` says so (see `https`).
    secure: bool,
    /// This answer's place under the compression gate, while it is being compressed.
    _compressing: Option<crate::compression::Slot>,
    /// A composition route's calls, for the log, the metrics and the spans.
    calls: Option<Box<[compose::CallRecord]>>,
}

/// A preflight's route: that of the request it announces.
struct Offer {
    route: Arc<Route>,
    params: Params,
    method: http::Method,
}

/// An upstream answer a plugin replaced in the upstream-response phase.
#[derive(Default)]
enum Replaced {
    #[default]
    No,
    /// The new head is on its way; this body goes out in place of the upstream's first chunk, and the
    /// upstream's chunks after it are dropped.
    Body(Option<bytes::Bytes>),
    /// The upstream's answer has no body to carry the replacement's: `fail_to_proxy` writes it whole.
    Whole(Box<ResponseHeader>, bytes::Bytes),
    /// Written whole by `fail_to_proxy`.
    Written,
}

/// Holds one unit of the in-flight gauge; dropping it (however the request ends) gives it back.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The query parameters not sent upstream: those the route's chain always removes (computed when
/// it was built) and any this request's plugins added. Borrowed unless both have some.
fn removed_query_params<'a>(ctx: &'a Ctx) -> std::borrow::Cow<'a, [String]> {
    let chain = ctx
        .route
        .as_deref()
        .map_or(&[][..], |r| r.chain.query_params_removed());
    let per_request = ctx.plugins.query_params_removed();
    match (chain.is_empty(), per_request.is_empty()) {
        (_, true) => std::borrow::Cow::Borrowed(chain),
        (true, false) => std::borrow::Cow::Borrowed(per_request),
        (false, false) => std::borrow::Cow::Owned([chain, per_request].concat()),
    }
}

/// The request's query as the logs show it: as it went upstream, without the credentials the chain
/// reads from it (`api_key.query`, `jwt.query`), which are not written to a log.
fn logged_query<'a>(req: &'a RequestHeader, ctx: &Ctx) -> Option<std::borrow::Cow<'a, str>> {
    let q = req.uri.query()?;
    let removed = removed_query_params(ctx);
    if removed.is_empty() {
        Some(std::borrow::Cow::Borrowed(q))
    } else {
        crate::plugin::strip_query(q, &removed).map(std::borrow::Cow::Owned)
    }
}

impl Gateway {
    /// Write a gateway error as JSON. Returns `Ok(true)`: the response is sent, stop processing.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: GatewayError,
    ) -> Result<bool> {
        let grpc = crate::grpc::is_grpc(session.req_header());
        if grpc {
            ctx.grpc_status = Some(crate::grpc::status_for(err.status));
        }
        let (resp, body) = error_answer(&err, &ctx.request_id, grpc)?;
        // Errors about the request itself may leave junk on the connection; don't reuse it.
        if matches!(err.status, 400 | 408 | 413 | 414 | 431) {
            session.set_keepalive(None);
        }
        ctx.error = Some(err);
        self.send(session, ctx, resp, body).await
    }

    /// Write a plugin's own response (e.g. a CORS preflight). Returns `Ok(true)`: stop processing.
    async fn reply(&self, session: &mut Session, ctx: &mut Ctx, r: Reply) -> Result<bool> {
        let (resp, body) = reply_answer(r, &ctx.request_id)?;
        self.send(session, ctx, resp, body).await
    }

    /// Write an answer of the gateway's own, after the chain's response phase. Returns `Ok(true)`.
    ///
    /// Boxed, because it is the rare path: Pingora's write futures make this one 1.3 KB, and inline
    /// it would be in every future that may answer (`respond`, `reply`, the chain, `admit`), up to
    /// `request_filter`'s, which every request builds and moves into Pingora's box: 2.6 KB copied per
    /// request for an answer most requests never give (`-Zprint-type-sizes`).
    fn send<'a>(
        &'a self,
        session: &'a mut Session,
        ctx: &'a mut Ctx,
        mut resp: ResponseHeader,
        body: bytes::Bytes,
    ) -> futures::future::BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if let Some(chain) = ctx.chain() {
                chain.response(&mut resp, session.req_header(), &ctx.plugins);
            }
            Self::hsts(&mut resp, ctx)?;
            let end = body.is_empty() || session.req_header().method == http::Method::HEAD;
            session.write_response_header(Box::new(resp), end).await?;
            if !end {
                session.write_response_body(Some(body), true).await?;
            }
            Ok(true)
        })
    }

    /// Run `chain`'s early phase, then its request phase (only the early one for a request routed as the
    /// one it announces). `Ok(true)`: a plugin answered.
    async fn run_chain(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        chain: &Chain,
        route: &str,
        routed_as: Option<&http::Method>,
    ) -> Result<bool> {
        if chain.is_empty() {
            return Ok(false);
        }
        let view = EarlyView {
            request: RequestView {
                req: session.req_header(),
                client_ip: ctx.client_ip,
                path: &ctx.path,
                route,
                request_id: ctx.request_id.as_str(),
            },
            routed_as,
        };
        let mut decided = chain.early(&view, &mut ctx.plugins).await;
        if matches!(decided.0, Decision::Continue) && routed_as.is_none() {
            decided = chain.request(&view.request, &mut ctx.plugins).await;
        }
        match decided {
            (Decision::Continue, _) => Ok(false),
            (Decision::Deny(err), by) => {
                if matches!(err.status, 401 | 403) {
                    self.metrics
                        .auth_failures
                        .with_label_values(&[by, err.code])
                        .inc();
                }
                self.respond(session, ctx, err).await
            }
            (Decision::Reply(r), _) => self.reply(session, ctx, r).await,
        }
    }

    /// Size limits on the request head.
    fn check_limits(s: &Snapshot, req: &RequestHeader) -> Option<GatewayError> {
        let set = &s.settings;
        if req.raw_path().len() > set.max_uri_bytes {
            return Some(GatewayError::new(
                414,
                "uri_too_long",
                format!("the request URI exceeds {} bytes", set.max_uri_bytes),
            ));
        }
        if req.headers.len() > set.max_headers {
            return Some(GatewayError::new(
                431,
                "too_many_headers",
                format!("the request has more than {} headers", set.max_headers),
            ));
        }
        let bytes: usize = req
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if bytes > set.max_header_bytes {
            return Some(GatewayError::new(
                431,
                "headers_too_large",
                format!("the request headers exceed {} bytes", set.max_header_bytes),
            ));
        }
        None
    }

    /// Build the request model: classify the target, check the host and framing, normalize the path,
    /// route. Errors are what to answer; `Ok(Form::Asterisk)` is an `OPTIONS *` (answered, never
    /// routed).
    fn route(
        s: &Snapshot,
        req: &RequestHeader,
        ctx: &mut Ctx,
    ) -> std::result::Result<Form, GatewayError> {
        let target = request::parse_target(req.raw_path(), &req.method)?;
        let host = request::host(
            &target,
            req.uri.authority().map(|a| a.as_str()),
            &req.headers,
            req.version,
        )?;
        request::check_framing(&req.headers)?;
        request::check_connection(&req.headers)?;
        if target.form == Form::Asterisk {
            return Ok(Form::Asterisk);
        }
        if target.form == Form::Absolute {
            ctx.authority = host.map(str::to_string);
        }
        ctx.host = host.map(str::to_string);
        let norm = path::normalize(target.path)
            .map_err(|e| GatewayError::new(400, "invalid_path", e.message()))?;
        let found = s.router.find(host, &req.method, &norm, &req.headers);
        // A request that asks about another (a CORS preflight) is first offered to the route that one
        // would take, if that route's chain has an early phase to answer it.
        if let Some(method) = plugin::announced_method(req) {
            if let Found::Route(i, params) = s.router.find(host, &method, &norm, &req.headers) {
                if s.routes[i].chain.phases().contains(Phases::EARLY) {
                    ctx.offer = Some(Offer {
                        route: s.routes[i].clone(),
                        params,
                        method,
                    });
                }
            }
        }
        ctx.path = norm.into_owned();
        match found {
            Found::Route(i, params) => {
                ctx.route = Some(s.routes[i].clone());
                ctx.params = Some(params);
                Ok(target.form)
            }
            Found::MethodNotAllowed(allow) => Err(GatewayError::method_not_allowed(allow)),
            Found::NotFound => Err(GatewayError::not_found()),
        }
    }
}

impl Gateway {
    /// Offer a preflight to the early phase of the route of the request it announces. `Ok(true)`: a
    /// plugin there answered. Otherwise the request goes on as routed by its own method, with a fresh
    /// plugin state.
    async fn offer(&self, session: &mut Session, ctx: &mut Ctx, offer: Offer) -> Result<bool> {
        let route = offer.route;
        let own_route = ctx.route.replace(route.clone());
        let own_params = ctx.params.replace(offer.params);
        if self
            .run_chain(session, ctx, &route.chain, &route.name, Some(&offer.method))
            .await?
        {
            return Ok(true);
        }
        ctx.route = own_route;
        ctx.params = own_params;
        ctx.plugins = PluginState::default();
        Ok(false)
    }

    /// The chain's upstream-selection phase: a target a plugin picked, or `None` for the balancer.
    async fn pick(
        session: &Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<Option<std::net::SocketAddr>> {
        if !route.chain.phases().contains(Phases::SELECT_UPSTREAM) {
            return Ok(None);
        }
        let view = UpstreamView {
            request: RequestView {
                req: session.req_header(),
                client_ip: ctx.client_ip,
                path: &ctx.path,
                route: &route.name,
                request_id: ctx.request_id.as_str(),
            },
            upstream: &upstream_of(route)?.name,
            attempt: ctx.tries,
            previous: ctx.target,
        };
        match route.chain.select_upstream(&view, &mut ctx.plugins).await {
            Pick::Balancer => Ok(None),
            Pick::Target(addr) => Ok(Some(addr)),
            Pick::Deny(err) => {
                let status = err.status;
                ctx.error = Some(err);
                Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "refused by a plugin choosing the upstream",
                ))
            }
        }
    }

    /// The chain's upstream-response phase, and a replacement put in place.
    async fn upstream_response(
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Only a final answer can be replaced (a `100 Continue` or a `101` is not the answer).
        let replaceable = !resp.status.is_informational()
            && ctx
                .route
                .as_ref()
                .is_some_and(|r| r.chain.phases().contains(Phases::UPSTREAM_RESPONSE));
        let Some(route) = ctx.route.clone().filter(|_| replaceable) else {
            return Ok(());
        };
        let (decided, _) = route
            .chain
            .upstream_response(resp, session.req_header(), &mut ctx.plugins)
            .await;
        if let Some(status) = Self::replace(session, resp, ctx, decided)? {
            // Nothing is written yet (Pingora writes the head after this filter, `proxy_h1.rs`
            // `h1_response_filter`), so the error path can still answer: `fail_to_proxy` writes it.
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "a plugin replaced the upstream's answer",
            ));
        }
        Ok(())
    }

    /// Put a plugin's replacement of the upstream's answer in place of `resp`. `Ok(Some(status))`: the
    /// upstream's answer has no body to carry the replacement's, so `fail_to_proxy` writes it whole.
    fn replace(
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
        decided: Decision,
    ) -> Result<Option<u16>> {
        let (head, body) = match decided {
            Decision::Continue => return Ok(None),
            Decision::Deny(err) => {
                let grpc = crate::grpc::is_grpc(session.req_header());
                let answer = error_answer(&err, &ctx.request_id, grpc)?;
                ctx.error = Some(err);
                answer
            }
            Decision::Reply(r) => reply_answer(r, &ctx.request_id)?,
        };
        let head_only = session.req_header().method == http::Method::HEAD;
        if body.is_empty() || head_only || upstream_body_follows(resp) {
            *resp = head;
            ctx.replaced = Replaced::Body(Some(body).filter(|b| !b.is_empty() && !head_only));
            Ok(None)
        } else {
            let status = head.status.as_u16();
            ctx.replaced = Replaced::Whole(Box::new(head), body);
            Ok(Some(status))
        }
    }
}

/// The head and JSON body of a gateway error; to a gRPC request, a Trailers-Only answer with its
/// `grpc-status` instead (see `grpc`).
fn error_answer(
    err: &GatewayError,
    request_id: &RequestId,
    grpc: bool,
) -> Result<(ResponseHeader, bytes::Bytes)> {
    if grpc {
        let mut resp = ResponseHeader::build(200, Some(6))?;
        resp.insert_header(CONTENT_TYPE, "application/grpc")?;
        resp.insert_header(
            "grpc-status",
            crate::grpc::status_for(err.status).to_string(),
        )?;
        resp.insert_header(
            "grpc-message",
            crate::grpc::message(&format!("{}: {}", err.code, err.message)),
        )?;
        resp.insert_header(X_REQUEST_ID, request_id.header())?;
        for (name, value) in &err.headers {
            resp.append_header(name.clone(), value.clone())?;
        }
        return Ok((resp, bytes::Bytes::new()));
    }
    let body = err.body(request_id.as_str());
    let mut resp = ResponseHeader::build(err.status, Some(4))?;
    resp.insert_header(CONTENT_TYPE, "application/json")?;
    resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(X_REQUEST_ID, request_id.header())?;
    if let Some(allow) = err.allow_header() {
        resp.insert_header(http::header::ALLOW, allow)?;
    }
    for (name, value) in &err.headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    Ok((resp, body))
}

/// The head and body of a plugin's reply.
fn reply_answer(r: Reply, request_id: &RequestId) -> Result<(ResponseHeader, bytes::Bytes)> {
    let mut resp = ResponseHeader::build(r.status, Some(r.headers.len() + 2))?;
    for (name, value) in r.headers {
        resp.append_header(name, value)?;
    }
    resp.insert_header(CONTENT_LENGTH, r.body.len().to_string())?;
    resp.insert_header(X_REQUEST_ID, request_id.header())?;
    Ok((resp, r.body))
}

/// Does a body follow this upstream response head? Pingora's HTTP/1 client reads none after a 204 or
/// 304, or with `Content-Length: 0` (pingora-core 0.9.1 `protocols/http/v1/client.rs`,
/// `init_body_reader`; a HEAD request's answer too, which the caller checks). The head is then the last
/// task of the response and `response_body_filter` is never called (`proxy_h1.rs`,
/// `h1_response_filter`), so no replacement body can ride on it.
fn upstream_body_follows(resp: &ResponseHeader) -> bool {
    if matches!(resp.status.as_u16(), 204 | 304) {
        return false;
    }
    if resp.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    match resp.headers.get(CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0),
        // Read until the upstream closes.
        None => true,
    }
}

impl Ctx {
    /// The chain whose response phase applies to this request's answer: the route's, or the global
    /// one for a request that matched no route.
    fn chain(&self) -> Option<&Chain> {
        match (&self.route, &self.snapshot) {
            (Some(r), _) => Some(&r.chain),
            (None, Some(s)) if self.global_chain => Some(&s.global),
            _ => None,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: the request's state machine holds the context for its whole life and is moved when
    /// each request starts (`process_new_http`, twice); 900 bytes inline were copied each time.
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            snapshot: None,
            start: Instant::now(),
            request_id: RequestId::default(),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            peer: None,
            peer_trusted: false,
            route: None,
            params: None,
            path: String::new(),
            authority: None,
            global_chain: false,
            upgraded: false,
            target: None,
            upstream_start: None,
            upstream_ms: None,
            upstream_status: None,
            host: None,
            tries: 0,
            tried: Vec::new(),
            deadline: None,
            retrying: None,
            free: 0,
            free_pending: false,
            body_sent: 0,
            body_checked: 0,
            attempt: None,
            slot: None,
            grpc: false,
            grpc_status: None,
            error: None,
            plugins: PluginState::default(),
            offer: None,
            replaced: Replaced::No,
            trace: None,
            _in_flight: None,
            tls: false,
            secure: false,
            _compressing: None,
            calls: None,
        })
    }

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // The response encoders (Pingora's gzip/zstd and brotli, off until `compress` turns one on), in
        // place of Pingora's default compression module, and the gRPC-Web bridge, which acts only on
        // requests it is initialized for (`server.grpc_web`, in `early_request_filter`).
        modules.add_module(Box::new(crate::compression::EncodersBuilder));
        if self.grpc_web {
            modules.add_module(Box::new(pingora_core::modules::http::grpc_web::GrpcWeb));
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // `ctx.start` was taken in `new_ctx`, which Pingora calls once the head is read, just before
        // this phase (pingora-proxy-0.9.1 `lib.rs`, `process_new_http`): no second clock read.
        let snap = self.snapshot.load_full();
        ctx._in_flight = Some(InFlight::new(&self.metrics.in_flight));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        ctx.trace = Some(TraceContext::from_header(
            req.headers.get(&TRACEPARENT_NAME).map(|v| v.as_bytes()),
        ));
        ctx.request_id = RequestId::for_request(req.headers.get(&X_REQUEST_ID_NAME));
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let peer = ctx.peer.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let trusted = &snap.settings.trusted_proxies;
        ctx.peer_trusted = !trusted.is_empty() && forwarded::is_trusted(peer, trusted);
        ctx.client_ip = if ctx.peer_trusted {
            let xff = req
                .headers
                .get_all(&X_FORWARDED_FOR_NAME)
                .iter()
                .filter_map(|v| v.to_str().ok());
            forwarded::client_ip(peer, xff, trusted)
        } else {
            peer
        };
        ctx.secure = ctx.tls
            || (ctx.peer_trusted
                && crate::https::forwarded_https(req.headers.get_all(&X_FORWARDED_PROTO_NAME)));
        // Keep-alive stays on unless it is already off (the client asked to close, or Pingora turned
        // it off because the process is shutting down), with no timeout of Pingora's (`Some(0)` is
        // its `Infinite`): the connection wrapper times the wait for the next head, with the exact
        // `keepalive_timeout` (see `conn::KeepAlive`, which also says why it is the wrapper's).
        // Pingora's `respect_keepalive` has already set `Infinite` for a keep-alive head (it parses
        // no `Keep-Alive: timeout=`): this keeps it so if a later Pingora starts to. HTTP/2
        // sessions ignore it (`h2_idle_timeout` bounds them).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(0));
        }
        if snap.settings.grpc_web {
            // Runs before routing (Pingora calls the modules' request filter right after this
            // phase): a gRPC-Web request is routed, authenticated and limited as the gRPC one.
            if let Some(bridge) = session
                .downstream_modules_ctx
                .get_mut::<pingora_core::modules::http::grpc_web::GrpcWebBridge>()
            {
                bridge.init();
            }
        }
        ctx.snapshot = Some(snap);
        Ok(())
    }

    /// How Pingora's own error and warning lines name the request: as its default does, with the
    /// query as the access log has it (no credentials).
    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        let req = session.req_header();
        let host = ctx
            .host
            .as_deref()
            .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("-");
        match logged_query(req, ctx) {
            Some(q) => format!("{} {}?{q}, Host: {host}", req.method, req.uri.path()),
            None => format!("{} {}, Host: {host}", req.method, req.uri.path()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let snap = ctx.snapshot.clone().expect("set in early_request_filter");
        if let Some(err) = Self::check_limits(&snap, session.req_header()) {
            return self.respond(session, ctx, err).await;
        }
        // The target as the client sent it: the parsed URI has already dropped a fragment.
        if let Some(h1) = session.as_downstream().as_http1() {
            if let Err(err) = request::check_sent_target(&h1.get_headers_raw_bytes()) {
                return self.respond(session, ctx, err).await;
            }
        }
        if let Some(r) = snap
            .settings
            .https_redirect
            .as_ref()
            .filter(|_| !ctx.secure)
        {
            match Self::https_redirect(r, session.req_header()) {
                Ok(None) => {}
                Ok(Some(reply)) => return self.reply(session, ctx, reply).await,
                Err(err) => return self.respond(session, ctx, err).await,
            }
        }
        let routed = Self::route(&snap, session.req_header(), ctx);
        if let Some(offer) = ctx.offer.take() {
            // Boxed, as the rare path (see `send`).
            if Box::pin(self.offer(session, ctx, offer)).await? {
                return Ok(true);
            }
        }
        match routed {
            Ok(Form::Asterisk) => {
                // `OPTIONS *` asks about the server itself: answered here, never forwarded.
                let reply = Reply {
                    status: 200,
                    headers: vec![(
                        http::header::ALLOW,
                        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                    )],
                    body: bytes::Bytes::new(),
                };
                return self.reply(session, ctx, reply).await;
            }
            Ok(_) => {}
            Err(err) => {
                // Unrouted requests run the global chain (limits, IP rules) before their 404/405.
                if matches!(err.status, 404 | 405) {
                    ctx.global_chain = true;
                    if self.run_chain(session, ctx, &snap.global, "", None).await? {
                        return Ok(true);
                    }
                }
                return self.respond(session, ctx, err).await;
            }
        }
        let route = ctx.route.clone().expect("routed");
        if self
            .run_chain(session, ctx, &route.chain, &route.name, None)
            .await?
        {
            return Ok(true);
        }
        match route.composition() {
            // Boxed (see `send`): a composition's fan-out future is over 2 KB.
            Some(comp) => Box::pin(self.compose(session, ctx, &route, comp)).await,
            None => self.admit(session, ctx, &route).await,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // After a 101 the bytes are the tunnel's, not a request body: no body limit applies.
        if ctx.upgraded {
            return Ok(());
        }
        if let Some(route) = &ctx.route {
            let len = body.as_ref().map_or(0, |b| b.len() as u64);
            let start = ctx.body_sent;
            ctx.body_sent += len;
            let fresh = match body.as_ref() {
                // Replayed by a retry, checked already.
                Some(_) if ctx.body_sent <= ctx.body_checked => return Ok(()),
                Some(b) if start < ctx.body_checked => {
                    Some(b.slice((ctx.body_checked - start) as usize..))
                }
                other => other.cloned(),
            };
            ctx.body_checked = ctx.body_checked.max(ctx.body_sent);
            if let Err(err) = route.chain.request_body(fresh.as_ref(), &mut ctx.plugins) {
                let status = err.status;
                ctx.error = Some(err);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "refused by a plugin while reading the body",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .expect("request_filter routed the request");
        let up = upstream_of(&route)?;
        if ctx.tries > 0 {
            // The body goes again from its start.
            ctx.body_sent = 0;
        }
        if std::mem::take(&mut ctx.free_pending) {
            ctx.attempt = None;
        } else if ctx.tries > 0 {
            Self::before_retry(ctx, &route).await?;
        }
        let picked = Self::pick(session, ctx, &route).await?;
        ctx.tries += 1;
        let mut ipbuf = [0u8; 16];
        let key: &[u8] = match &up.hash_on {
            None => b"",
            Some(HashOn::ClientIp) => ip_key(ctx.client_ip, &mut ipbuf),
            // The header as the chain left it (a `jwt` plugin's `X-User-Id`, not the client's).
            Some(HashOn::Header(h)) => ctx
                .plugins
                .upstream_header(h, session.req_header().headers.get(h))
                .map(|v| v.as_bytes())
                .unwrap_or(b""),
            Some(HashOn::Cookie(name)) => cookie(session.req_header(), name).unwrap_or(b""),
        };
        let Some(addr) = picked.or_else(|| up.pick(key, &ctx.tried)) else {
            ctx.error = Some(GatewayError::no_healthy_upstream(&up.name));
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no healthy upstream target",
            ));
        };
        ctx.target = Some(addr);
        let now = Instant::now();
        ctx.upstream_start = Some(now);
        ctx.attempt = up.begin(addr);
        let mut peer = up.peer(addr);
        let o = &mut peer.options;
        if let Some(t) = route.retry.per_try_timeout {
            o.read_timeout = Some(t);
        }
        if let Some(left) = ctx.deadline.map(|d| d.saturating_duration_since(now)) {
            // No read, and no connect, may outlast the request's total time.
            let left = left.max(std::time::Duration::from_millis(1));
            let cap = |t: Option<std::time::Duration>| Some(t.map_or(left, |t| t.min(left)));
            o.connection_timeout = cap(o.connection_timeout);
            o.total_connection_timeout = cap(o.total_connection_timeout);
            o.read_timeout = cap(o.read_timeout);
            o.write_timeout = cap(o.write_timeout);
        }
        // Only what goes up as an upgrade (see `upstream_request_filter`): a WebSocket one, to an
        // HTTP/1 upstream. Any other `Upgrade` header is removed, and its request keeps its timeouts.
        let h2_only = matches!(
            up.protocol,
            crate::config::raw::Protocol::H2 | crate::config::raw::Protocol::H2c
        );
        if !h2_only && headers::websocket_upgrade(session.req_header()) {
            // Pingora applies the upstream read timeout to every read, tunnel reads too, and it
            // cannot be changed once the 101 arrives: an upgrade request waits for its 101, and its
            // tunnel for upstream bytes, up to the tunnel idle timeout instead (the connection's own
            // idle timer closes a tunnel silent in both directions, see `conn`).
            let idle = ctx
                .snapshot
                .as_ref()
                .map_or(up.read_timeout, |s| s.settings.tunnel_idle_timeout);
            peer.options.read_timeout = Some(idle.max(up.read_timeout));
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent on a failed connect, so another target may be tried whatever the method.
        let Some(route) = ctx.route.clone() else {
            return e;
        };
        if let (Some(up), Some(t)) = (route.upstream(), ctx.target) {
            up.outcome(t, None, Some(Failure::ConnectFailure));
        }
        if Self::may_retry(session, ctx, &route, Failure::ConnectFailure) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let retry = Self::retry_after_error(session, ctx, &e, client_reused);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let route = ctx.route.clone().expect("routed");
        // The upstream target is built from the model (normalized path, route, the chain's query
        // edits), never copied from the bytes the client sent.
        let query = request::query_of(session.req_header().raw_path());
        let up_path = match &ctx.params {
            Some(params) => route.upstream_path(&ctx.path, params),
            None => std::borrow::Cow::Borrowed(ctx.path.as_str()),
        };
        let target = request::upstream_target(&up_path, query, &removed_query_params(ctx));
        let uri = http::Uri::try_from(target)
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "upstream uri"))?;
        let peer = ctx.peer;
        // Set again after the client's hop-by-hop headers are out, towards HTTP/1 only (an h2
        // upstream has no connection headers; Pingora turns the upgrade into nothing there).
        let websocket = up.version == http::Version::HTTP_11
            && headers::websocket_upgrade(session.req_header());
        let client = &session.req_header().headers;
        // gRPC over HTTP/2 carries `TE: trailers` end to end (the gRPC protocol requires it, RFC 9113
        // §8.2.2 allows that value only): the hop-by-hop pass takes the client's out, and it is set
        // again (also for gRPC-Web, whose bridge set it before this filter ran).
        let te_trailers = ctx.grpc && up.version == http::Version::HTTP_2;
        let original_host = match &ctx.authority {
            Some(a) => HeaderValue::from_str(a).ok(),
            None => session.req_header().headers.get(HOST).cloned(),
        };
        // The gateway's own edits on the `http` parts: one insert by parsed name each, into a map
        // reserved once (see `headers::edit_request` for why and what it costs).
        headers::edit_request(up, |up| -> Result<()> {
            up.uri = uri;
            let h = &mut up.headers;
            strip_for_upstream(h, client, ctx);
            // X-Forwarded-For/-Proto/-Host, X-Request-Id, traceparent, Host, and gRPC's
            // grpc-timeout and TE or a WebSocket's Connection and Upgrade: one growth at most.
            h.reserve(8);
            if te_trailers {
                h.insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
            if websocket {
                h.insert(
                    http::header::CONNECTION,
                    HeaderValue::from_static("Upgrade"),
                );
                h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            // X-Forwarded-For: append the peer to a trusted chain, otherwise replace it.
            let mut buf = headers::AddrBuf::new();
            let peer_ip = peer.map_or(&[][..], |p| buf.ip(p));
            let xff = if ctx.peer_trusted && h.contains_key(&X_FORWARDED_FOR_NAME) {
                let mut chain = Vec::with_capacity(64);
                for v in h.get_all(&X_FORWARDED_FOR_NAME) {
                    if v.to_str().is_ok() {
                        chain.extend_from_slice(v.as_bytes());
                        chain.extend_from_slice(b", ");
                    }
                }
                chain.extend_from_slice(peer_ip);
                HeaderValue::from_bytes(&chain)
            } else {
                // The common case: the peer's address alone, written without a `String`.
                HeaderValue::from_bytes(peer_ip)
            };
            h.insert(X_FORWARDED_FOR_NAME, xff.map_err(|_| header_error())?);
            if !(ctx.peer_trusted && h.contains_key(&X_FORWARDED_PROTO_NAME)) {
                let proto = if ctx.tls { "https" } else { "http" };
                h.insert(X_FORWARDED_PROTO_NAME, HeaderValue::from_static(proto));
            }
            if !(ctx.peer_trusted && h.contains_key(&X_FORWARDED_HOST_NAME)) {
                match &original_host {
                    Some(v) => {
                        h.insert(X_FORWARDED_HOST_NAME, v.clone());
                    }
                    None => {
                        h.remove(&X_FORWARDED_HOST_NAME);
                    }
                }
            }
            h.insert(X_REQUEST_ID_NAME, ctx.request_id.header());
            if let (true, Some(d)) = (ctx.grpc, ctx.deadline) {
                // The time left, so that the server stops when the client will have given up.
                let left = d.saturating_duration_since(Instant::now());
                let v = HeaderValue::from_str(&crate::grpc::format_timeout(left));
                h.insert(GRPC_TIMEOUT, v.map_err(|_| header_error())?);
            }
            if let Some(t) = &ctx.trace {
                h.insert(TRACEPARENT_NAME, t.header());
            }
            if !route.preserve_host {
                if let Some(t) = ctx.target {
                    let host = match upstream_of(&route)?.host_for(t) {
                        Some(name) => Ok(name),
                        None => HeaderValue::from_bytes(buf.socket(t)),
                    };
                    h.insert(HOST, host.map_err(|_| header_error())?);
                }
            } else if let Some(v) = &original_host {
                // An absolute-form target's authority replaces `Host` (RFC 9112 §3.2.2).
                h.insert(HOST, v.clone());
            }
            ctx.plugins.apply_upstream_headers(h);
            Ok(())
        })?;
        route.chain.upstream_request(up, &ctx.plugins);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let took = ctx.upstream_start.map(|start| start.elapsed());
        if took.is_some() {
            ctx.upstream_status = Some(resp.status.as_u16());
        }
        if let Some(took) = took {
            ctx.upstream_ms = Some(took.as_secs_f64() * 1000.0);
            if let Some(up) = ctx.route.as_ref().and_then(|r| r.upstream()) {
                up.duration(&self.metrics).observe(took.as_secs_f64());
            }
        }
        if !resp.status.is_informational() {
            if let Some(status) = Self::retry_on_answer(session, ctx, resp.status.as_u16(), took) {
                // Nothing of this answer is written yet (Pingora writes the head after this phase):
                // the error ends the try, `error_while_proxy` has it tried again.
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "the upstream's answer is tried again",
                ));
            }
        }
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel now: Pingora's per-read timeout (60 s) would cut a quiet client side; the
            // connection's tunnel idle timer governs instead.
            ctx.upgraded = true;
            session.set_read_timeout(None);
        }
        let upgraded = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
        headers::edit_response(resp, |resp| {
            let h = &mut resp.headers;
            if !upgraded {
                for name in headers::hop_by_hop_present(h) {
                    h.remove(&name);
                }
            }
            // No `reserve`: the `Connection` just removed (nearly every answer has one) left room.
            h.insert(X_REQUEST_ID_NAME, ctx.request_id.header());
        });
        if ctx.grpc {
            // A Trailers-Only answer has its status in the head.
            if let Some(s) = resp.headers.get("grpc-status") {
                ctx.grpc_status = crate::grpc::parse_status(s.as_bytes());
            }
        }
        Self::upstream_response(session, resp, ctx).await?;
        if let Some(chain) = ctx.chain() {
            chain.response(resp, session.req_header(), &ctx.plugins);
        }
        Self::hsts(resp, ctx)?;
        self.compress(session, resp, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if let Replaced::Body(replacement) = &mut ctx.replaced {
            // Its body in place of the upstream's first chunk, nothing in place of the others.
            *body = replacement.take();
        }
        // After a 101 the bytes are the tunnel's, not a response body.
        if ctx.upgraded {
            return Ok(None);
        }
        if let Some(route) = &ctx.route {
            if let Err(err) = route
                .chain
                .response_body(body, end_of_stream, &mut ctx.plugins)
            {
                let status = err.status;
                ctx.error = Some(err);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "refused by a plugin while sending the body",
                ));
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if let Replaced::Whole(head, body) = std::mem::take(&mut ctx.replaced) {
            let code = head.status.as_u16();
            ctx.replaced = Replaced::Written;
            if let Err(we) = self.send(session, ctx, *head, body).await {
                log::debug!(
                    "request {}: could not send the replaced answer: {we}",
                    ctx.request_id.as_str()
                );
            }
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let err = match ctx.error.take() {
            Some(err) => Some(err),
            None => error::from_pingora(e),
        };
        let Some(err) = err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = err.status;
        if session.response_written().is_none() {
            // The connection is not reused after this (`can_reuse_downstream: false`: Pingora's
            // `handle_error` then drops it, pingora-proxy src/lib.rs), so the answer must say
            // `Connection: close`: Pingora writes `keep-alive` unless keepalive is off
            // (pingora-core src/protocols/http/v1/server.rs, the response header update), and a client
            // that believed it sent its next request into a closed socket (seen with an upstream
            // killed mid-request: the 502 arrived, the next request on the connection got no answer).
            session.set_keepalive(None);
            if let Err(we) = self.respond(session, ctx, err).await {
                log::debug!(
                    "request {}: could not send the error response: {we}",
                    ctx.request_id.as_str()
                );
            }
        } else {
            ctx.error = Some(err);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.grpc {
            if let Some(s) = trailers.get("grpc-status") {
                ctx.grpc_status = crate::grpc::parse_status(s.as_bytes());
            }
        }
        Ok(())
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
        _error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        // A retry is counted (`tollgate_upstream_retries_total`, the access log's `tries`) and an
        // ejection logged; a warning line per retry would flood the log in an outage. A stale pooled
        // connection's retry is Pingora's own and keeps its line.
        matches!(context, ProxyWarnLogContext::UpstreamRetry) && ctx.tries > 0 && !ctx.free_pending
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // A replacement written from `fail_to_proxy` is a plugin's decision, not a failure.
        matches!(ctx.replaced, Replaced::Written)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        self.record(session, ctx);
        // The request is over: give back its in-flight unit and concurrency slots now, before Pingora
        // closes a `Connection: close` connection (the context itself outlives the connection).
        ctx._in_flight = None;
        ctx.attempt = None;
        ctx.slot = None;
        ctx.plugins = PluginState::default();
    }
}

/// Tries made again on Pingora's word per request, at most (see `Gateway::retry_after_error`).
const MAX_FREE_RETRIES: u32 = 2;

impl Gateway {
    /// `server.https_redirect` for a plain-HTTP request: `Ok(Some)`, the redirect to answer with;
    /// `Ok(None)`, the request is served (an ACME challenge, `OPTIONS *`); `Err`, the request is
    /// malformed (the same 400 routing would give) or names no host to redirect to.
    fn https_redirect(
        r: &crate::https::Redirect,
        req: &RequestHeader,
    ) -> std::result::Result<Option<Reply>, GatewayError> {
        let target = request::parse_target(req.raw_path(), &req.method)?;
        if target.form == Form::Asterisk {
            return Ok(None);
        }
        let host = request::host(
            &target,
            req.uri.authority().map(|a| a.as_str()),
            &req.headers,
            req.version,
        )?
        .ok_or_else(|| {
            GatewayError::new(
                400,
                "missing_host",
                "a Host header is required: plain HTTP is redirected to HTTPS on the same host",
            )
        })?;
        let mut pq =
            String::with_capacity(target.path.len() + 1 + target.query.map_or(0, str::len));
        pq.push_str(target.path);
        if let Some(q) = target.query {
            pq.push('?');
            pq.push_str(q);
        }
        let norm = path::normalize(target.path)
            .map_err(|e| GatewayError::new(400, "invalid_path", e.message()))?;
        if crate::https::acme_challenge(&norm) {
            return Ok(None);
        }
        let Some(location) = r.location(host, &pq) else {
            return Ok(None);
        };
        // Built of validated visible ASCII (host and target), so always a valid value.
        let location = HeaderValue::from_str(&location)
            .map_err(|_| GatewayError::new(400, "invalid_target", "not a valid target"))?;
        Ok(Some(Reply {
            status: r.status,
            headers: vec![
                (http::header::LOCATION, location),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: bytes::Bytes::new(),
        }))
    }

    /// `Strict-Transport-Security` on an answer over HTTPS (the gateway's policy replaces an
    /// upstream's, so one header says what the host does).
    fn hsts(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
        if !ctx.secure {
            return Ok(());
        }
        if let Some(v) = ctx.snapshot.as_ref().and_then(|s| s.settings.hsts.as_ref()) {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v.clone())?;
        }
        Ok(())
    }

    /// Response compression (see `compression` for what Pingora's module does and what is decided
    /// here): the route's policy, the request's `Accept-Encoding` and the answer decide; Pingora's
    /// module, which runs on the head after this phase (pingora-proxy 0.9.1 `lib.rs`
    /// `downstream_response_task_filter`, after `response_filter` in `proxy_h1.rs`), is then turned on
    /// for the chosen coding alone. A HEAD answer gets the headers a GET would, and no body to encode.
    fn compress(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut Ctx) {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.compression.clone()) else {
            return;
        };
        // Upgraded and gRPC answers are streams of their own framing; only an upstream's answer
        // (`upstream_start` set) is compressed here.
        if ctx.upgraded || ctx.grpc || ctx.upstream_start.is_none() {
            return;
        }
        let req = session.req_header();
        let Some(choice) =
            crate::compression::decide(&policy, &req.headers, resp.status.as_u16(), &resp.headers)
        else {
            return;
        };
        // The answer depends on Accept-Encoding whether or not this client gets it compressed.
        crate::compression::add_vary(resp);
        let Some(algorithm) = choice else { return };
        if req.method == http::Method::HEAD {
            crate::compression::head_headers(resp, algorithm);
            return;
        }
        let max = ctx
            .snapshot
            .as_ref()
            .map_or(0, |s| s.settings.max_compressing);
        let Some(slot) = self.compressing.enter(max) else {
            // As many encoders as allowed are busy: this answer goes out as it is (still `Vary`).
            return;
        };
        ctx._compressing = Some(slot);
        let Some(encoders) = session
            .downstream_modules_ctx
            .get_mut::<crate::compression::Encoders>()
        else {
            return;
        };
        if algorithm == crate::compression::Algorithm::Brotli {
            // Ours, not Pingora's (see `compression`): the same headers, then the module encodes.
            crate::compression::head_headers(resp, algorithm);
            // Streamed: chunked on HTTP/1.1, as Pingora's module sets it (its HTTP/2 writer drops
            // the header, pingora-core `protocols/http/v2/server.rs`); without it the body would be
            // close-delimited and the connection lost.
            let _ = resp.insert_header(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            encoders.brotli.start(policy.level);
            return;
        }
        let module = &mut encoders.pingora;
        if !module.is_header_phase() {
            return;
        }
        module.adjust_algorithm_level(algorithm.pingora(), policy.level);
        // The module compresses with the first coding of the Accept-Encoding it was given (its
        // `decide_action`); it was given none at the request (it was off then: `request_filter`
        // returns early when no level is set), so this one, of the chosen coding alone, is the list.
        let mut ask = match RequestHeader::build("GET", b"/", None) {
            Ok(r) => r,
            Err(_) => return,
        };
        if ask
            .insert_header(http::header::ACCEPT_ENCODING, algorithm.token())
            .is_ok()
        {
            module.request_filter(&ask);
        }
    }
}

/// Resilience in the proxy phases: the circuit breaker before the first try, the wait before a
/// retry, and whether a failed try is tried again (see `resilience` for the rules).
impl Gateway {
    /// Take the route's upstream's circuit-breaker slot (or answer `503 upstream_overloaded`), count
    /// the request in the retry budget, start the request's total time. `Ok(true)`: answered.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx, route: &Route) -> Result<bool> {
        let up = upstream_of(route)?;
        if let Some(breaker) = &up.breaker {
            match breaker.enter().await {
                Some(slot) => ctx.slot = Some(slot),
                None => {
                    if let Some(s) = up.series() {
                        s.overloaded.inc();
                    }
                    let err = GatewayError::upstream_overloaded(&up.name);
                    return self.respond(session, ctx, err).await;
                }
            }
        }
        if route.retry.attempts > 1 {
            if let Some(b) = &up.budget {
                b.deposit();
            }
        }
        ctx.deadline = route.retry.timeout.map(|t| ctx.start + t);
        if crate::grpc::is_grpc(session.req_header()) {
            ctx.grpc = true;
            // The client's deadline, capped by the route's: the shorter one bounds the wait.
            let asked = session
                .req_header()
                .headers
                .get("grpc-timeout")
                .and_then(|v| crate::grpc::parse_timeout(v.as_bytes()));
            if let Some(t) = asked {
                let d = ctx.start + t;
                ctx.deadline = Some(ctx.deadline.map_or(d, |x| x.min(d)));
            }
        }
        Ok(false)
    }

    /// Before a retry: the failed target is avoided, the backoff waited (`504` if the request's
    /// total time would run out first).
    async fn before_retry(ctx: &mut Ctx, route: &Route) -> Result<()> {
        if let Some(t) = ctx.target.take() {
            ctx.tried.push(t);
        }
        ctx.attempt = None;
        let wait = route.retry.backoff_before(ctx.tries);
        if ctx.deadline.is_some_and(|d| Instant::now() + wait >= d) {
            ctx.error = Some(GatewayError::retry_timeout());
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "the request's timeout ran out before another try",
            ));
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Whether a try that failed with `failure` is tried again: the route's policy allows it (see
    /// `RetryPolicy::allows`), the request's time is not up, and the upstream's budget has a retry
    /// left. Counted in the metrics either way.
    fn may_retry(session: &Session, ctx: &Ctx, route: &Route, failure: Failure) -> bool {
        let Some(up) = route.upstream() else {
            return false;
        };
        let kept = !session.as_ref().retry_buffer_truncated();
        if ctx.upgraded
            || !route.retry.allows(
                failure,
                ctx.tries - ctx.free,
                &session.req_header().method,
                kept,
            )
            || ctx.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return false;
        }
        let series = up.series();
        if let Some(b) = &up.budget {
            if !b.withdraw() {
                if let Some(s) = series {
                    s.budget_exhausted.inc();
                }
                return false;
            }
        }
        if let Some(s) = series {
            s.retried(failure);
        }
        true
    }

    /// The answer's head arrived: feed the target's latency and passive health, and say whether this
    /// status is tried again (`Some(status)`: the budget was taken, `error_while_proxy` retries).
    fn retry_on_answer(
        session: &Session,
        ctx: &mut Ctx,
        status: u16,
        took: Option<std::time::Duration>,
    ) -> Option<u16> {
        let route = ctx.route.as_ref()?;
        let up = route.upstream()?;
        let failure = (status >= 500).then_some(Failure::Status(status));
        if let Some(t) = ctx.target {
            up.outcome(t, took, failure);
        }
        let f = failure.filter(|f| route.retry.when.has(*f))?;
        if !Self::may_retry(session, ctx, route, f) {
            return None;
        }
        ctx.retrying = Some(f);
        Some(status)
    }

    /// Whether a try that failed after it was sent is tried again. Never once any byte of the answer
    /// went to the client, nor for a request that cannot be replayed (a method that is not
    /// idempotent unless the route opts in, a body that was not kept whole). What Pingora itself
    /// says is safe to try again, as its default policy does (a pooled connection the upstream had
    /// closed, `ReusedOnly` on a reused one; an HTTP/2 stream refused or a connection going away,
    /// `Decided(true)`, pingora-core 0.9.1 `protocols/http/v2/client.rs`) is tried again up to twice,
    /// on the same target, without counting against `attempts`, the budget or the target's health.
    fn retry_after_error(session: &Session, ctx: &mut Ctx, e: &Error, reused: bool) -> bool {
        if ctx.retrying.take().is_some() {
            return true;
        }
        let Some(route) = ctx.route.clone() else {
            return false;
        };
        let Some(up) = route.upstream() else {
            return false;
        };
        let replayable = session.response_written().is_none()
            && !ctx.upgraded
            && !session.as_ref().retry_buffer_truncated()
            && (session.req_header().method.is_idempotent() || route.retry.non_idempotent);
        let stale = matches!(e.retry, RetryType::ReusedOnly);
        let pingora_safe = (reused && stale) || matches!(e.retry, RetryType::Decided(true));
        if pingora_safe && replayable && ctx.free < MAX_FREE_RETRIES {
            ctx.free += 1;
            ctx.free_pending = true;
            return true;
        }
        let Some(failure) = Failure::of_error(e) else {
            return false;
        };
        // A reused connection's failure is the pool's, not the target's.
        if let (Some(t), false) = (ctx.target, reused && stale) {
            up.outcome(t, None, Some(failure));
        }
        replayable && Self::may_retry(session, ctx, &route, failure)
    }
}

impl Gateway {
    /// Answer a composition route: run its calls (the chain has passed), racing the client
    /// connection, whose closing cancels the calls in flight. `Ok(true)`: answered.
    async fn compose(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
        comp: &Arc<Composition>,
    ) -> Result<bool> {
        if request::has_body(&session.req_header().headers)
            || !session.downstream_session.is_body_empty()
        {
            return self
                .respond(
                    session,
                    ctx,
                    GatewayError::new(
                        400,
                        "body_not_allowed",
                        "a composition route takes no request body",
                    ),
                )
                .await;
        }
        let req = session.req_header();
        let mut ipbuf = [0u8; 16];
        let input = compose::Input {
            params: match &ctx.params {
                Some(p) => p.pairs(&ctx.path),
                None => Vec::new(),
            },
            query: request::query_of(req.raw_path()).map(|q| {
                let removed = [
                    route.chain.query_params_removed(),
                    ctx.plugins.query_params_removed(),
                ]
                .concat();
                // The client's query as a proxied request would send it (credentials the chain
                // consumed taken out), without its leading `?`.
                let kept = request::upstream_target("", Some(q), &removed);
                kept.trim_start_matches('?').to_string()
            }),
            headers: headers_as_forwarded(req, ctx),
            claims: ctx.plugins.identity.claims.clone(),
            hash_key: ip_key(ctx.client_ip, &mut ipbuf).to_vec(),
        };
        let forwarded = self.forwarded(session, ctx)?;
        let trace = ctx.trace.as_ref().map(|t| compose::Trace {
            trace_id: t.trace_id,
            parent_span_id: t.span_id,
            flags: t.flags,
        });
        let outcome = {
            let plugins = &ctx.plugins;
            let chain = &route.chain;
            let decorate = |up: &mut RequestHeader| {
                headers::edit_request(up, |up| {
                    for (name, value) in &forwarded {
                        up.headers.insert(name.clone(), value.clone());
                    }
                    plugins.apply_upstream_headers(&mut up.headers);
                });
                chain.upstream_request(up, plugins);
            };
            let run = compose::run(comp, &input, &self.connector, &decorate, trace);
            tokio::pin!(run);
            tokio::select! {
                o = &mut run => Some(o),
                // No body is expected: this only returns when the client closes (or misbehaves).
                _ = session.downstream_session.read_body_or_idle(true) => None,
            }
        };
        let Some(outcome) = outcome else {
            // Dropping `run` dropped the calls in flight, and their connections with them.
            session.set_keepalive(None);
            ctx.error = Some(GatewayError::new(
                499,
                "client_closed_request",
                "the client went away before the answer",
            ));
            return Ok(true);
        };
        ctx.calls = Some(outcome.records.into_boxed_slice());
        let body = match outcome.result {
            Ok(v) => v,
            Err(f) => {
                let mut err = GatewayError::new(
                    f.error.status(),
                    f.error.code(),
                    format!("call `{}`: {}", f.call, f.error.message()),
                );
                err.call = Some(f.call);
                return self.respond(session, ctx, err).await;
            }
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut resp = ResponseHeader::build(200, Some(4))?;
        resp.insert_header(CONTENT_TYPE, "application/json")?;
        resp.insert_header(CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.header())?;
        if !outcome.partial.is_empty() {
            resp.insert_header(compose::PARTIAL_HEADER, outcome.partial.join(", "))?;
        }
        self.send(session, ctx, resp, body).await
    }

    /// `X-Forwarded-*`, `X-Request-Id` for the calls of a composition, by the same rules as a
    /// proxied request's (see `upstream_request_filter`).
    fn forwarded(&self, session: &Session, ctx: &Ctx) -> Result<Vec<(HeaderName, HeaderValue)>> {
        let req = session.req_header();
        let mut out = Vec::with_capacity(4);
        let peer = ctx.peer.map(|p| p.to_string()).unwrap_or_default();
        let xff = if ctx.peer_trusted {
            let prior: Vec<&str> = req
                .headers
                .get_all(&X_FORWARDED_FOR_NAME)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if prior.is_empty() {
                peer
            } else {
                format!("{}, {peer}", prior.join(", "))
            }
        } else {
            peer
        };
        let value = |s: &str| {
            HeaderValue::from_str(s)
                .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "forwarded header"))
        };
        out.push((X_FORWARDED_FOR_NAME, value(&xff)?));
        let proto = match req.headers.get(&X_FORWARDED_PROTO_NAME) {
            Some(p) if ctx.peer_trusted => p.clone(),
            _ => HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
        };
        out.push((X_FORWARDED_PROTO_NAME, proto));
        let host = match (req.headers.get(&X_FORWARDED_HOST_NAME), &ctx.authority) {
            (Some(h), _) if ctx.peer_trusted => Some(h.clone()),
            (_, Some(a)) => HeaderValue::from_str(a).ok(),
            _ => req.headers.get(HOST).cloned(),
        };
        if let Some(h) = host {
            out.push((X_FORWARDED_HOST_NAME, h));
        }
        out.push((X_REQUEST_ID_NAME, value(ctx.request_id.as_str())?));
        Ok(out)
    }

    /// Per-call metrics of a composition.
    fn record_calls(&self, route: &str, comp: &Composition, records: &[compose::CallRecord]) {
        for rec in records {
            let Some(call) = comp.calls.get(rec.call) else {
                continue;
            };
            call.duration
                .get_or_init(|| {
                    self.metrics
                        .aggregate_call_duration
                        .with_label_values(&[route, &call.name])
                })
                .observe(rec.duration.as_secs_f64());
            if let Some(e) = &rec.error {
                self.metrics
                    .aggregate_call_errors
                    .with_label_values(&[route, &call.name, e.code()])
                    .inc();
            }
        }
    }

    /// Metrics and the access-log line of a finished request.
    fn record(&self, session: &Session, ctx: &Ctx) {
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.error.as_ref().map(|e| e.status))
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        let route_label = ctx.route.as_deref().map_or("", |r| r.name.as_str());
        match &ctx.route {
            Some(r) => r.series.record(
                &self.metrics,
                &r.name,
                &req.method,
                status,
                Some(elapsed.as_secs_f64()),
            ),
            None => self
                .unrouted
                .record(&self.metrics, "", &req.method, status, None),
        }
        if let Some(chain) = ctx.chain() {
            chain.log(status, &ctx.plugins);
        }
        if let Some(code) = ctx.grpc_status {
            self.metrics
                .grpc_responses
                .with_label_values(&[route_label, crate::grpc::code_label(code)])
                .inc();
        }
        let composed = match (&ctx.calls, ctx.route.as_ref().and_then(|r| r.composition())) {
            (Some(records), Some(comp)) => {
                self.record_calls(route_label, comp, records);
                Some((records, comp))
            }
            _ => None,
        };
        let tracing = ctx.snapshot.as_ref().is_some_and(|s| s.tracing.is_some());
        if !tracing && self.log.is_none() {
            // Nothing below needs the wall clock.
            return;
        }
        let now = std::time::SystemTime::now();
        let path = if ctx.path.is_empty() {
            req.uri.path()
        } else {
            &ctx.path
        };
        if let (true, Some(t)) = (tracing, ctx.trace.as_ref().filter(|t| t.sampled())) {
            self.exporter.push(crate::otlp::Span {
                trace_id: t.trace_id,
                span_id: t.span_id,
                parent_span_id: t.parent_span_id,
                method: req.method.as_str().to_string(),
                path: path.to_string(),
                route: route_label.to_string(),
                status,
                client_ip: ctx.client_ip,
                upstream: ctx
                    .route
                    .as_ref()
                    .and_then(|r| r.upstream())
                    .map(|u| u.name.clone()),
                call: None,
                target: ctx.target,
                start: now.checked_sub(elapsed).unwrap_or(now),
                end: now,
            });
            // One child span per call.
            for (rec, call) in composed
                .iter()
                .flat_map(|(records, comp)| records.iter().map(|r| (r, &comp.calls[r.call])))
            {
                self.exporter.push(crate::otlp::Span {
                    trace_id: t.trace_id,
                    span_id: rec.span_id,
                    parent_span_id: Some(t.span_id),
                    method: call.method.as_str().to_string(),
                    path: rec.path.clone(),
                    route: route_label.to_string(),
                    status: rec
                        .status
                        .or(rec.error.as_ref().map(|e| e.status()))
                        .unwrap_or(0),
                    client_ip: ctx.client_ip,
                    upstream: Some(call.upstream.name.clone()),
                    target: rec.target,
                    start: rec.start,
                    end: rec.start + rec.duration,
                    call: Some(call.name.clone()),
                });
            }
        }
        let calls_log = composed.map(|(records, comp)| calls_json(records, comp));
        let Some(log) = &self.log else { return };
        let route = ctx.route.as_deref();
        // As sent: visible ASCII as is (the usual case, no copy), other UTF-8 kept, bytes that are not
        // UTF-8 escaped (`\xff`), never dropped to `null`.
        let user_agent = req.headers.get(USER_AGENT).map(|v| match v.to_str() {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => std::borrow::Cow::Owned(escape_bytes(v.as_bytes())),
        });
        let query = logged_query(req, ctx);
        let entry = access_log::Entry {
            time: now,
            request_id: ctx.request_id.as_str(),
            client_ip: ctx.client_ip,
            method: req.method.as_str(),
            scheme: if ctx.tls { "https" } else { "http" },
            protocol: protocol_label(req.version),
            host: ctx.host.as_deref(),
            path,
            query: query.as_deref(),
            route: route.map(|r| r.name.as_str()),
            upstream: route.and_then(|r| r.upstream()).map(|u| u.name.as_str()),
            target: ctx.target,
            status,
            upstream_status: ctx.upstream_status,
            duration_ms: round3(elapsed.as_secs_f64() * 1000.0),
            upstream_ms: ctx.upstream_ms.map(round3),
            tries: ctx.tries,
            grpc_status: ctx.grpc_status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            user_agent: user_agent.as_deref(),
            trace_id: ctx.trace.as_ref().map_or("", |t| t.trace_id_hex()),
            span_id: ctx.trace.as_ref().map_or("", |t| t.span_id_hex()),
            principal: ctx.plugins.identity.subject.as_deref().or(ctx
                .plugins
                .identity
                .consumer
                .as_deref()),
            error: ctx.error.as_ref().map(|e| e.code),
            calls: calls_log.as_ref(),
        };
        log.write(&entry);
    }
}

/// The client's headers as a proxied request would carry them upstream: hop-by-hop and spoofable ones
/// out, the chain's edits (identity from `forward_claims`, its removals) applied. What `{header.NAME}`
/// reads, so a template sees the chain's `X-User-Id`, never the client's forged one.
fn headers_as_forwarded(req: &RequestHeader, ctx: &Ctx) -> http::HeaderMap {
    let mut h = req.headers.clone();
    strip_for_upstream(&mut h, &req.headers, ctx);
    ctx.plugins.apply_upstream_headers(&mut h);
    h
}

/// Out of a request's headers before they go upstream: hop-by-hop ones, and the spoofable ones (those
/// only a trusted proxy may send, and `_` spellings of what the gateway sets), except where the chain
/// itself sets or removes the name.
/// `client` is the client's head (what its `Connection` names goes too, see
/// `headers::request_hop_by_hop`).
fn strip_for_upstream(h: &mut http::HeaderMap, client: &http::HeaderMap, ctx: &Ctx) {
    for name in headers::request_hop_by_hop(h, client) {
        h.remove(&name);
    }
    let plugins = &ctx.plugins;
    let protected = |n: &str| {
        plugins.upstream_edits().any(|e| match e {
            HeaderEdit::Remove(x) | HeaderEdit::Set(x, _) => x.as_str() == n,
            HeaderEdit::Append(..) => false,
        })
    };
    for name in headers::spoofable_present(h, ctx.peer_trusted, protected) {
        h.remove(&name);
    }
}

/// `b` as text: its UTF-8 as it is, every byte that is not UTF-8 as `\xNN`.
fn escape_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The access log's `calls` field.
fn calls_json(records: &[compose::CallRecord], comp: &Composition) -> serde_json::Value {
    let list = records
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("call".into(), comp.calls[r.call].name.clone().into());
            if let Some(i) = r.index {
                m.insert("index".into(), i.into());
            }
            m.insert(
                "status".into(),
                r.status.map_or(serde_json::Value::Null, Into::into),
            );
            m.insert(
                "ms".into(),
                round3(r.duration.as_secs_f64() * 1000.0).into(),
            );
            if let Some(t) = r.target {
                m.insert("target".into(), t.to_string().into());
            }
            if let Some(e) = &r.error {
                m.insert("error".into(), e.code().into());
            }
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::Value::Array(list)
}

/// The upstream of a proxying route; a composition route never gets this far (it answers in
/// `request_filter`), so reaching here without one is an internal error, answered 500.
fn upstream_of(route: &Route) -> Result<&Arc<Upstream>> {
    route.upstream().ok_or_else(|| {
        Error::explain(
            ErrorType::HTTPStatus(500),
            "a composition route reached the proxy phases",
        )
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `HTTP/1.1`, `HTTP/2.0`... for the access log.
fn protocol_label(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    for v in req.headers.get_all(http::header::COOKIE) {
        let s = v.to_str().ok()?;
        for pair in s.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(val.as_bytes());
                }
            }
        }
    }
    None
}
