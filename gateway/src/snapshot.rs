//! A config compiled for serving: router, routes, upstream pools and server settings, immutable.
//!
//! This is the runtime model, what a request reads; [`crate::compile`] builds it and reports every
//! problem with its place, and a snapshot exists only if the file was entirely valid. The proxy holds the current snapshot in an `ArcSwap` and each
//! request keeps the `Arc` it started with, so a reload never changes a request mid-flight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::plugin::{Chain, Providers};
use crate::router::{Params, Router};
use crate::upstream::Upstream;

/// Server-wide settings the request path needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners (`server.tls.listen`).
    pub tls_listen: Vec<SocketAddr>,
    /// The certificate and key files, resolved against the config file's folder (watched for reloads).
    pub tls_files: Vec<std::path::PathBuf>,
    pub threads: Option<usize>,
    pub trusted_proxies: Vec<IpNet>,
    /// `server.proxy_protocol`: peers whose connections start with a PROXY protocol header.
    pub proxy_protocol: Option<std::sync::Arc<crate::proxy_protocol::Policy>>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    /// Answers compressed at once, at most (`limits.max_compressing`).
    pub max_compressing: usize,
    pub access_log: bool,
    pub access_log_path: Option<String>,
    pub shutdown_timeout: Duration,
    /// The admin listener, when enabled.
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub watch_config: Option<Duration>,
    /// `server.upgrade_sock`, or the default (in a private directory); its directory is checked when
    /// the gateway starts (`crate::upgrade::prepare_dir`), not by `validate`.
    pub upgrade_sock: String,
    /// HTTP/2 in clear on the plain listeners.
    pub h2c: bool,
    /// gRPC-Web requests are bridged to gRPC.
    pub grpc_web: bool,
    /// Plain-HTTP requests are answered with a redirect to HTTPS (`server.https_redirect`).
    pub https_redirect: Option<crate::https::Redirect>,
    /// `Strict-Transport-Security` for answers over HTTPS (`server.hsts`).
    pub hsts: Option<http::HeaderValue>,
}

/// One piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Lit(String),
    /// A route parameter, percent-encoded for where it stands: in the path, or after the `?`.
    Param {
        name: String,
        in_query: bool,
    },
}

/// A compiled route.
pub struct Route {
    pub name: String,
    /// Position in the file (also the router's tie-break).
    pub index: usize,
    /// Proxy to an upstream, or answer by composing calls.
    pub action: Action,
    pub strip_prefix: Option<String>,
    pub(crate) rewrite: Option<Vec<Part>>,
    pub preserve_host: bool,
    /// Which failed tries are tried again: the upstream's policy with the route's overrides.
    pub retry: Arc<crate::resilience::RetryPolicy>,
    /// Global plugins, then the route's own.
    pub chain: Chain,
    /// How its answers are compressed (`server.compression` or its own); `None`: they are not.
    pub compression: Option<Arc<crate::compression::Policy>>,
    /// Its metric series, resolved when the snapshot is installed (compiling registers none).
    pub series: crate::metrics::RouteSeries,
    /// Human description for `tollgate routes`: (host, methods, path).
    pub describe: (String, String, String),
}

/// What a route does with a request that passed its chain.
pub enum Action {
    /// Proxy it to a target of this upstream.
    Proxy(Arc<Upstream>),
    /// Answer it with the merged JSON of several calls.
    Compose(Arc<crate::compose::Composition>),
}

impl Route {
    /// The upstream of a proxying route.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.action {
            Action::Proxy(u) => Some(u),
            Action::Compose(_) => None,
        }
    }

    /// The composition of a composition route.
    pub fn composition(&self) -> Option<&Arc<crate::compose::Composition>> {
        match &self.action {
            Action::Compose(c) => Some(c),
            Action::Proxy(_) => None,
        }
    }

    /// What `tollgate routes` and `/admin/routes` show as its upstream: the upstream's name, or
    /// `compose(a,b)` with the upstreams a composition calls.
    pub fn upstream_label(&self) -> String {
        match &self.action {
            Action::Proxy(u) => u.name.clone(),
            Action::Compose(c) => {
                let mut ups: Vec<&str> = c.calls.iter().map(|c| c.upstream.name.as_str()).collect();
                ups.sort_unstable();
                ups.dedup();
                format!("compose({})", ups.join(","))
            }
        }
    }
    /// The path the upstream receives for normalized request `path` (no query) matched with `params`.
    pub fn upstream_path<'a>(&self, path: &'a str, params: &Params) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        if let Some(parts) = &self.rewrite {
            let mut out = String::with_capacity(path.len() + 16);
            for p in parts {
                match p {
                    Part::Lit(s) => out.push_str(s),
                    Part::Param { name, in_query } => crate::request::encode_into(
                        &mut out,
                        params.get(path, name).unwrap_or(""),
                        *in_query,
                    ),
                }
            }
            return Cow::Owned(out);
        }
        if let Some(prefix) = &self.strip_prefix {
            if let Some(rest) = path.strip_prefix(prefix.as_str()) {
                if rest.is_empty() {
                    return Cow::Borrowed("/");
                }
                if rest.starts_with('/') {
                    return Cow::Borrowed(rest);
                }
            }
        }
        Cow::Borrowed(path)
    }
}

pub struct Snapshot {
    pub settings: Settings,
    /// The global `plugins:` alone: what a request that matches no route runs (so a 404 costs a
    /// scanner its rate-limit quota too).
    pub global: Chain,
    pub router: Router,
    pub routes: Vec<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// What the plugins' sections compiled into: JWT providers (their JWKS refresh runs with the
    /// snapshot), API key sets, rate-limit policies (whose counters a reload keeps), custom ones.
    pub providers: Providers,
    /// The HTTPS listeners' certificate.
    pub tls: Option<Arc<crate::tls::Certificates>>,
    /// Span export, when configured.
    pub tracing: Option<crate::config::raw::TracingConfig>,
    /// The texts it was compiled from (the main file and its includes): what `/admin/config` shows,
    /// what the version history keeps for a rollback, and which files the watcher follows.
    pub source: std::sync::Arc<crate::config::load::Source>,
}

impl Snapshot {
    /// The routes in the order the router tries them ([`Router::order`]: exact paths, templates with
    /// literal segments first, regexes, prefixes longest first; exact hosts, then wildcard hosts by
    /// suffix length, then any host), each with its header matches as `name=value`. What
    /// `tollgate routes` and `GET /admin/routes` show, so both tell the truth about matching.
    pub fn routes_in_order(&self) -> impl Iterator<Item = (&Route, Vec<String>)> + '_ {
        // Route `i` of the router is `routes[i]` (both in file order), so the lookups cannot miss.
        self.router.order().into_iter().filter_map(|i| {
            let headers = self
                .router
                .matcher(i)?
                .headers
                .iter()
                .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            Some((&**self.routes.get(i)?, headers))
        })
    }
}

impl Snapshot {
    /// Which changed settings only take effect after a restart or graceful upgrade (what a reload
    /// keeps from `old` is taken over while compiling, see [`crate::compile`]).
    pub fn fixed_setting_changes(&self, old: &Snapshot) -> Vec<String> {
        let mut w = Vec::new();
        let (n, o) = (&self.settings, &old.settings);
        let mut fixed = |what: &str, changed: bool| {
            if changed {
                w.push(format!("server.{what} changed: it takes effect after a graceful upgrade or restart; the running value stays"));
            }
        };
        fixed("listen", n.listen != o.listen);
        fixed("tls.listen", n.tls_listen != o.tls_listen);
        fixed("threads", n.threads != o.threads);
        fixed("admin.listen", n.admin_listen != o.admin_listen);
        fixed(
            "access_log",
            n.access_log != o.access_log || n.access_log_path != o.access_log_path,
        );
        fixed(
            "limits.header_read_timeout",
            n.header_read_timeout != o.header_read_timeout,
        );
        fixed(
            "limits.tunnel_idle_timeout",
            n.tunnel_idle_timeout != o.tunnel_idle_timeout,
        );
        fixed("shutdown", n.shutdown_timeout != o.shutdown_timeout);
        fixed("upgrade_sock", n.upgrade_sock != o.upgrade_sock);
        fixed("reload", n.watch_config != o.watch_config);
        w
    }
}
