//! The plugin API: one trait with a method per phase of a request, a registry of plugins by name, and
//! the chain each route runs.
//!
//! A route's chain is the global `plugins:` list followed by the route's own, in config order. Plugins
//! are shared by every request of every worker thread; what a plugin keeps about one request lives in
//! that request's [`PluginState`].
//!
//! # Phases
//!
//! Each phase is a [`Plugin`] method with a default that does nothing, run in chain order, and each maps
//! onto one of Pingora's `ProxyHttp` hooks (pingora-proxy 0.9.1, `src/proxy_trait.rs`; their order is
//! `process_request` in `src/lib.rs` and `h1_response_filter` in `src/proxy_h1.rs`):
//!
//! | phase | Pingora hook | may |
//! |---|---|---|
//! | [`early`](Plugin::early) | `request_filter`, once routed | answer (before any authentication) |
//! | [`request`](Plugin::request) | `request_filter` | answer; record upstream header edits, identity |
//! | [`request_body`](Plugin::request_body) | `request_body_filter` | refuse the body (413...) |
//! | [`select_upstream`](Plugin::select_upstream) | `upstream_peer` | pick the target, or refuse (503...) |
//! | [`upstream_request`](Plugin::upstream_request) | `upstream_request_filter` | edit the request sent upstream |
//! | [`upstream_response`](Plugin::upstream_response) (async) | `response_filter` | replace the upstream's answer |
//! | [`response`](Plugin::response) | `response_filter`, and the gateway's own answers | edit the response head |
//! | [`response_body`](Plugin::response_body) | `response_body_filter` (sync in Pingora) | transform or replace chunks |
//! | [`log`](Plugin::log) | `logging` | account for the finished request |
//!
//! A plugin says which phases it implements with [`Plugin::phases`]; the chain records that when it is
//! built and calls a plugin only in those phases, so a phase no plugin of the route implements costs one
//! bit test per request. The default is every phase: always correct, only slower.
//!
//! # The early phase, and CORS preflights
//!
//! The early phase runs before the request phase, in chain order, for every request a route receives
//! (and for the global chain of a request no route matched): what answers there answers before any
//! credential is looked at. It is not run from Pingora's `early_request_filter`: that hook cannot answer
//! (it returns `Result<()>`, `proxy_trait.rs`) and runs before the request is routed, when no route's
//! chain is known yet.
//!
//! That is also why a CORS preflight is not a special case of the chain. A preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Method`) is a question about another request, so it belongs to
//! the route that request would take, which only routing can tell. The gateway therefore routes a request
//! that [announces another](announced_method) as the announced one and *offers* it to that route's early
//! phase, with [`EarlyView::routed_as`] set; no other phase runs for it (browsers send no credentials on a
//! preflight, so authentication and rate limits have nothing to check). The `cors` plugin answers it there
//! (`204`, or `403` for an origin, method or header it does not allow) and `ip_filter` refuses it for a
//! denied address. If no plugin answers the offer, the request goes on as routed by its own method, an
//! `OPTIONS` request, with a fresh state. A route whose chain has no early phase is never offered one.
//! So, as before there were phases, a preflight is answered by the `cors` of the route it asks about, or
//! goes where an `OPTIONS` request goes, and no plugin without an early phase (authentication, rate
//! limits) ever sees it.
//!
//! # Per-request state
//!
//! [`PluginState`] holds what plugins and the gateway share by contract: the [`Identity`], the upstream
//! header edits, query parameters to remove. Everything else a plugin keeps about a request is a typed
//! slot ([`PluginState::slot`]): a type private to the plugin's module, so no other plugin can read or
//! change it. A slot is per type: two entries of one plugin in a chain (a global and a route `body_limit`)
//! share it, which is how the smallest body limit wins.
//!
//! What a plugin computes from its config (header names, challenge headers, header values) is computed
//! when it is built, never per request; edits it always makes go into the state as one shared
//! [`HeaderEdit`] list ([`PluginState::edit_upstream_headers`]), and query parameters it always consumes
//! are declared ([`Plugin::removes_query_params`]) and collected by the chain.
//!
//! # Building
//!
//! Plugins are built at load time from YAML by a [`Registry`]. A plugin entry is either a bare name
//! (`- body_limit`) or a one-key map (`- jwt: { provider: demo }`). An unknown name or an unknown field is
//! a load-time error with file:line:col, never a plugin that silently does nothing. A user's own plugin is a
//! Rust type registered the same way as the built-ins; see `gateway/examples/custom_plugin.rs`.

pub mod apikey;
pub mod body_limit;
pub mod cors;
pub mod header_transform;
pub mod ip_filter;
pub mod jwt;
mod providers;
pub mod ratelimit;

use std::any::Any;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::config::sink::Scope;
use crate::error::GatewayError;

/// A set of phases ([`Plugin::phases`]). Combine with `|`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u16);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const EARLY: Phases = Phases(1);
    pub const REQUEST: Phases = Phases(1 << 1);
    pub const REQUEST_BODY: Phases = Phases(1 << 2);
    pub const SELECT_UPSTREAM: Phases = Phases(1 << 3);
    pub const UPSTREAM_REQUEST: Phases = Phases(1 << 4);
    pub const UPSTREAM_RESPONSE: Phases = Phases(1 << 5);
    pub const RESPONSE: Phases = Phases(1 << 6);
    pub const RESPONSE_BODY: Phases = Phases(1 << 7);
    pub const LOG: Phases = Phases(1 << 8);
    pub const ALL: Phases = Phases((1 << 9) - 1);

    const NAMES: [&'static str; 9] = [
        "early",
        "request",
        "request_body",
        "select_upstream",
        "upstream_request",
        "upstream_response",
        "response",
        "response_body",
        "log",
    ];

    /// Are all phases of `other` in `self`?
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets (usable in a `const`, unlike `|`).
    pub const fn with(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, other: Phases) -> Phases {
        self.with(other)
    }
}

impl std::fmt::Debug for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = Self::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n);
        f.debug_set().entries(names).finish()
    }
}

/// What a phase that may answer decided.
#[derive(Debug)]
pub enum Decision {
    /// Go on with the next plugin.
    Continue,
    /// Answer with this gateway error (JSON body) and stop.
    Deny(GatewayError),
    /// Answer with this response and stop.
    Reply(Reply),
}

/// A response a plugin makes itself (not an error): status, headers, optional body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What the upstream-selection phase decided.
#[derive(Debug)]
pub enum Pick {
    /// No opinion: the next plugin, then the route's balancer, decides.
    Balancer,
    /// Send the request to this address, with the route's upstream settings (timeouts, TLS, retries).
    /// The balancer and its health checks are not consulted: the plugin chose.
    Target(SocketAddr),
    /// Answer with this gateway error instead of proxying (e.g. 503 when no target fits).
    Deny(GatewayError),
}

/// Who the request was authenticated as, for plugins further down the chain (rate limits by subject or
/// consumer), the upstream headers, and the access log.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The JWT's `sub`, when authenticated by JWT.
    pub subject: Option<String>,
    /// The API key's consumer id, when authenticated by API key.
    pub consumer: Option<String>,
    /// All claims of a verified JWT.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// Per-request plugin state. Cheap to create: nothing here allocates until a plugin uses it.
#[derive(Default)]
pub struct PluginState {
    pub identity: Identity,
    /// Edits of the upstream request's headers, applied in the order the chain made them (after the
    /// gateway's own header handling). Kept here rather than applied to the upstream request later so
    /// that balancing (`hash_on: header:...`) sees the request as the plugins left it.
    upstream_headers: Vec<Edits>,
    /// Query parameters to remove upstream, decided per request (those a plugin always removes are
    /// declared with [`Plugin::removes_query_params`] instead).
    query_remove: Vec<String>,
    /// Typed slots: one value per type.
    slots: Vec<Box<dyn Any + Send + Sync>>,
}

/// One edit of the upstream request's headers.
#[derive(Debug, Clone)]
pub enum HeaderEdit {
    Remove(HeaderName),
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
}

/// One entry of the edit list: an edit made for this request, or a plugin's constant list.
enum Edits {
    One(HeaderEdit),
    Shared(Arc<[HeaderEdit]>),
}

impl PluginState {
    /// Remove `name` from the upstream request (e.g. a client's copy of an identity header).
    pub fn remove_upstream_header(&mut self, name: HeaderName) {
        self.upstream_headers
            .push(Edits::One(HeaderEdit::Remove(name)));
    }
    /// Set `name` on the upstream request, replacing any value.
    pub fn set_upstream_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.upstream_headers
            .push(Edits::One(HeaderEdit::Set(name, value)));
    }
    /// Add a value of `name` to the upstream request.
    pub fn append_upstream_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.upstream_headers
            .push(Edits::One(HeaderEdit::Append(name, value)));
    }
    /// Apply a list of edits built with the plugin (one reference count, however long the list).
    pub fn edit_upstream_headers(&mut self, edits: &Arc<[HeaderEdit]>) {
        if !edits.is_empty() {
            self.upstream_headers.push(Edits::Shared(edits.clone()));
        }
    }

    /// Every upstream header edit, in the order made.
    pub fn upstream_edits(&self) -> impl Iterator<Item = &HeaderEdit> {
        self.upstream_headers.iter().flat_map(|e| match e {
            Edits::One(e) => std::slice::from_ref(e),
            Edits::Shared(list) => &list[..],
        })
    }

    /// The (first) value header `name` will have upstream, when the client sent `client`.
    pub fn upstream_header<'a>(
        &'a self,
        name: &HeaderName,
        client: Option<&'a HeaderValue>,
    ) -> Option<&'a HeaderValue> {
        let mut v = client;
        for e in self.upstream_edits() {
            match e {
                HeaderEdit::Remove(n) if n == name => v = None,
                HeaderEdit::Set(n, x) if n == name => v = Some(x),
                HeaderEdit::Append(n, x) if n == name && v.is_none() => v = Some(x),
                _ => {}
            }
        }
        v
    }

    /// Apply the chain's header edits to the upstream request's headers (the map itself, see
    /// `headers::edit_request`: no name parsed again).
    pub fn apply_upstream_headers(&self, h: &mut http::HeaderMap) {
        for e in self.upstream_edits() {
            match e {
                HeaderEdit::Remove(n) => {
                    h.remove(n);
                }
                HeaderEdit::Set(n, v) => {
                    h.insert(n.clone(), v.clone());
                }
                HeaderEdit::Append(n, v) => {
                    h.append(n.clone(), v.clone());
                }
            }
        }
    }

    /// Remove query parameter `name` from the upstream request (this request only).
    pub fn remove_query_param(&mut self, name: impl Into<String>) {
        self.query_remove.push(name.into());
    }

    /// The query parameters removed for this request only (see [`Chain::query_params_removed`]).
    pub fn query_params_removed(&self) -> &[String] {
        &self.query_remove
    }

    /// The slot of type `T`, if a plugin filled it.
    pub fn slot<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.slots.iter().find_map(|s| s.downcast_ref::<T>())
    }

    /// The slot of type `T`, to change it.
    pub fn slot_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.slots.iter_mut().find_map(|s| s.downcast_mut::<T>())
    }

    /// The slot of type `T`, filled with `make()` first if it is empty.
    pub fn slot_or_insert_with<T: Any + Send + Sync>(
        &mut self,
        make: impl FnOnce() -> T,
    ) -> &mut T {
        let i = match self.slots.iter().position(|s| s.is::<T>()) {
            Some(i) => i,
            None => {
                self.slots.push(Box::new(make()));
                self.slots.len() - 1
            }
        };
        match self.slots[i].downcast_mut::<T>() {
            Some(v) => v,
            // Slot `i` was found holding a `T`, or a `T` was just put there.
            None => unreachable!("slot {i} holds a {}", std::any::type_name::<T>()),
        }
    }

    /// Put `value` in its slot; returns what was there.
    pub fn set_slot<T: Any + Send + Sync>(&mut self, value: T) -> Option<T> {
        let old = self.take_slot::<T>();
        self.slots.push(Box::new(value));
        old
    }

    /// Empty the slot of type `T`; returns what was there.
    pub fn take_slot<T: Any + Send + Sync>(&mut self) -> Option<T> {
        let i = self.slots.iter().position(|s| s.is::<T>())?;
        self.slots.swap_remove(i).downcast::<T>().ok().map(|b| *b)
    }
}

/// What a plugin sees of the request in the request phase.
pub struct RequestView<'a> {
    pub req: &'a RequestHeader,
    /// The client address, after `trusted_proxies` were applied.
    pub client_ip: IpAddr,
    /// The normalized request path.
    pub path: &'a str,
    pub route: &'a str,
    /// For log lines about this request.
    pub request_id: &'a str,
}

/// What a plugin sees in the early phase: the request, and how it was routed.
pub struct EarlyView<'a> {
    pub request: RequestView<'a>,
    /// Set when the request was routed as the request it announces rather than as itself: a CORS
    /// preflight offered to the route of the request it asks about (see the module doc). Only the early
    /// phase runs for such a request; a plugin that does not answer it leaves it to be routed as itself.
    pub routed_as: Option<&'a Method>,
}

impl<'a> std::ops::Deref for EarlyView<'a> {
    type Target = RequestView<'a>;
    fn deref(&self) -> &RequestView<'a> {
        &self.request
    }
}

/// What a plugin sees when the upstream target is chosen.
pub struct UpstreamView<'a> {
    pub request: RequestView<'a>,
    /// The route's upstream (its settings apply to whatever target is picked).
    pub upstream: &'a str,
    /// 0 for the first try; Pingora asks again after a failed connect while retries are left, so a
    /// plugin can pick another target then.
    pub attempt: u32,
    /// The target of the previous (failed) try.
    pub previous: Option<SocketAddr>,
}

impl<'a> std::ops::Deref for UpstreamView<'a> {
    type Target = RequestView<'a>;
    fn deref(&self) -> &RequestView<'a> {
        &self.request
    }
}

/// The method a request announces when it asks about another request: a CORS preflight (`OPTIONS` with
/// `Origin` and `Access-Control-Request-Method`, Fetch standard §3.2.2). The gateway routes such a request
/// by this method and offers it to that route's early phase.
pub fn announced_method(req: &RequestHeader) -> Option<Method> {
    if req.method != Method::OPTIONS || !req.headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    let m = req
        .headers
        .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(m.as_bytes()).ok()
}

/// One plugin. Every phase has a default that does nothing, so a plugin implements only its phases and
/// says which in [`Plugin::phases`]. Phases run in the order they are declared here.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The registered name (for logs and `tollgate routes`).
    fn name(&self) -> &'static str;

    /// The phases this plugin implements; the chain calls it in no other. The default, every phase, is
    /// always correct; declaring fewer makes the others free.
    fn phases(&self) -> Phases {
        Phases::ALL
    }

    /// Query parameters this plugin always removes from what goes upstream (credentials sent in the
    /// query). Asked once, when the chain is built.
    fn removes_query_params(&self) -> &[String] {
        &[]
    }

    /// Before the request phase, for every request of the route, and the only phase that runs for a
    /// request offered to this route as the one it announces ([`EarlyView::routed_as`]). May answer.
    async fn early(&self, _req: &EarlyView<'_>, _state: &mut PluginState) -> Decision {
        Decision::Continue
    }

    /// The request phase. Runs before any upstream is chosen. May answer.
    async fn request(&self, _req: &RequestView<'_>, _state: &mut PluginState) -> Decision {
        Decision::Continue
    }

    /// A chunk of the request body on its way upstream (`None` at the end). An error is answered if
    /// no response was sent yet, and the upstream request is aborted.
    fn request_body(
        &self,
        _chunk: Option<&Bytes>,
        _state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Choose the target: the first plugin that picks one wins; when none does, the route's balancer
    /// picks a healthy one. Asked again for each retry after a failed connect.
    async fn select_upstream(&self, _req: &UpstreamView<'_>, _state: &mut PluginState) -> Pick {
        Pick::Balancer
    }

    /// The request about to be sent upstream (after the gateway's own header handling).
    fn upstream_request(&self, _up: &mut RequestHeader, _state: &PluginState) {}

    /// The upstream's response head, before anything of it is sent (not for `1xx` or a `101`). May edit
    /// it, or replace the whole answer (`Deny`, `Reply`): the upstream's body is then dropped and the
    /// replacement's sent instead, and the plugins after this one are not asked. The [`response`] phase
    /// then runs on whatever is sent.
    ///
    /// [`response`]: Plugin::response
    async fn upstream_response(
        &self,
        _resp: &mut ResponseHeader,
        _req: &RequestHeader,
        _state: &mut PluginState,
    ) -> Decision {
        Decision::Continue
    }

    /// Response headers on their way to the client: the upstream's (or their replacement), and the
    /// gateway's own answers (errors and replies), so CORS and header transforms apply to all.
    fn response(&self, _resp: &mut ResponseHeader, _req: &RequestHeader, _state: &PluginState) {}

    /// A chunk of the response body on its way to the client (`end`: the last one; `None` may come at
    /// the end). May change or drop it (set it to `None`). A filter that changes the length must have
    /// replaced `Content-Length` with `Transfer-Encoding: chunked` in a response phase (with neither,
    /// Pingora sends the body close-delimited: pingora-core `init_body_writer_comm`). Runs on the
    /// upstream's body or a replacement's, never on a tunnel's bytes. An error aborts the response (its
    /// head is already sent).
    fn response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end: bool,
        _state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// After the response was sent (or the request failed), with the final status: for plugins that
    /// account for what happened (metrics, audit logs).
    fn log(&self, _status: u16, _state: &PluginState) {}

    /// What this plugin would decide for `req`, worked out offline for `tollgate explain` and
    /// `tollgate test`: no network, no counting, no state. `None` (the default) says the plugin cannot
    /// tell without running; explain then shows only its name. Never called by the proxy, so it costs
    /// the request path nothing.
    fn explain(&self, _req: &ExplainRequest<'_>) -> Option<Verdict> {
        None
    }

    /// The error codes of the 401 and 403 answers this plugin can give: the `reason` labels of its
    /// `tollgate_auth_failures_total` series, which start at 0 when a snapshot using it is installed
    /// (a dashboard's `rate()` needs the series before the first failure). Default: none.
    fn auth_failure_reasons(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The request as [`Plugin::explain`] sees it: what the proxy's request phase would hand over, plus
/// what an offline run cannot know by itself.
pub struct ExplainRequest<'a> {
    pub req: &'a RequestHeader,
    /// The client address `tollgate explain` assumes (`--client-ip`, default 127.0.0.1).
    pub client_ip: IpAddr,
    /// The normalized path.
    pub path: &'a str,
    pub route: &'a str,
    /// `--token-claims`: assume the request carries a token that verifies, with these claims (so a
    /// config author needs neither a secret nor a JWKS endpoint to ask what a caller may do).
    /// Claims the chain holds so far: `--token-claims`, or those of a token an earlier plugin verified.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// The API-key consumer an earlier plugin established.
    pub consumer: Option<&'a str>,
}

/// What a plugin would decide offline ([`Plugin::explain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// The status the plugin would answer with itself (401, 403, 413, 429, 204...); `None`: the
    /// request goes on to the next plugin.
    pub answers: Option<u16>,
    /// One line for a person: why, and with what (keys, policies, claims).
    pub note: String,
    /// Headers it would set on the request sent upstream (e.g. forwarded claims).
    pub upstream_headers: Vec<(String, String)>,
    /// The identity it established, which later plugins see (a rate limit keyed by a claim).
    #[serde(skip)]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip)]
    pub consumer: Option<String>,
}

impl Verdict {
    /// Goes on, with `note`.
    pub fn pass(note: impl Into<String>) -> Verdict {
        Verdict {
            note: note.into(),
            ..Verdict::default()
        }
    }

    /// Answers `status` itself, with `note`.
    pub fn answer(status: u16, note: impl Into<String>) -> Verdict {
        Verdict {
            answers: Some(status),
            note: note.into(),
            ..Verdict::default()
        }
    }
}

/// The plugins a route runs, global ones first, with what was computed about them when it was built.
#[derive(Clone, Default)]
pub struct Chain {
    plugins: Vec<(Arc<dyn Plugin>, Phases)>,
    /// Every phase some plugin implements.
    phases: Phases,
    /// Query parameters the plugins always remove ([`Plugin::removes_query_params`]).
    query_remove: Box<[String]>,
}

/// Run an answering phase over the plugins of `$chain` that implement it, until one answers: returns
/// the decision and the plugin that made it.
macro_rules! until_answered {
    ($chain:expr, $phase:expr, |$p:ident| $call:expr) => {{
        for $p in $chain.running($phase) {
            match $call {
                Decision::Continue => {}
                other => return (other, $p.name()),
            }
        }
        (Decision::Continue, "")
    }};
}

impl Chain {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Chain {
        let plugins: Vec<(Arc<dyn Plugin>, Phases)> = plugins
            .into_iter()
            .map(|p| {
                let phases = p.phases();
                (p, phases)
            })
            .collect();
        let phases = plugins.iter().fold(Phases::NONE, |all, (_, p)| all | *p);
        let mut query_remove: Vec<String> = Vec::new();
        for (p, _) in &plugins {
            for q in p.removes_query_params() {
                if !query_remove.contains(q) {
                    query_remove.push(q.clone());
                }
            }
        }
        Chain {
            plugins,
            phases,
            query_remove: query_remove.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|(p, _)| p.name()).collect()
    }

    /// Every plugin, in the order it runs: for `tollgate explain`, which asks each what it would decide.
    pub fn plugins(&self) -> impl Iterator<Item = &dyn Plugin> + '_ {
        self.plugins.iter().map(|(p, _)| &**p)
    }

    /// Every phase some plugin of this chain implements.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// Query parameters removed from every request this chain passes upstream.
    pub fn query_params_removed(&self) -> &[String] {
        &self.query_remove
    }

    /// The plugins that implement `phase`, in order; nothing to walk when none does.
    fn running(&self, phase: Phases) -> impl Iterator<Item = &dyn Plugin> + '_ {
        let plugins = if self.phases.contains(phase) {
            &self.plugins[..]
        } else {
            &[]
        };
        plugins
            .iter()
            .filter(move |(_, implemented)| implemented.contains(phase))
            .map(|(p, _)| &**p)
    }

    /// Run the early phase until a plugin answers; returns the decision and the plugin that made it.
    pub async fn early(
        &self,
        req: &EarlyView<'_>,
        state: &mut PluginState,
    ) -> (Decision, &'static str) {
        until_answered!(self, Phases::EARLY, |p| p.early(req, state).await)
    }

    /// Run the request phase until a plugin answers; returns the decision and the plugin that made it.
    pub async fn request(
        &self,
        req: &RequestView<'_>,
        state: &mut PluginState,
    ) -> (Decision, &'static str) {
        until_answered!(self, Phases::REQUEST, |p| p.request(req, state).await)
    }

    pub fn request_body(
        &self,
        chunk: Option<&Bytes>,
        state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        for p in self.running(Phases::REQUEST_BODY) {
            p.request_body(chunk, state)?;
        }
        Ok(())
    }

    /// The first plugin's pick of a target (or refusal); [`Pick::Balancer`] when none has one.
    pub async fn select_upstream(&self, req: &UpstreamView<'_>, state: &mut PluginState) -> Pick {
        for p in self.running(Phases::SELECT_UPSTREAM) {
            match p.select_upstream(req, state).await {
                Pick::Balancer => {}
                other => return other,
            }
        }
        Pick::Balancer
    }

    pub fn upstream_request(&self, up: &mut RequestHeader, state: &PluginState) {
        for p in self.running(Phases::UPSTREAM_REQUEST) {
            p.upstream_request(up, state);
        }
    }

    /// Run the upstream-response phase until a plugin replaces the answer; returns the decision and the
    /// plugin that made it.
    pub async fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        req: &RequestHeader,
        state: &mut PluginState,
    ) -> (Decision, &'static str) {
        until_answered!(self, Phases::UPSTREAM_RESPONSE, |p| p
            .upstream_response(resp, req, state)
            .await)
    }

    pub fn response(&self, resp: &mut ResponseHeader, req: &RequestHeader, state: &PluginState) {
        for p in self.running(Phases::RESPONSE) {
            p.response(resp, req, state);
        }
    }

    pub fn response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        for p in self.running(Phases::RESPONSE_BODY) {
            p.response_body(body, end, state)?;
        }
        Ok(())
    }

    pub fn log(&self, status: u16, state: &PluginState) {
        for p in self.running(Phases::LOG) {
            p.log(status, state);
        }
    }
}

/// A problem building a plugin from its config: a message, at a field path relative to the plugin's
/// config (empty for the config as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub path: String,
    pub message: String,
    /// Best shown at the key rather than the value (an unknown field).
    pub at_key: bool,
    /// The problem was reported already (the plugin names a provider whose own definition is broken):
    /// nothing more is said about it.
    pub reported: bool,
}

impl From<crate::config::de::Problem> for BuildError {
    fn from(p: crate::config::de::Problem) -> Self {
        BuildError {
            at_key: p.at_key(),
            path: p.path,
            message: p.error.to_string(),
            reported: false,
        }
    }
}

impl BuildError {
    pub fn new(message: impl Into<String>) -> Self {
        Self::at("", message)
    }
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        BuildError {
            path: path.into(),
            message: message.into(),
            at_key: false,
            reported: false,
        }
    }
    /// An error already reported elsewhere (see [`BuildError::reported`]).
    pub fn already_reported() -> Self {
        BuildError {
            reported: true,
            ..Self::new("")
        }
    }
}

/// The named providers plugins refer to: auth providers, rate-limit policies and their store, compiled
/// from their own sections before any plugin is built.
#[derive(Default)]
pub struct Providers {
    pub jwt: BTreeMap<String, Arc<jwt::Provider>>,
    pub api_keys: BTreeMap<String, Arc<apikey::KeySet>>,
    pub rate_limits: BTreeMap<String, Arc<ratelimit::Policy>>,
    pub redis: Option<Arc<ratelimit::RedisStore>>,
    /// Providers defined in the file that failed to load (already reported), so plugins naming them
    /// are not reported a second time.
    pub failed: std::collections::BTreeSet<String>,
    /// A `redis` section is in the file (whether or not its store compiled): a policy with
    /// `store: redis` is then not reported for lacking one.
    pub redis_configured: bool,
    /// What the sections of custom plugins compiled into, by type (`ext.insert(MyKeys(..))` in a
    /// section compiler, `ctx.ext.get::<MyKeys>()` in the plugin's factory).
    pub ext: http::Extensions,
}

/// Compiles one top-level section that a family of plugins owns into [`Providers`]: its value as
/// written, its scope in the file, the providers so far (sections compile in registration order), and
/// the running snapshot's providers on a reload (to keep what they learned).
type SectionCompiler =
    Box<dyn Fn(&Value, &Scope, &mut Providers, Option<&Providers>) + Send + Sync>;

/// What a plugin factory sees besides its own config: the [`Providers`] (through `Deref`), and the
/// scope of its config in the file ([`BuildContext::at`]) for problems beyond the one a returned
/// [`BuildError`] carries: warnings, or several errors at once (then return
/// [`BuildError::already_reported`]).
pub struct BuildContext<'a> {
    providers: &'a Providers,
    at: Scope<'a>,
}

impl<'a> BuildContext<'a> {
    pub fn new(providers: &'a Providers, at: Scope<'a>) -> Self {
        BuildContext { providers, at }
    }

    /// Outside a config file (tests, tools): problems reported through [`BuildContext::at`] go nowhere.
    pub fn detached(providers: &'a Providers) -> Self {
        Self::new(providers, Scope::detached())
    }

    /// The plugin's config in the file: `at().at("field").warning(..)`.
    pub fn at(&self) -> &Scope<'a> {
        &self.at
    }
}

impl std::ops::Deref for BuildContext<'_> {
    type Target = Providers;
    fn deref(&self) -> &Providers {
        self.providers
    }
}

impl Providers {
    pub fn jwt_provider(&self, name: &str) -> Result<Arc<jwt::Provider>, BuildError> {
        if self.failed.contains(name) {
            return Err(BuildError::already_reported());
        }
        self.jwt.get(name).cloned().ok_or_else(|| {
            BuildError::at(
                "provider",
                format!(
                    "unknown JWT provider `{name}` (defined under auth.jwt: {})",
                    list(self.jwt.keys())
                ),
            )
        })
    }
    pub fn api_key_set(&self, name: &str) -> Result<Arc<apikey::KeySet>, BuildError> {
        if self.failed.contains(name) {
            return Err(BuildError::already_reported());
        }
        self.api_keys.get(name).cloned().ok_or_else(|| {
            BuildError::at(
                "provider",
                format!(
                    "unknown API key set `{name}` (defined under auth.api_keys: {})",
                    list(self.api_keys.keys())
                ),
            )
        })
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

type Factory =
    Box<dyn Fn(Value, &BuildContext) -> Result<Arc<dyn Plugin>, BuildError> + Send + Sync>;

/// [`Registry::register`] refused a name: a plugin of that name is registered already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterError {
    pub name: &'static str,
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a plugin named `{}` is registered already; give yours another name",
            self.name
        )
    }
}

impl std::error::Error for RegisterError {}

/// Plugins by name, and the top-level config sections they own. [`Registry::builtin`] has the
/// built-ins; add your own with [`Registry::register`] and [`Registry::register_section`].
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
    sections: Vec<(&'static str, SectionCompiler)>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Registry {
        Registry {
            factories: BTreeMap::new(),
            sections: Vec::new(),
        }
    }

    /// Own the top-level config section `key`: `compile` turns it into providers for your plugins
    /// (see [`Providers::ext`]). Sections compile in the order registered, before any plugin is
    /// built; a top-level key that no one registered (and that is not one of the core's) is an
    /// unknown field. A key registered already, or a core key, is refused.
    pub fn register_section<F>(
        &mut self,
        key: &'static str,
        compile: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(&Value, &Scope, &mut Providers, Option<&Providers>) + Send + Sync + 'static,
    {
        if crate::config::raw::CORE_KEYS.contains(&key)
            || self.sections.iter().any(|(k, _)| *k == key)
        {
            return Err(RegisterError { name: key });
        }
        self.sections.push((key, Box::new(compile)));
        Ok(())
    }

    /// The registered sections' keys, in compile order.
    pub fn section_keys(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.sections.iter().map(|(k, _)| *k)
    }

    /// Compile every registered section present in `sections` (the file's non-core top-level keys)
    /// and report the keys nobody owns. `root` is the file's scope.
    pub fn compile_sections(
        &self,
        sections: &BTreeMap<String, Value>,
        root: &Scope,
        previous: Option<&Providers>,
    ) -> Providers {
        let mut out = Providers::default();
        for (key, compile) in &self.sections {
            if let Some(v) = sections.get(*key) {
                compile(v, &root.at(key), &mut out, previous);
            }
        }
        for key in sections.keys() {
            if self.sections.iter().any(|(k, _)| k == key) {
                continue;
            }
            let known: Vec<&str> = crate::config::raw::CORE_KEYS
                .iter()
                .copied()
                .chain(self.section_keys())
                .collect();
            root.at(key)
                .error_at_key(crate::config::de::unknown("field", key, &known));
        }
        out
    }

    /// The built-in plugins: `jwt`, `api_key`, `cors`, `ip_filter`, `body_limit`, `headers`, `rate_limit`.
    pub fn builtin() -> Registry {
        let mut r = Registry::empty();
        let added = [
            r.register("jwt", jwt::JwtAuth::build),
            r.register("api_key", apikey::ApiKeyAuth::build),
            r.register("cors", cors::Cors::build),
            r.register("ip_filter", ip_filter::IpFilter::build),
            r.register("body_limit", body_limit::BodyLimit::build),
            r.register("headers", header_transform::HeaderTransform::build),
            r.register("rate_limit", ratelimit::RateLimit::build),
            // `redis` before `rate_limits`, whose policies may use its store.
            r.register_section("auth", providers::auth),
            r.register_section("redis", providers::redis),
            r.register_section("rate_limits", providers::rate_limits),
        ];
        // Different names into an empty registry (the `builtin_names` test).
        debug_assert!(added.iter().all(Result::is_ok));
        r
    }

    /// Register a plugin by name. Its config is deserialized into `C` (use `#[serde(deny_unknown_fields)]`
    /// so typos are errors); a bare `- name` entry deserializes `C` from an empty map.
    ///
    /// A name that is already registered is refused and the registry keeps the plugin it had: a custom
    /// build that registers `jwt` again must not quietly swap the built-in for another `jwt`. It is an
    /// error rather than a panic because a registry is built by the embedding program, which decides
    /// how to stop (the example prints it and exits with a failure).
    pub fn register<C, P, F>(&mut self, name: &'static str, build: F) -> Result<(), RegisterError>
    where
        C: DeserializeOwned,
        P: Plugin,
        F: Fn(C, &BuildContext) -> Result<P, BuildError> + Send + Sync + 'static,
    {
        let factory = move |v: Value, ctx: &BuildContext| -> Result<Arc<dyn Plugin>, BuildError> {
            let v = if v.is_null() {
                Value::Mapping(Default::default())
            } else {
                v
            };
            // Every problem of the config, each at its place; what is left of it is still built, so
            // that its other problems show in the same run.
            let (cfg, mut problems) = crate::config::de::collect::<C>(v);
            if ctx.at().is_detached() && !problems.is_empty() {
                return Err(BuildError::from(problems.swap_remove(0)));
            }
            for p in &problems {
                ctx.at().problem(p);
            }
            let built = build(cfg.ok_or_else(BuildError::already_reported)?, ctx)?;
            if !problems.is_empty() {
                return Err(BuildError::already_reported());
            }
            Ok(Arc::new(built) as Arc<dyn Plugin>)
        };
        match self.factories.entry(name) {
            std::collections::btree_map::Entry::Occupied(_) => Err(RegisterError { name }),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Box::new(factory));
                Ok(())
            }
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }

    /// Build one plugin entry (`name` or `{ name: config }`) outside a config file. Errors carry a path
    /// relative to the entry.
    pub fn build(
        &self,
        entry: &Value,
        providers: &Providers,
    ) -> Result<Arc<dyn Plugin>, BuildError> {
        self.try_build(entry, providers, &Scope::detached())
    }

    /// Build the plugin entry at `at`, reporting its problems there; `None` when it does not build.
    pub fn build_at(
        &self,
        entry: &Value,
        providers: &Providers,
        at: &Scope,
    ) -> Option<Arc<dyn Plugin>> {
        match self.try_build(entry, providers, at) {
            Ok(p) => Some(p),
            // E.g. a provider that failed to compile, reported where it is defined.
            Err(e) if e.reported => None,
            Err(e) => {
                let here = at.sub(&e.path);
                if e.at_key {
                    here.error_at_key(e.message);
                } else {
                    here.error(e.message);
                }
                None
            }
        }
    }

    fn try_build(
        &self,
        entry: &Value,
        providers: &Providers,
        at: &Scope,
    ) -> Result<Arc<dyn Plugin>, BuildError> {
        let (name, cfg) =
            match entry {
                Value::String(name) => (name.as_str(), Value::Null),
                Value::Mapping(m) if m.len() == 1 => {
                    let Some((k, v)) = m.iter().next() else {
                        return Err(BuildError::new("empty plugin entry"));
                    };
                    match k.as_str() {
                        Some(name) => (name, v.clone()),
                        None => return Err(BuildError::new("a plugin name must be a string")),
                    }
                }
                _ => return Err(BuildError::new(
                    "a plugin is a name (`- cors`) or a one-key map (`- jwt: { provider: demo }`)",
                )),
            };
        let Some(factory) = self.factories.get(name) else {
            let names = self.names();
            return Err(BuildError::new(crate::config::de::unknown(
                "plugin", name, &names,
            )));
        };
        factory(cfg, &BuildContext::new(providers, at.at(name))).map_err(|mut e| {
            e.path = if e.path.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{}", e.path)
            };
            e
        })
    }
}

/// A header name from config, with a clear error.
pub(crate) fn header_name(s: &str, at: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(s.trim().as_bytes())
        .map_err(|_| BuildError::at(at, format!("`{s}` is not a valid header name")))
}

/// A header value from config, with a clear error.
pub(crate) fn header_value(s: &str, at: &str) -> Result<HeaderValue, BuildError> {
    HeaderValue::from_str(s).map_err(|_| BuildError::at(at, "not a valid header value"))
}

/// Values of a query parameter in `query` (raw, not percent-decoded: credentials are compared as sent).
pub(crate) fn query_params<'a>(
    query: Option<&'a str>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(move |pair| match pair.split_once('=') {
            Some((k, v)) if k == name => Some(v),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// `query` without the parameters in `remove`; `None` when nothing is left.
pub fn strip_query(query: &str, remove: &[String]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !remove.iter().any(|r| r == k)
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_helpers() {
        let q = Some("a=1&api_key=s3&b&api_key=x");
        assert_eq!(query_params(q, "api_key").collect::<Vec<_>>(), ["s3", "x"]);
        assert_eq!(query_params(q, "b").collect::<Vec<_>>(), [""]);
        assert_eq!(
            strip_query("a=1&api_key=s3&b", &["api_key".into()]).as_deref(),
            Some("a=1&b")
        );
        assert_eq!(strip_query("api_key=s3", &["api_key".into()]), None);
    }

    #[test]
    fn unknown_plugin_and_bad_entry() {
        let r = Registry::builtin();
        let ctx = Providers::default();
        let e = r.build(&Value::String("nope".into()), &ctx).err().unwrap();
        assert!(e
            .message
            .starts_with("unknown plugin `nope`, expected one of `api_key`"));
        let e = r.build(&Value::Bool(true), &ctx).err().unwrap();
        assert!(e.message.contains("one-key map"));
        let v: Value = serde_yaml_ng::from_str("body_limit: { max: 1KiB, extra: 1 }").unwrap();
        let e = r.build(&v, &ctx).err().unwrap();
        assert_eq!(e.path, "body_limit.extra");
        assert!(
            e.message.starts_with("unknown field `extra`"),
            "{}",
            e.message
        );
    }

    /// What a plugin sees of `req` from `client_ip`, on route `r`.
    pub(super) fn view<'a>(req: &'a RequestHeader, client_ip: &str) -> RequestView<'a> {
        RequestView {
            req,
            client_ip: client_ip.parse().unwrap(),
            path: "/",
            route: "r",
            request_id: "t",
        }
    }

    #[test]
    fn builtin_names() {
        assert_eq!(
            Registry::builtin().names(),
            [
                "api_key",
                "body_limit",
                "cors",
                "headers",
                "ip_filter",
                "jwt",
                "rate_limit"
            ]
        );
    }

    /// A plugin that records every phase it is called in (`name:phase`), answers in one phase if told
    /// to, and tags each response chunk with its name.
    struct Probe {
        name: &'static str,
        phases: Phases,
        answers: Option<&'static str>,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Probe {
        fn saw(&self, phase: &str) -> bool {
            self.seen
                .lock()
                .unwrap()
                .push(format!("{}:{phase}", self.name));
            self.answers == Some(phase)
        }
    }

    #[async_trait]
    impl Plugin for Probe {
        fn name(&self) -> &'static str {
            self.name
        }
        fn phases(&self) -> Phases {
            self.phases
        }
        async fn early(&self, _req: &EarlyView<'_>, _state: &mut PluginState) -> Decision {
            match self.saw("early") {
                true => Decision::Deny(GatewayError::new(403, "probe", "early")),
                false => Decision::Continue,
            }
        }
        async fn request(&self, _req: &RequestView<'_>, _state: &mut PluginState) -> Decision {
            match self.saw("request") {
                true => Decision::Deny(GatewayError::new(403, "probe", "request")),
                false => Decision::Continue,
            }
        }
        fn request_body(
            &self,
            _chunk: Option<&Bytes>,
            _state: &mut PluginState,
        ) -> Result<(), GatewayError> {
            self.saw("request_body");
            Ok(())
        }
        async fn select_upstream(&self, _req: &UpstreamView<'_>, _state: &mut PluginState) -> Pick {
            match self.saw("select_upstream") {
                true => Pick::Target("127.0.0.1:9".parse().unwrap()),
                false => Pick::Balancer,
            }
        }
        fn upstream_request(&self, _up: &mut RequestHeader, _state: &PluginState) {
            self.saw("upstream_request");
        }
        async fn upstream_response(
            &self,
            _resp: &mut ResponseHeader,
            _req: &RequestHeader,
            _state: &mut PluginState,
        ) -> Decision {
            match self.saw("upstream_response") {
                true => Decision::Reply(Reply {
                    status: 502,
                    headers: vec![],
                    body: Bytes::from_static(b"replaced"),
                }),
                false => Decision::Continue,
            }
        }
        fn response(&self, _resp: &mut ResponseHeader, _req: &RequestHeader, _state: &PluginState) {
            self.saw("response");
        }
        fn response_body(
            &self,
            body: &mut Option<Bytes>,
            _end: bool,
            _state: &mut PluginState,
        ) -> Result<(), GatewayError> {
            self.saw("response_body");
            if let Some(b) = body.as_mut() {
                *b = Bytes::from(format!("{}+{}", String::from_utf8_lossy(b), self.name));
            }
            Ok(())
        }
        fn log(&self, _status: u16, _state: &PluginState) {
            self.saw("log");
        }
    }

    type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    fn probe(
        name: &'static str,
        phases: Phases,
        answers: Option<&'static str>,
        seen: &Seen,
    ) -> Arc<dyn Plugin> {
        Arc::new(Probe {
            name,
            phases,
            answers,
            seen: seen.clone(),
        })
    }

    /// Run every phase of `chain` once, as the gateway would for a proxied request; returns what each
    /// answering phase decided (by plugin name), the pick, and the response body.
    async fn run_all(chain: &Chain) -> (Vec<&'static str>, Pick, Option<Bytes>) {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut state = PluginState::default();
        let seen = || view(&req, "192.0.2.1");
        let early = EarlyView {
            request: seen(),
            routed_as: None,
        };
        let mut by = vec![chain.early(&early, &mut state).await.1];
        by.push(chain.request(&seen(), &mut state).await.1);
        chain
            .request_body(Some(&Bytes::from_static(b"x")), &mut state)
            .unwrap();
        let up = UpstreamView {
            request: seen(),
            upstream: "be",
            attempt: 0,
            previous: None,
        };
        let pick = chain.select_upstream(&up, &mut state).await;
        let mut upstream = RequestHeader::build("GET", b"/", None).unwrap();
        chain.upstream_request(&mut upstream, &state);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        by.push(chain.upstream_response(&mut resp, &req, &mut state).await.1);
        chain.response(&mut resp, &req, &state);
        let mut body = Some(Bytes::from_static(b"body"));
        chain.response_body(&mut body, true, &mut state).unwrap();
        chain.log(200, &state);
        (by, pick, body)
    }

    /// A plugin is called in the phases it declares and no other; one that declares nothing is called in
    /// every phase; the chain knows the union.
    #[tokio::test]
    async fn phases_not_declared_are_skipped() {
        let seen = Seen::default();
        let chain = Chain::new(vec![
            probe("a", Phases::REQUEST | Phases::LOG, None, &seen),
            probe("b", Phases::ALL, None, &seen),
            probe("c", Phases::NONE, None, &seen),
        ]);
        assert_eq!(chain.phases(), Phases::ALL);
        let (by, pick, body) = run_all(&chain).await;
        assert_eq!(by, ["", "", ""], "nobody answered");
        assert!(matches!(pick, Pick::Balancer));
        assert_eq!(body.as_deref(), Some(&b"body+b"[..]));
        let seen = seen.lock().unwrap().clone();
        let of = |n: &str| -> Vec<String> {
            seen.iter()
                .filter(|s| s.starts_with(&format!("{n}:")))
                .cloned()
                .collect()
        };
        assert_eq!(of("a"), ["a:request", "a:log"]);
        assert_eq!(
            of("b"),
            Phases::NAMES.map(|p| format!("b:{p}")),
            "every phase, in order"
        );
        assert!(of("c").is_empty());

        // A chain whose plugins implement only the request phase walks nothing in the others.
        let seen2 = Seen::default();
        let only = Chain::new(vec![probe("a", Phases::REQUEST, None, &seen2)]);
        assert_eq!(only.phases(), Phases::REQUEST);
        assert_eq!(format!("{:?}", only.phases()), "{\"request\"}");
        run_all(&only).await;
        assert_eq!(*seen2.lock().unwrap(), ["a:request"]);
    }

    /// An answer ends its phase: the plugins after the one that answered are not asked.
    #[tokio::test]
    async fn an_answer_ends_the_phase() {
        for (phase, at) in [("early", 0), ("request", 1), ("upstream_response", 2)] {
            let seen = Seen::default();
            let chain = Chain::new(vec![
                probe("a", Phases::ALL, Some(phase), &seen),
                probe("b", Phases::ALL, None, &seen),
            ]);
            let (by, _, _) = run_all(&chain).await;
            assert_eq!(by[at], "a", "{phase}");
            let seen = seen.lock().unwrap();
            assert!(seen.contains(&format!("a:{phase}")));
            assert!(!seen.contains(&format!("b:{phase}")), "{phase}: {seen:?}");
        }
        // The first pick of a target wins.
        let seen = Seen::default();
        let chain = Chain::new(vec![
            probe("a", Phases::SELECT_UPSTREAM, None, &seen),
            probe("b", Phases::SELECT_UPSTREAM, Some("select_upstream"), &seen),
            probe("c", Phases::SELECT_UPSTREAM, Some("select_upstream"), &seen),
        ]);
        let (_, pick, _) = run_all(&chain).await;
        assert!(matches!(pick, Pick::Target(a) if a.port() == 9), "{pick:?}");
        assert_eq!(
            *seen.lock().unwrap(),
            ["a:select_upstream", "b:select_upstream"]
        );
        // Body chunks go through every body filter in order.
        let seen = Seen::default();
        let chain = Chain::new(vec![
            probe("a", Phases::RESPONSE_BODY, None, &seen),
            probe("b", Phases::RESPONSE_BODY, None, &seen),
        ]);
        assert_eq!(run_all(&chain).await.2.as_deref(), Some(&b"body+a+b"[..]));
    }

    /// Slots are per type: what one plugin keeps is not another's, and each can be taken back.
    #[test]
    fn slots_are_isolated_by_type() {
        struct Mine(u32);
        struct Yours(u32);
        #[derive(Default)]
        struct Counter(u32);
        let mut state = PluginState::default();
        assert!(state.slot::<Mine>().is_none());
        assert!(state.set_slot(Mine(1)).is_none());
        state.set_slot(Yours(10));
        state.slot_mut::<Mine>().unwrap().0 += 1;
        assert_eq!(state.slot::<Mine>().unwrap().0, 2);
        assert_eq!(state.slot::<Yours>().unwrap().0, 10, "untouched");
        assert_eq!(state.set_slot(Mine(5)).map(|m| m.0), Some(2), "replaced");
        state.slot_or_insert_with(Counter::default).0 += 1;
        state.slot_or_insert_with(Counter::default).0 += 1;
        assert_eq!(state.slot::<Counter>().unwrap().0, 2);
        assert_eq!(state.take_slot::<Yours>().map(|y| y.0), Some(10));
        assert!(state.slot::<Yours>().is_none());
        assert_eq!(state.slot::<Mine>().unwrap().0, 5);
    }

    /// Two `body_limit`s in one chain: the smaller applies, and each chunk is counted once.
    #[test]
    fn body_limits_count_each_chunk_once() {
        let r = Registry::builtin();
        let ctx = Providers::default();
        let limit = |max: &str| {
            let v: Value =
                serde_yaml_ng::from_str(&format!("body_limit: {{ max: {max} }}")).unwrap();
            r.build(&v, &ctx).map_err(|e| e.message).unwrap()
        };
        let chain = Chain::new(vec![limit("100"), limit("50")]);
        let req = RequestHeader::build("POST", b"/", None).unwrap();
        let view = view(&req, "192.0.2.1");
        let mut state = PluginState::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(chain.request(&view, &mut state)).0,
            Decision::Continue
        ));
        let chunk = Bytes::from(vec![b'x'; 30]);
        assert!(
            chain.request_body(Some(&chunk), &mut state).is_ok(),
            "30 of 50"
        );
        let err = chain.request_body(Some(&chunk), &mut state).unwrap_err();
        assert_eq!(err.status, 413);
        assert_eq!(err.message, "the request body exceeds 50 bytes");
    }

    /// What the built-ins always remove is computed when the chain is built: query parameters in the
    /// chain, header removals as one shared list.
    #[tokio::test]
    async fn constant_edits_are_built_once() {
        let mut ctx = Providers::default();
        let keys: apikey::KeySetConfig = serde_yaml_ng::from_str(&format!(
            "{{ query: api_key, keys: [{{ id: acme, sha256: {} }}] }}",
            apikey::hash_key("s3cret")
        ))
        .unwrap();
        ctx.api_keys.insert(
            "p".into(),
            Arc::new(apikey::KeySet::build("p", &keys).unwrap()),
        );
        let r = Registry::builtin();
        let v: Value = serde_yaml_ng::from_str("api_key: { provider: p }").unwrap();
        let chain = Chain::new(vec![r.build(&v, &ctx).map_err(|e| e.message).unwrap()]);
        assert_eq!(chain.query_params_removed(), ["api_key"]);
        assert_eq!(chain.phases(), Phases::REQUEST);
        let req = RequestHeader::build("GET", b"/?api_key=s3cret", None).unwrap();
        let view = view(&req, "192.0.2.1");
        let mut state = PluginState::default();
        assert!(matches!(
            chain.request(&view, &mut state).await.0,
            Decision::Continue
        ));
        let consumer = HeaderName::from_static("x-consumer-id");
        let spoofed = HeaderValue::from_static("evil");
        assert_eq!(
            state.upstream_header(&consumer, Some(&spoofed)),
            Some(&HeaderValue::from_static("acme"))
        );
        assert_eq!(state.upstream_edits().count(), 3, "two removals, one set");
        assert_eq!(
            state.upstream_headers.len(),
            2,
            "the removals are one entry"
        );
        assert!(state.query_params_removed().is_empty());
    }

    /// A name that is taken is refused, and the registry keeps the plugin it had.
    #[test]
    fn register_refuses_a_taken_name() {
        let mut r = Registry::builtin();
        let fake = |_: serde::de::IgnoredAny,
                    _: &BuildContext|
         -> Result<body_limit::BodyLimit, BuildError> {
            Err(BuildError::new("the impostor was built"))
        };
        let e = r.register("jwt", fake).unwrap_err();
        assert_eq!(e, RegisterError { name: "jwt" });
        assert_eq!(
            e.to_string(),
            "a plugin named `jwt` is registered already; give yours another name"
        );
        let v: Value = serde_yaml_ng::from_str("jwt: { provider: demo }").unwrap();
        let built = r.build(&v, &Providers::default()).err().unwrap();
        assert!(
            built.message.starts_with("unknown JWT provider `demo`"),
            "still the built-in: {}",
            built.message
        );
        assert!(r.register("mine", fake).is_ok());
        assert!(r.register("mine", fake).is_err(), "not twice either");
    }
}
