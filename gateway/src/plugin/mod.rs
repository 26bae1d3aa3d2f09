//! The plugin chain: one trait, a registry of plugins by name, and the chain each route runs.
//!
//! A route's chain is the global `plugins:` list followed by the route's own, in config order. Each plugin
//! sees the request in `request_filter` and decides [`Decision::Continue`], [`Decision::Deny`] (a gateway
//! error such as 401/403/413) or [`Decision::Reply`] (a response of its own, such as a CORS preflight).
//! Per-request state lives in [`PluginState`], owned by the request, never in the plugin: plugins are
//! shared by every request of every worker thread.
//!
//! Plugins are built at load time from YAML by a [`Registry`]. A plugin entry is either a bare name
//! (`- request_size`) or a one-key map (`- jwt: { provider: demo }`). An unknown name or an unknown field is
//! a load-time error with file:line:col, never a plugin that silently does nothing. A user's own plugin is a
//! Rust type registered the same way as the built-ins; see `gateway/examples/custom_plugin.rs`.

pub mod apikey;
pub mod body_limit;
pub mod cors;
pub mod header_transform;
pub mod ip_filter;
pub mod jwt;
pub mod ratelimit;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::error::GatewayError;

/// What the request phase of a plugin decided.
#[derive(Debug)]
pub enum Decision {
    /// Go on with the next plugin, then proxy.
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
    pub upstream_headers: Vec<HeaderEdit>,
    /// Query parameters to remove from the upstream request (credentials given in the query).
    pub query_remove: Vec<String>,
    /// A CORS preflight routed by its `Access-Control-Request-Method`.
    pub preflight: bool,
    /// Request body limit in bytes, and the bytes seen so far.
    pub body_limit: Option<u64>,
    pub body_seen: u64,
    /// Rate-limit quotas of this request, for the `RateLimit` headers.
    pub quotas: Vec<ratelimit::Quota>,
    /// Things held until the request ends (concurrency slots).
    pub held: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// State of plugins the gateway does not know about (user plugins), by type.
    pub ext: http::Extensions,
}

/// One edit of the upstream request's headers.
#[derive(Debug, Clone)]
pub enum HeaderEdit {
    Remove(HeaderName),
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
}

impl PluginState {
    /// Remove `name` from the upstream request (e.g. a client's copy of an identity header).
    pub fn remove_upstream_header(&mut self, name: HeaderName) {
        self.upstream_headers.push(HeaderEdit::Remove(name));
    }
    /// Set `name` on the upstream request, replacing any value.
    pub fn set_upstream_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.upstream_headers.push(HeaderEdit::Set(name, value));
    }
    /// Add a value of `name` to the upstream request.
    pub fn append_upstream_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.upstream_headers.push(HeaderEdit::Append(name, value));
    }

    /// The (first) value header `name` will have upstream, when the client sent `client`.
    pub fn upstream_header<'a>(
        &'a self,
        name: &HeaderName,
        client: Option<&'a HeaderValue>,
    ) -> Option<&'a HeaderValue> {
        let mut v = client;
        for e in &self.upstream_headers {
            match e {
                HeaderEdit::Remove(n) if n == name => v = None,
                HeaderEdit::Set(n, x) if n == name => v = Some(x),
                HeaderEdit::Append(n, x) if n == name && v.is_none() => v = Some(x),
                _ => {}
            }
        }
        v
    }

    /// Apply the chain's header edits to the upstream request.
    pub fn apply_upstream_headers(&self, up: &mut RequestHeader) {
        for e in &self.upstream_headers {
            // Names and values were checked when they were made; insertion cannot fail.
            let _ = match e {
                HeaderEdit::Remove(n) => {
                    up.remove_header(n);
                    Ok(())
                }
                HeaderEdit::Set(n, v) => up.insert_header(n.clone(), v.clone()),
                HeaderEdit::Append(n, v) => up.append_header(n.clone(), v.clone()).map(|_| ()),
            };
        }
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

/// One plugin. Every method has a default that does nothing, so a plugin implements only its phases.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The registered name (for logs and `tollgate routes`).
    fn name(&self) -> &'static str;

    /// Whether this plugin answers CORS preflights. A route whose chain has one routes preflights by
    /// their requested method, and then only such plugins run for them.
    fn answers_preflight(&self) -> bool {
        false
    }

    /// The request phase, in chain order. Runs before any upstream is chosen.
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

    /// The request about to be sent upstream (after the gateway's own header handling).
    fn upstream_request(&self, _up: &mut RequestHeader, _state: &PluginState) {}

    /// Response headers on their way to the client: the upstream's, or the gateway's own answers
    /// (errors and replies), so CORS and header transforms apply to both.
    fn response(&self, _resp: &mut ResponseHeader, _req: &RequestHeader, _state: &PluginState) {}

    /// After the response was sent (or the request failed), with the final status: for plugins that
    /// account for what happened (metrics, audit logs).
    fn log(&self, _status: u16, _state: &PluginState) {}
}

/// The plugins a route runs, global ones first.
#[derive(Clone, Default)]
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
    preflight: bool,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Chain {
        let preflight = plugins.iter().any(|p| p.answers_preflight());
        Chain { plugins, preflight }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(|p| p.name()).collect()
    }

    /// Does a plugin of this chain answer CORS preflights?
    pub fn answers_preflight(&self) -> bool {
        self.preflight
    }

    /// Run the request phase until a plugin answers; returns the decision and the plugin that made it.
    pub async fn request(
        &self,
        req: &RequestView<'_>,
        state: &mut PluginState,
    ) -> (Decision, &'static str) {
        for p in &self.plugins {
            if state.preflight && !p.answers_preflight() {
                continue;
            }
            match p.request(req, state).await {
                Decision::Continue => {}
                other => return (other, p.name()),
            }
        }
        (Decision::Continue, "")
    }

    pub fn request_body(
        &self,
        chunk: Option<&Bytes>,
        state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        for p in &self.plugins {
            p.request_body(chunk, state)?;
        }
        Ok(())
    }

    pub fn upstream_request(&self, up: &mut RequestHeader, state: &PluginState) {
        for p in &self.plugins {
            p.upstream_request(up, state);
        }
    }

    pub fn response(&self, resp: &mut ResponseHeader, req: &RequestHeader, state: &PluginState) {
        for p in &self.plugins {
            p.response(resp, req, state);
        }
    }

    pub fn log(&self, status: u16, state: &PluginState) {
        for p in &self.plugins {
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

/// What a plugin factory can see besides its own config: the named auth providers.
#[derive(Default)]
pub struct BuildContext {
    pub jwt: BTreeMap<String, Arc<jwt::Provider>>,
    pub api_keys: BTreeMap<String, Arc<apikey::KeySet>>,
    pub rate_limits: BTreeMap<String, Arc<ratelimit::Policy>>,
    pub redis: Option<Arc<ratelimit::RedisStore>>,
    /// Providers defined in the file that failed to load (already reported), so plugins naming them
    /// are not reported a second time.
    pub failed: std::collections::BTreeSet<String>,
}

impl BuildContext {
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

/// Plugins by name. [`Registry::builtin`] has the built-ins; add your own with [`Registry::register`].
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Registry {
        Registry {
            factories: BTreeMap::new(),
        }
    }

    /// The built-in plugins: `jwt`, `api_key`, `cors`, `ip_filter`, `body_limit`, `headers`, `rate_limit`.
    pub fn builtin() -> Registry {
        let mut r = Registry::empty();
        r.register("jwt", jwt::JwtAuth::build);
        r.register("api_key", apikey::ApiKeyAuth::build);
        r.register("cors", cors::Cors::build);
        r.register("ip_filter", ip_filter::IpFilter::build);
        r.register("body_limit", body_limit::BodyLimit::build);
        r.register("headers", header_transform::HeaderTransform::build);
        r.register("rate_limit", ratelimit::RateLimit::build);
        r
    }

    /// Register a plugin by name. Its config is deserialized into `C` (use `#[serde(deny_unknown_fields)]`
    /// so typos are errors); a bare `- name` entry deserializes `C` from an empty map.
    pub fn register<C, P, F>(&mut self, name: &'static str, build: F)
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
            let cfg: C = crate::config::de::from_value(v).map_err(BuildError::from)?;
            Ok(Arc::new(build(cfg, ctx)?) as Arc<dyn Plugin>)
        };
        self.factories.insert(name, Box::new(factory));
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.factories.keys().copied().collect()
    }

    /// Build one plugin entry (`name` or `{ name: config }`). Errors carry a path relative to the entry.
    pub fn build(&self, entry: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, BuildError> {
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
            return Err(BuildError::new(
                match crate::config::de::did_you_mean(name, names.iter().copied()) {
                    Some(m) => format!("unknown plugin `{name}`: did you mean `{m}`?"),
                    None => format!(
                        "unknown plugin `{name}`, expected one of {}",
                        names
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            ));
        };
        factory(cfg, ctx).map_err(|mut e| {
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
        let ctx = BuildContext::default();
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
}
