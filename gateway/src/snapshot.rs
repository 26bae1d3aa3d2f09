//! A config compiled for serving: router, routes, upstream pools and server settings, immutable.
//!
//! [`Snapshot::compile`] validates everything it can and reports every problem with its place; a snapshot
//! exists only if the file was entirely valid. The proxy holds the current snapshot in an `ArcSwap` and each
//! request keeps the `Arc` it started with, so a reload never changes a request mid-flight.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

use crate::config::diag::Diagnostics;
use crate::config::load::{self, sub_path, Locations};
use crate::config::raw::{Balance, RawConfig, RouteConfig, ServerConfig, TlsConfig};
use crate::plugin::{apikey, jwt, ratelimit, BuildContext, Chain, Plugin, Registry};
use crate::router::{template_param, HostMatch, Params, PathMatch, RouteMatcher, Router};
use crate::upstream::{HashOn, Target, Upstream, UpstreamTls};

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
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
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
}

/// One piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
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
    pub upstream: Arc<Upstream>,
    pub strip_prefix: Option<String>,
    rewrite: Option<Vec<Part>>,
    pub preserve_host: bool,
    /// Global plugins, then the route's own.
    pub chain: Chain,
    /// Its metric series, resolved when the snapshot is installed (compiling registers none).
    pub series: crate::metrics::RouteSeries,
    /// Human description for `tollgate routes`: (host, methods, path).
    pub describe: (String, String, String),
}

impl Route {
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
    /// JWT providers, for the JWKS refresh and `tollgate token`.
    pub jwt: BTreeMap<String, Arc<jwt::Provider>>,
    /// Rate-limit policies, whose counters a reload keeps.
    pub rate_limits: BTreeMap<String, Arc<ratelimit::Policy>>,
    /// The HTTPS listeners' certificate.
    pub tls: Option<Arc<crate::tls::Certificates>>,
    /// Span export, when configured.
    pub tracing: Option<crate::config::raw::TracingConfig>,
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
    /// Load, validate and compile a file with the built-in plugins. On success also returns warnings.
    pub fn from_file(path: &str) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::from_file_with(path, &Registry::builtin())
    }

    /// Load, validate and compile a file with the plugins of `registry`.
    pub fn from_file_with(
        path: &str,
        registry: &Registry,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::from_file_replacing(path, registry, None)
    }

    /// Load, validate and compile a file that is to replace `previous` (a reload).
    pub fn from_file_replacing(
        path: &str,
        registry: &Registry,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        let mut loaded = load::load_file(path)?;
        let parse_ok = !loaded.diagnostics.has_errors();
        match Snapshot::compile_replacing(&loaded.config, &loaded.locations, registry, previous) {
            Ok((snap, warnings)) if parse_ok => {
                loaded.add(warnings);
                Ok((snap, loaded.diagnostics))
            }
            Ok((_, more)) | Err(more) => {
                loaded.add(more);
                Err(loaded.diagnostics)
            }
        }
    }

    /// Validate and compile a parsed config with the built-in plugins.
    pub fn compile(
        cfg: &RawConfig,
        locs: &Locations,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::compile_with(cfg, locs, &Registry::builtin())
    }

    /// Validate and compile a parsed config. Reports every problem found.
    pub fn compile_with(
        cfg: &RawConfig,
        locs: &Locations,
        registry: &Registry,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::compile_replacing(cfg, locs, registry, None)
    }

    /// Like [`Snapshot::compile_with`], for a reload: what the running snapshot `previous` has learned
    /// is taken over: JWKS keys, upstream target health, rate-limit counters, and the certificates of
    /// HTTPS listeners whose `server.tls` was removed (listeners only change with an upgrade).
    pub fn compile_replacing(
        cfg: &RawConfig,
        locs: &Locations,
        registry: &Registry,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        let mut d = Diagnostics::default();
        let settings = settings(&cfg.server, locs, &mut d);
        let auth = auth_providers(cfg, locs, &mut d, previous);
        if let Some(t) = &cfg.tracing {
            match reqwest::Url::parse(&t.otlp_endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => d.0.push(locs.error(
                    "tracing.otlp_endpoint",
                    format!(
                        "`{}` is not an http(s) URL like `http://otel-collector:4318/v1/traces`",
                        t.otlp_endpoint
                    ),
                )),
            }
            nonzero(locs, &mut d, "tracing.timeout", t.timeout.0);
        }
        let tls = match &cfg.server.tls {
            Some(t) => tls_certificate(t, locs, &mut d),
            None => {
                let kept = previous.and_then(|p| p.tls.clone());
                if kept.is_some() {
                    d.0.push(locs.warning("server", "server.tls removed: the running HTTPS listeners keep their certificates until a graceful upgrade or restart"));
                }
                kept
            }
        };
        let global = plugins(&cfg.plugins, "plugins", registry, &auth, locs, &mut d);

        let mut upstreams = BTreeMap::new();
        for (name, u) in &cfg.upstreams {
            let base = format!("upstreams.{name}");
            let mut targets = Vec::new();
            if u.targets.is_empty() {
                d.0.push(locs.error(
                    &format!("{base}.targets"),
                    "an upstream needs at least one target",
                ));
            }
            for (i, t) in u.targets.iter().enumerate() {
                if t.weight < 1 {
                    d.0.push(locs.error(
                        &format!("{base}.targets[{i}].weight"),
                        format!("weight must be at least 1, got {}", t.weight),
                    ));
                }
                let at = locs.error(&format!("{base}.targets[{i}].addr"), "");
                match Target::parse(&t.addr, t.weight.max(1) as usize, &at) {
                    Ok(t) => targets.push(t),
                    Err(e) => {
                        d.0.push(locs.error(&format!("{base}.targets[{i}].addr"), e))
                    }
                }
            }
            nonzero(
                locs,
                &mut d,
                &format!("{base}.dns_refresh"),
                u.dns_refresh.0,
            );
            let upstream_tls = u.tls.as_ref().map(|t| UpstreamTls {
                sni: t.sni.clone(),
                ca: t.ca.as_ref().and_then(|ca| {
                    crate::tls::load_ca(&config_relative(locs, ca))
                        .map_err(|e| d.0.push(locs.error(&format!("{base}.tls.ca"), e)))
                        .ok()
                }),
            });
            if let Some(sni) = u.tls.as_ref().and_then(|t| t.sni.as_deref()) {
                if rustls_pki_types::ServerName::try_from(sni).is_err() {
                    d.0.push(locs.error(
                        &format!("{base}.tls.sni"),
                        format!("`{sni}` is not a DNS name or IP address"),
                    ));
                }
            }
            let hash_on = match (&u.hash_on, u.balance) {
                (Some(h), Balance::ConsistentHash) => match HashOn::parse(h) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        d.0.push(locs.error(&format!("{base}.hash_on"), e));
                        None
                    }
                },
                (None, Balance::ConsistentHash) => {
                    d.0.push(locs.error(&base, "`balance: consistent_hash` needs `hash_on` (client_ip, header:NAME or cookie:NAME)"));
                    None
                }
                (Some(_), _) => {
                    d.0.push(locs.warning(
                        &format!("{base}.hash_on"),
                        "`hash_on` has no effect unless `balance: consistent_hash`",
                    ));
                    None
                }
                (None, _) => None,
            };
            if let Some(hc) = &u.health_check {
                let hb = format!("{base}.health_check");
                if !hc.path.starts_with('/') {
                    d.0.push(locs.error(&format!("{hb}.path"), "must start with '/'"));
                }
                positive(locs, &mut d, &format!("{hb}.healthy"), hc.healthy);
                positive(locs, &mut d, &format!("{hb}.unhealthy"), hc.unhealthy);
                nonzero(locs, &mut d, &format!("{hb}.interval"), hc.interval.0);
                nonzero(locs, &mut d, &format!("{hb}.timeout"), hc.timeout.0);
            }
            let tb = format!("{base}.timeouts");
            nonzero(locs, &mut d, &format!("{tb}.connect"), u.timeouts.connect.0);
            nonzero(locs, &mut d, &format!("{tb}.read"), u.timeouts.read.0);
            nonzero(locs, &mut d, &format!("{tb}.write"), u.timeouts.write.0);
            if !d.has_errors() {
                upstreams.insert(
                    name.clone(),
                    Arc::new(Upstream::build(
                        name,
                        u,
                        targets,
                        hash_on,
                        upstream_tls,
                        previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u),
                    )),
                );
            }
        }

        let mut matchers = Vec::new();
        let mut routes = Vec::new();
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            // `i` is the position among the routes that parsed (the router's), `r.index` the file's.
            let base = format!("routes[{}]", r.index);
            if r.name.trim().is_empty() {
                d.0.push(locs.error(&format!("{base}.name"), "a route needs a name"));
            } else if let Some(first) = names.insert(&r.name, r.index) {
                d.0.push(locs.error(
                    &format!("{base}.name"),
                    format!(
                        "duplicate route name `{}` (first used by routes[{first}])",
                        r.name
                    ),
                ));
                names.insert(&r.name, first);
            }
            let upstream = match upstreams.get(&r.upstream) {
                Some(u) => Some(u.clone()),
                None if cfg.upstreams.contains_key(&r.upstream)
                    || cfg.broken_upstreams.contains(&r.upstream) =>
                {
                    None
                } // already reported
                None => {
                    let mut known: Vec<&str> = cfg
                        .upstreams
                        .keys()
                        .chain(cfg.broken_upstreams.iter())
                        .map(String::as_str)
                        .collect();
                    known.sort_unstable();
                    d.0.push(locs.error(
                        &format!("{base}.upstream"),
                        format!(
                            "unknown upstream `{}` (defined: {})",
                            r.upstream,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                    None
                }
            };
            let Some((matcher, capture_names)) = route_matcher(r, &base, locs, &mut d) else {
                continue;
            };
            let rewrite = r.rewrite.as_ref().and_then(|rw| {
                let path = format!("{base}.rewrite");
                match parse_rewrite(rw, &capture_names) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        d.0.push(locs.error(&path, e));
                        None
                    }
                }
            });
            if let Some(sp) = &r.strip_prefix {
                if !sp.starts_with('/') || sp.len() < 2 || sp.ends_with('/') {
                    d.0.push(locs.error(
                        &format!("{base}.strip_prefix"),
                        "must start with '/', not end with '/', and not be just '/'",
                    ));
                }
                if r.rewrite.is_some() {
                    d.0.push(locs.warning(
                        &format!("{base}.strip_prefix"),
                        "ignored: `rewrite` sets the whole upstream path",
                    ));
                }
            }
            let describe = describe(&matcher, r);
            let mut chain = global.clone();
            chain.extend(plugins(
                &r.plugins,
                &format!("{base}.plugins"),
                registry,
                &auth,
                locs,
                &mut d,
            ));
            if let Some(up) = upstream {
                let preserve_host = r.preserve_host.unwrap_or(up.preserve_host);
                routes.push(Arc::new(Route {
                    name: r.name.clone(),
                    index: r.index,
                    upstream: up,
                    strip_prefix: r.strip_prefix.clone(),
                    rewrite,
                    preserve_host,
                    chain: Chain::new(chain),
                    series: Default::default(),
                    describe,
                }));
            }
            matchers.push((i, matcher));
        }
        warn_shadowed(&matchers, cfg, locs, &mut d);
        if cfg.routes.is_empty() {
            d.0.push(locs.warning("routes", "no routes: every request will get 404"));
        }
        if d.has_errors() {
            d.sort();
            return Err(d);
        }
        let router = match Router::new(matchers.into_iter().map(|(_, m)| m).collect()) {
            Ok(r) => r,
            Err(e) => {
                d.0.push(locs.error("routes", format!("cannot build the regex set: {e}")));
                return Err(d);
            }
        };
        d.sort();
        Ok((
            Snapshot {
                settings: settings.expect("no errors implies settings"),
                router,
                routes,
                upstreams,
                jwt: auth.jwt,
                rate_limits: auth.rate_limits,
                tls,
                tracing: cfg.tracing.clone(),
                global: Chain::new(global),
            },
            d,
        ))
    }
}

impl Snapshot {
    /// Which changed settings only take effect after a restart or graceful upgrade (what a reload
    /// keeps from `old` is taken over while compiling, see [`Snapshot::compile_replacing`]).
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

/// Compile `auth.jwt` and `auth.api_keys`. Key files are read relative to the config file's folder.
/// Also compiles `redis` and `rate_limits`, keeping the counters of `previous` (see `ratelimit::Policy::build`).
fn auth_providers(
    cfg: &RawConfig,
    locs: &Locations,
    d: &mut Diagnostics,
    previous: Option<&Snapshot>,
) -> BuildContext {
    let read = |f: &str| std::fs::read(config_relative(locs, f));
    let mut ctx = BuildContext {
        failed: cfg.auth.broken.clone(),
        ..BuildContext::default()
    };
    for (name, p) in &cfg.auth.jwt {
        match jwt::Provider::build(name, p, &read) {
            Ok(p) => {
                if let Some(old) = previous.and_then(|s| s.jwt.get(name)) {
                    p.inherit_keys(old);
                }
                ctx.jwt.insert(name.clone(), Arc::new(p));
            }
            Err(errs) => {
                ctx.failed.insert(name.clone());
                for (field, msg) in errs {
                    d.0.push(locs.error(&sub_path(&format!("auth.jwt.{name}"), &field), msg));
                }
            }
        }
    }
    for (field, msg) in ratelimit::compile(
        &cfg.rate_limits,
        cfg.redis.as_ref(),
        &mut ctx,
        previous.map(|p| &p.rate_limits),
    ) {
        d.0.push(locs.error(&field, msg));
    }
    for (name, k) in &cfg.auth.api_keys {
        match apikey::KeySet::build(name, k) {
            Ok(k) => {
                ctx.api_keys.insert(name.clone(), Arc::new(k));
            }
            Err(errs) => {
                ctx.failed.insert(name.clone());
                for (field, msg) in errs {
                    d.0.push(locs.error(&sub_path(&format!("auth.api_keys.{name}"), &field), msg));
                }
            }
        }
    }
    ctx
}

/// Build a list of plugin entries at `base` (`plugins` or `routes[3].plugins`).
fn plugins(
    entries: &[serde_yaml_ng::Value],
    base: &str,
    registry: &Registry,
    ctx: &BuildContext,
    locs: &Locations,
    d: &mut Diagnostics,
) -> Vec<Arc<dyn Plugin>> {
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{base}[{i}]");
        match registry.build(entry, ctx) {
            Ok(p) => out.push(p),
            // A provider that failed to compile was reported where it is defined.
            Err(e) if e.reported => {}
            Err(e) => {
                let path = sub_path(&at, &e.path);
                let severity = crate::config::diag::Severity::Error;
                d.0.push(locs.diag(&path, e.message, severity, e.at_key));
            }
        }
    }
    out
}

fn positive(locs: &Locations, d: &mut Diagnostics, path: &str, v: i64) {
    if v < 1 {
        d.0.push(locs.error(path, format!("must be at least 1, got {v}")));
    }
}

fn nonzero(locs: &Locations, d: &mut Diagnostics, path: &str, v: Duration) {
    if v.is_zero() {
        d.0.push(locs.error(path, "must be greater than zero"));
    }
}

/// Two listen addresses that cannot both be bound (same port, same or wildcard IP).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn settings(s: &ServerConfig, locs: &Locations, d: &mut Diagnostics) -> Option<Settings> {
    let before = d.0.len();
    let mut listen = Vec::new();
    let tls_count = s.tls.as_ref().map_or(0, |t| t.listen.len());
    if s.listen.is_empty() && tls_count == 0 {
        d.0.push(locs.error(
            "server.listen",
            "at least one listen address (or server.tls.listen) is required",
        ));
    }
    if s.tls.as_ref().is_some_and(|t| t.listen.is_empty()) {
        d.0.push(locs.error(
            "server.tls.listen",
            "at least one address to serve HTTPS on is required",
        ));
    }
    for (i, l) in s.listen.iter().enumerate() {
        match l.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => d.0.push(locs.error(
                &format!("server.listen[{i}]"),
                format!("`{l}` is not an address like `0.0.0.0:8080`"),
            )),
        }
    }
    let mut tls_listen: Vec<SocketAddr> = Vec::new();
    for (i, l) in s.tls.iter().flat_map(|t| t.listen.iter()).enumerate() {
        let field = format!("server.tls.listen[{i}]");
        match l.parse::<SocketAddr>() {
            Ok(a) if listen.iter().chain(&tls_listen).any(|l| overlaps(*l, a)) => {
                d.0.push(locs.error(&field, format!("`{a}` is already a listener")))
            }
            Ok(a) => tls_listen.push(a),
            Err(_) => d.0.push(locs.error(
                &field,
                format!("`{l}` is not an address like `0.0.0.0:8443`"),
            )),
        }
    }
    if s.threads == Some(0) {
        d.0.push(locs.error("server.threads", "must be at least 1"));
    }
    let mut trusted = Vec::new();
    for (i, c) in s.trusted_proxies.iter().enumerate() {
        match c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => trusted.push(n.trunc()),
            Err(_) => d.0.push(locs.error(
                &format!("server.trusted_proxies[{i}]"),
                format!("`{c}` is not a CIDR like `10.0.0.0/8` or an IP"),
            )),
        }
    }
    let l = &s.limits;
    if l.max_header_bytes.0 == 0 {
        d.0.push(locs.error(
            "server.limits.max_header_bytes",
            "must be greater than zero",
        ));
    }
    if l.max_headers == 0 {
        d.0.push(locs.error("server.limits.max_headers", "must be greater than zero"));
    }
    if l.max_uri_bytes.0 == 0 {
        d.0.push(locs.error("server.limits.max_uri_bytes", "must be greater than zero"));
    }
    nonzero(
        locs,
        d,
        "server.limits.header_read_timeout",
        l.header_read_timeout.0,
    );
    nonzero(
        locs,
        d,
        "server.limits.tunnel_idle_timeout",
        l.tunnel_idle_timeout.0,
    );
    let mut admin_listen = None;
    if s.admin.enabled {
        match s.admin.listen.parse::<SocketAddr>() {
            Ok(a) if listen.iter().chain(&tls_listen).any(|l| overlaps(*l, a)) => {
                d.0.push(locs.error(
                    "server.admin.listen",
                    format!(
                        "`{a}` overlaps a public listener: the admin API must have its own address"
                    ),
                ))
            }
            Ok(a) => admin_listen = Some(a),
            Err(_) => d.0.push(locs.error(
                "server.admin.listen",
                format!(
                    "`{}` is not an address like `127.0.0.1:9090`",
                    s.admin.listen
                ),
            )),
        }
    }
    if let Some(t) = &s.admin.token {
        if t.len() < 16 {
            d.0.push(locs.error("server.admin.token", "must be at least 16 characters"));
        }
    }
    nonzero(locs, d, "server.reload.interval", s.reload.interval.0);
    if s.upgrade_sock
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        d.0.push(locs.error(
            "server.upgrade_sock",
            "must be a path (or left out for the default)",
        ));
    }
    if d.0.len() > before {
        return None;
    }
    let tls_files = s
        .tls
        .iter()
        .flat_map(|t| {
            let pairs = std::iter::once((&t.cert, &t.key))
                .chain(t.certificates.iter().map(|c| (&c.cert, &c.key)));
            pairs
                .flat_map(|(c, k)| [config_relative(locs, c), config_relative(locs, k)])
                .collect::<Vec<_>>()
        })
        .collect();
    Some(Settings {
        listen,
        tls_listen,
        tls_files,
        threads: s.threads,
        trusted_proxies: trusted,
        max_header_bytes: l.max_header_bytes.0 as usize,
        max_headers: l.max_headers,
        max_uri_bytes: l.max_uri_bytes.0 as usize,
        header_read_timeout: l.header_read_timeout.0,
        keepalive_timeout: l.keepalive_timeout.0,
        tunnel_idle_timeout: l.tunnel_idle_timeout.0,
        access_log: s.access_log.enabled,
        access_log_path: s.access_log.path.clone(),
        shutdown_timeout: s.shutdown.timeout.0,
        admin_listen,
        admin_token: s.admin.token.clone(),
        watch_config: s.reload.watch.then_some(s.reload.interval.0),
        upgrade_sock: s.upgrade_sock.clone().unwrap_or_else(|| {
            crate::upgrade::default_path()
                .to_string_lossy()
                .into_owned()
        }),
    })
}

/// A path from the config, relative to the config file's folder.
fn config_relative(locs: &Locations, p: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(locs.file())
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    dir.join(p)
}

/// Load `server.tls`'s certificates, reporting problems at `server.tls.cert` / `server.tls.key` (and
/// `server.tls.certificates[i].cert` / `.key`).
fn tls_certificate(
    t: &TlsConfig,
    locs: &Locations,
    d: &mut Diagnostics,
) -> Option<Arc<crate::tls::Certificates>> {
    let mut load = |base: String, cert: &str, key: &str| {
        let (cert, key) = (config_relative(locs, cert), config_relative(locs, key));
        match crate::tls::load(&cert, &key) {
            Ok(l) => {
                if let Some(w) = &l.warning {
                    d.0.push(locs.warning(&format!("{base}.cert"), w.clone()));
                }
                Some(l)
            }
            Err((field, msg)) => {
                d.0.push(locs.error(&format!("{base}.{field}"), msg));
                None
            }
        }
    };
    let default = load("server.tls".into(), &t.cert, &t.key);
    let more: Vec<Option<crate::tls::Loaded>> = t
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| load(format!("server.tls.certificates[{i}]"), &c.cert, &c.key))
        .collect();
    let more: Option<Vec<_>> = more.into_iter().collect();
    Some(Arc::new(crate::tls::Certificates::new(default?, more?)))
}

/// Build the router's view of a route; returns it with the names it captures.
fn route_matcher(
    r: &RouteConfig,
    base: &str,
    locs: &Locations,
    d: &mut Diagnostics,
) -> Option<(RouteMatcher, Vec<String>)> {
    let m = &r.matcher;
    let mb = format!("{base}.match");
    let before = d.0.len();
    let host = match m.host.as_deref() {
        None => HostMatch::Any,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            let valid = |s: &str| {
                !s.is_empty()
                    && s.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            };
            if let Some(suffix) = h.strip_prefix("*.") {
                if !valid(suffix) {
                    d.0.push(locs.error(
                        &format!("{mb}.host"),
                        format!("`{h}` is not a valid wildcard host"),
                    ));
                }
                HostMatch::Suffix(format!(".{suffix}"))
            } else {
                if !valid(&h) {
                    d.0.push(locs.error(
                        &format!("{mb}.host"),
                        format!("`{h}` is not a valid host (exact, or `*.example.com`)"),
                    ));
                }
                HostMatch::Exact(h)
            }
        }
    };
    let kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if kinds != 1 {
        d.0.push(locs.error(
            &mb,
            "give exactly one of `path`, `path_prefix` or `path_regex`",
        ));
        return None;
    }
    let mut captures = Vec::new();
    let path = if let Some(p) = &m.path {
        let at = format!("{mb}.path");
        if !p.starts_with('/') {
            d.0.push(locs.error(&at, "must start with '/'"));
        }
        if p.contains('{') || p.contains('}') {
            for seg in p.trim_start_matches('/').split('/') {
                match template_param(seg) {
                    Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                        if captures.iter().any(|c| c == name) {
                            d.0.push(locs.error(&at, format!("parameter `{{{name}}}` appears twice")));
                        }
                        captures.push(name.to_string());
                    }
                    Some(_) => d.0.push(locs.error(&at, format!("`{seg}` is not a valid parameter (use `{{name}}` with letters, digits, _)"))),
                    None if seg.contains('{') || seg.contains('}') => {
                        d.0.push(locs.error(&at, format!("segment `{seg}`: a parameter must be a whole segment, like `/users/{{id}}`")))
                    }
                    None => {}
                }
            }
            PathMatch::Template(p.clone())
        } else {
            check_normalized(p, &at, locs, d);
            PathMatch::Exact(p.clone())
        }
    } else if let Some(p) = &m.path_prefix {
        let at = format!("{mb}.path_prefix");
        if !p.starts_with('/') {
            d.0.push(locs.error(&at, "must start with '/'"));
        }
        check_normalized(p, &at, locs, d);
        let trimmed = p.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.to_string()
        })
    } else {
        let p = m.path_regex.as_deref().unwrap_or_default();
        let anchored = format!("^(?:{})$", p.trim_start_matches('^').trim_end_matches('$'));
        match Regex::new(&anchored) {
            Ok(re) => {
                captures.extend(re.capture_names().flatten().map(str::to_string));
                PathMatch::Regex(re)
            }
            Err(e) => {
                let msg = e.to_string();
                let msg = msg.lines().last().unwrap_or("invalid").trim().to_string();
                d.0.push(locs.error(&format!("{mb}.path_regex"), format!("invalid regex: {msg}")));
                return None;
            }
        }
    };
    let mut methods = Vec::new();
    for (i, meth) in m.methods.iter().enumerate() {
        let up = meth.to_ascii_uppercase();
        match Method::from_bytes(up.as_bytes()) {
            Ok(mm) if up.bytes().all(|b| b.is_ascii_uppercase()) => {
                if !methods.contains(&mm) {
                    methods.push(mm)
                }
            }
            _ => d.0.push(locs.error(
                &format!("{mb}.methods[{i}]"),
                format!("`{meth}` is not an HTTP method"),
            )),
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        let at = format!("{mb}.headers.{name}");
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => {
                d.0.push(locs.error(&at, format!("`{name}` is not a valid header name")))
            }
            (_, Err(_)) => d.0.push(locs.error(&at, "not a valid header value")),
        }
    }
    if d.0.len() > before {
        return None;
    }
    Some((
        RouteMatcher {
            host,
            path,
            methods,
            headers,
        },
        captures,
    ))
}

/// A configured path that normalization would change can never match; say so at load time.
fn check_normalized(p: &str, at: &str, locs: &Locations, d: &mut Diagnostics) {
    match crate::path::normalize(p) {
        Ok(n) if n != p && n.trim_end_matches('/') != p.trim_end_matches('/') => {
            d.0.push(locs.error(
                at,
                format!("`{p}` is not a normalized path and would never match; write `{n}`"),
            ))
        }
        Err(e) => d.0.push(locs.error(at, e.message())),
        _ => {}
    }
}

fn parse_rewrite(rw: &str, captures: &[String]) -> Result<Vec<Part>, String> {
    if !rw.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if !rw.bytes().all(crate::request::target_byte) {
        return Err("may hold only visible ASCII, without spaces or `#`".into());
    }
    let mut parts = Vec::new();
    let mut rest = rw;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or("unclosed `{`")? + open;
        let name = &rest[open + 1..close];
        if !captures.iter().any(|c| c == name) {
            return Err(if captures.is_empty() {
                format!("`{{{name}}}`: this route captures no parameters (use a `{{param}}` path or a regex with named groups)")
            } else {
                format!(
                    "`{{{name}}}` is not captured by the route's path (captured: {})",
                    captures.join(", ")
                )
            });
        }
        let in_query = rw[..rw.len() - rest.len() + open].contains('?');
        parts.push(Part::Param {
            name: name.to_string(),
            in_query,
        });
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

fn describe(m: &RouteMatcher, r: &RouteConfig) -> (String, String, String) {
    let host = match &m.host {
        HostMatch::Any => "*".to_string(),
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
    };
    let methods = if m.methods.is_empty() {
        "ANY".to_string()
    } else {
        m.methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let path = match &m.path {
        PathMatch::Exact(p) => format!("= {p}"),
        PathMatch::Template(p) => format!("~ {p}"),
        PathMatch::Prefix(p) => format!("{p}*"),
        PathMatch::Regex(_) => format!(
            "regex {}",
            r.matcher.path_regex.as_deref().unwrap_or_default()
        ),
    };
    (host, methods, path)
}

/// Warn about a route that can never be chosen because an earlier one with the same host and path
/// accepts every request it would.
fn warn_shadowed(
    matchers: &[(usize, RouteMatcher)],
    cfg: &RawConfig,
    locs: &Locations,
    d: &mut Diagnostics,
) {
    let key = |m: &RouteMatcher| -> String {
        let p = match &m.path {
            PathMatch::Exact(p) => format!("e:{p}"),
            PathMatch::Template(p) => {
                let shape: Vec<&str> = p
                    .split('/')
                    .map(|s| if template_param(s).is_some() { "{}" } else { s })
                    .collect();
                format!("t:{}", shape.join("/"))
            }
            PathMatch::Prefix(p) => format!("p:{p}"),
            PathMatch::Regex(r) => format!("r:{}", r.as_str()),
        };
        format!("{:?}|{p}", m.host)
    };
    // Only routes with the same host and path shape can shadow each other: group them by that key so
    // the check stays linear in the route count (a config of 100,000 distinct routes is one pass).
    let mut groups: std::collections::HashMap<String, Vec<(usize, &RouteMatcher)>> =
        std::collections::HashMap::with_capacity(matchers.len());
    let mut warned = HashSet::new();
    for (i, m) in matchers {
        let group = groups.entry(key(m)).or_default();
        for (j, earlier) in group.iter() {
            let methods_covered = earlier.methods.is_empty()
                || (!m.methods.is_empty() && m.methods.iter().all(|x| earlier.methods.contains(x)));
            let headers_covered = earlier.headers.iter().all(|h| m.headers.contains(h));
            if methods_covered && headers_covered && warned.insert(*i) {
                let (r, e) = (&cfg.routes[*i], &cfg.routes[*j]);
                d.0.push(locs.warning(
                    &format!("routes[{}]", r.index),
                    format!(
                        "route `{}` is never matched: route `{}` (routes[{}]) matches the same requests first",
                        r.name, e.name, e.index
                    ),
                ));
            }
        }
        group.push((*i, m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_str;

    fn compile(text: &str) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        let l = load_str("t.yaml", text, &|_| None)?;
        assert!(!l.diagnostics.has_errors(), "{}", l.diagnostics);
        Snapshot::compile(&l.config, &l.locations)
    }

    const UP: &str = "upstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:1\" }]\n";

    #[test]
    fn semantic_errors_all_reported() {
        let text = format!(
            "{UP}routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: nope\n  - name: a\n    match: {{ path_regex: \"([\" }}\n    upstream: u\n  - name: c\n    match: {{ path: /x, path_prefix: /y }}\n    upstream: u\n"
        );
        let errs = compile(&text).err().unwrap();
        let s = errs.to_string();
        assert!(
            s.contains(
                "t.yaml:7:15: error: routes[0].upstream: unknown upstream `nope` (defined: u)"
            ),
            "{s}"
        );
        assert!(
            s.contains("t.yaml:8:11: error: routes[1].name: duplicate route name `a`"),
            "{s}"
        );
        assert!(
            s.contains("routes[1].match.path_regex: invalid regex"),
            "{s}"
        );
        assert!(s.contains("routes[2].match: give exactly one of"), "{s}");
    }

    #[test]
    fn zero_weight_and_bad_listen() {
        let text = "server:\n  listen: [nowhere]\nupstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n";
        let s = compile(text).err().unwrap().to_string();
        assert!(s.contains("t.yaml:2:12: error: server.listen[0]"), "{s}");
        assert!(
            s.contains("upstreams.u.targets[0].weight: weight must be at least 1, got 0"),
            "{s}"
        );
    }

    #[test]
    fn shadowed_route_is_a_warning() {
        let text = format!("{UP}routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: u\n  - name: b\n    match: {{ path_prefix: /a/, methods: [GET] }}\n    upstream: u\n");
        let (_, warnings) = compile(&text).unwrap();
        let w = warnings.to_string();
        assert!(
            w.contains("warning: routes[1]: route `b` is never matched: route `a`"),
            "{w}"
        );
    }

    #[test]
    fn rewrite_and_strip() {
        let text = format!(
            "{UP}routes:\n  - name: a\n    match: {{ path: \"/v1/users/{{id}}\" }}\n    upstream: u\n    rewrite: \"/users/{{id}}/profile\"\n  - name: b\n    match: {{ path_prefix: /api }}\n    upstream: u\n    strip_prefix: /api\n"
        );
        let (snap, _) = compile(&text).unwrap();
        let h = http::HeaderMap::new();
        let p = "/v1/users/7";
        let crate::router::Found::Route(i, params) = snap.router.find(None, &Method::GET, p, &h)
        else {
            panic!()
        };
        assert_eq!(snap.routes[i].upstream_path(p, &params), "/users/7/profile");
        for (req, want) in [("/api/x", "/x"), ("/api", "/"), ("/api/", "/")] {
            let crate::router::Found::Route(i, params) =
                snap.router.find(None, &Method::GET, req, &h)
            else {
                panic!()
            };
            assert_eq!(snap.routes[i].upstream_path(req, &params), want);
        }
        let bad = format!("{UP}routes:\n  - name: a\n    match: {{ path: /x }}\n    upstream: u\n    rewrite: \"/y/{{id}}\"\n");
        assert!(compile(&bad)
            .err()
            .unwrap()
            .to_string()
            .contains("routes[0].rewrite: `{id}`: this route captures no parameters"));
    }
}
