//! Upstream pools: targets behind a service-discovery seam, a Pingora load balancer, health checks.
//!
//! Targets live in [`Discovery`], an `ArcSwap` that implements Pingora's `ServiceDiscovery`, so they can
//! be replaced at runtime and picked up by `LoadBalancer::update`. A target given by name stands for
//! every address the name resolves to. Compiling only checks how a target is written ([`Target::parse`]):
//! names are looked up while the gateway runs, never by `tollgate validate` (unless `--resolve`) nor while
//! a reload compiles. A named target starts with the addresses the upstream it replaces had for it (none
//! in a fresh gateway, which resolves names once before it serves, see [`resolve_names`]); the
//! upstream's background task ([`Upstream::follow_names`]) looks it up at once and again every
//! `dns_refresh`, so a scaled service or a moved container is followed without a reload; a failed lookup
//! keeps the last addresses. An upstream with no address yet answers like one with no healthy target.
//! Health is Pingora's: an HTTP check per target, with consecutive-success/failure thresholds, run by
//! [`Upstream::check_health`]; a target starts healthy so that a fresh gateway serves before the first
//! check finishes. Both tasks belong to the snapshot that holds the upstream: they start when it is
//! installed and stop when it is replaced (see `server::SnapshotTasks`).
//!
//! Health lives in a Pingora [`HealthRegistry`] that a reload hands on to the rebuilt upstream of the same
//! name when its health check is unchanged: a target found dead stays out of rotation across reloads
//! instead of taking traffic again until the next checks fail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::FutureExt;
use pingora_core::upstreams::peer::{HttpPeer, HttpUpstreamRequestPolicy};
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};

use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::raw::{
    Balance, CheckKind, H2Config, HealthCheckConfig, Protocol, UpstreamConfig,
};
use crate::metrics::{Lazy, Metrics};
use crate::resilience::{
    self, Attempt, Breaker, Budget, Failure, OutlierPolicy, RetryPolicy, Stats,
};

/// The retry budget of an upstream that sets none: percent of requests, retries per second.
const DEFAULT_BUDGET: (f64, u32) = (20.0, 10);

/// The seam through which targets change at runtime.
pub struct Discovery {
    targets: ArcSwap<BTreeSet<Backend>>,
}

impl Discovery {
    pub fn new(targets: BTreeSet<Backend>) -> Self {
        Discovery {
            targets: ArcSwap::from_pointee(targets),
        }
    }
    pub fn set(&self, targets: BTreeSet<Backend>) {
        self.targets.store(Arc::new(targets));
    }
}

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok(((**self.targets.load()).clone(), HashMap::new()))
    }
}

/// Wraps the Arc so the LB can own a boxed discovery while we keep a handle to it.
struct SharedDiscovery(Arc<Discovery>);

#[async_trait]
impl ServiceDiscovery for SharedDiscovery {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        self.0.discover().await
    }
}

enum Pool {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// Per address, IPv6 included: unlike a rate-limit key (counted per /64, see
    /// `plugin::ratelimit`), stickiness gains nothing from grouping a network's addresses, and a
    /// client that changes address only moves itself to another target.
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashOn {
    pub fn parse(s: &str) -> Result<HashOn, String> {
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        if let Some(h) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(h.trim().as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("`{h}` is not a valid header name"));
        }
        if let Some(c) = s.strip_prefix("cookie:") {
            if c.trim().is_empty() {
                return Err("cookie name is empty".into());
            }
            return Ok(HashOn::Cookie(c.trim().to_string()));
        }
        Err(format!(
            "`{s}` is not a hash key: use `client_ip`, `header:NAME` or `cookie:NAME`"
        ))
    }
}

/// A configured target and the addresses it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As written: `10.0.0.7:8080` or `users.internal:8080`.
    pub spec: String,
    /// `spec` is a name, resolved again every `dns_refresh`.
    pub named: bool,
    /// Sorted, without duplicates; one address for a literal target, none for a name not resolved yet.
    pub addrs: Vec<SocketAddr>,
    pub weight: usize,
    /// Where a named target is written (a diagnostic without its message), so that a name that does
    /// not resolve can be reported at its place after compiling (`tollgate validate --resolve`).
    pub at: Option<Diagnostic>,
}

/// Longest DNS name (RFC 1035 §2.3.4, without the root's trailing dot).
const MAX_NAME: usize = 253;
/// Longest label of a DNS name.
const MAX_LABEL: usize = 63;

/// Why `host` is not a name a resolver could be asked for, if it is not. Labels are letters, digits,
/// `-` (not first or last) and `_` (not in the DNS rules for host names, but Docker Compose service
/// names have them and resolve); a trailing dot (a fully qualified name) is fine.
fn name_problem(host: &str) -> Option<String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Some("the host is empty".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!("the name is longer than {MAX_NAME} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Some(format!(
                "`{host}` has an empty label (`..`, or a leading dot)"
            ));
        }
        if label.len() > MAX_LABEL {
            return Some(format!(
                "the label `{label}` is longer than {MAX_LABEL} characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Some(format!(
                "`{host}` is not a host name or IP address (`{c}` is not allowed in a name)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("the label `{label}` starts or ends with `-`"));
        }
    }
    // All digits in the last label: meant as an IPv4 address, not a name (RFC 1123 §2.1).
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some(format!("`{host}` is not a valid IPv4 address"));
    }
    // The C library reads `0x7f000001` or `0x7f.0x1` as an address (inet_aton's forms): written
    // so, an address would pass for a name, past the checks made on addresses.
    let numeric = |l: &str| match l.strip_prefix("0x").or_else(|| l.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => l.bytes().all(|b| b.is_ascii_digit()),
    };
    if name.split('.').count() <= 4 && name.split('.').all(numeric) {
        return Some(format!(
            "`{host}` is an IPv4 address in a form other than dotted decimal: write it as a.b.c.d"
        ));
    }
    None
}

impl Target {
    /// Check how a target is written, without any lookup: `IP:PORT` (IPv6 as `[ADDR]:PORT`), or
    /// `NAME:PORT` with a well-formed name; the port from 1 to 65535. A name starts with no address.
    /// `at` is where the target is written, kept for a name (see [`Target::at`]).
    pub fn parse(addr: &str, weight: usize, at: &Diagnostic) -> Result<Target, String> {
        let port_problem =
            |port: &str| format!("port `{port}` of `{addr}` is not a number from 1 to 65535");
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(port_problem("0"));
            }
            return Ok(Target {
                spec: addr.to_string(),
                named: false,
                addrs: vec![sa],
                weight,
                at: None,
            });
        }
        if addr.contains("://") {
            return Err(format!(
                "`{addr}` is a URL: write the target as `HOST:PORT` (`tls` says whether it is HTTPS)"
            ));
        }
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => {
                return Err(format!(
                    "`{addr}` is an IPv6 address without a port: write `[{addr}]:PORT`"
                ))
            }
            Ok(IpAddr::V4(_)) => return Err(format!("`{addr}` needs a port, e.g. `{addr}:80`")),
            Err(_) if !addr.contains(':') => {
                return Err(format!("`{addr}` needs a port, e.g. `{addr}:80`"))
            }
            Err(_) => {}
        }
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
        if host.starts_with('[') || host.contains(':') {
            return Err(format!(
                "`{addr}` is not an address with a port: write an IPv6 address as `[ADDR]:PORT`"
            ));
        }
        match port.parse::<u16>() {
            Ok(1..) => {}
            _ => return Err(port_problem(port)),
        }
        if let Some(why) = name_problem(host) {
            return Err(why);
        }
        Ok(Target {
            spec: addr.to_string(),
            named: true,
            addrs: Vec::new(),
            weight,
            at: Some(at.clone()),
        })
    }
}

/// The pool members for `targets`: one per address (round robin ignores weights).
fn backends_of(balance: Balance, targets: &[Target]) -> BTreeSet<Backend> {
    targets
        .iter()
        .flat_map(|t| {
            let weight = if balance == Balance::RoundRobin {
                1
            } else {
                t.weight
            };
            t.addrs.iter().map(move |a| Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(*a),
                weight,
                ext: Default::default(),
            })
        })
        .collect()
}

/// The name of a named target's address, worked out once per resolution rather than per request.
#[derive(Debug, Clone)]
struct TargetName {
    /// `Host` to send: the target as written (`name:port`).
    host: http::HeaderValue,
    /// The TLS server name: the host part.
    sni: String,
}

/// The names of the addresses of named targets.
fn target_names(targets: &[Target]) -> HashMap<SocketAddr, TargetName> {
    targets
        .iter()
        .filter(|t| t.named)
        .filter_map(|t| {
            let name = TargetName {
                host: http::HeaderValue::from_str(&t.spec).ok()?,
                sni: host_of(&t.spec).to_string(),
            };
            Some((t, name))
        })
        .flat_map(|(t, n)| t.addrs.iter().map(move |a| (*a, n.clone())))
        .collect()
}

/// The `Host` values of the literal address targets (`10.0.0.9:80`, `[::1]:8080`), unless there
/// are too many to search per request.
fn address_hosts(targets: &[Target]) -> Box<[(SocketAddr, http::HeaderValue)]> {
    let literal = || {
        targets
            .iter()
            .filter(|t| !t.named)
            .flat_map(|t| t.addrs.iter())
    };
    if literal().count() > ADDRESS_HOSTS_MAX {
        return Box::default();
    }
    literal()
        .filter_map(|a| Some((*a, http::HeaderValue::try_from(a.to_string()).ok()?)))
        .collect()
}

/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The first retry of a name that has no address yet; then twice as long each time, up to
/// `dns_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Look a name up with the system resolver (bounded in time), for the background refresh.
async fn lookup(name: String) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name.as_str())).await {
        Ok(Ok(addrs)) => {
            let mut v: Vec<SocketAddr> = addrs.collect();
            v.sort();
            v.dedup();
            Ok(v)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("lookup timed out after {LOOKUP_TIMEOUT:?}")),
    }
}

/// Look `names` up with the system resolver, blocking, a few at a time, each bounded by
/// [`LOOKUP_TIMEOUT`] (a lookup still running then is left to finish on its own thread). For
/// [`resolve_names`], which runs before anything serves (`tollgate validate --resolve`,
/// start-up).
fn lookup_blocking(names: Vec<String>) -> BTreeMap<String, Result<Vec<SocketAddr>, String>> {
    const AT_ONCE: usize = 16;
    let mut out = BTreeMap::new();
    for batch in names.chunks(AT_ONCE) {
        let (tx, rx) = std::sync::mpsc::channel();
        for name in batch {
            let (tx, asked) = (tx.clone(), name.clone());
            let spawned = std::thread::Builder::new()
                .name("tollgate-lookup".into())
                .spawn(move || {
                    let answer = asked
                        .to_socket_addrs()
                        .map(|a| {
                            let mut v: Vec<SocketAddr> = a.collect();
                            v.sort();
                            v.dedup();
                            v
                        })
                        .map_err(|e| e.to_string());
                    let _ = tx.send((asked, answer));
                });
            if let Err(e) = spawned {
                out.insert(name.clone(), Err(format!("cannot start a lookup: {e}")));
            }
        }
        drop(tx);
        let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((name, answer)) => {
                    out.insert(name, answer);
                }
                Err(_) => break,
            }
        }
        for name in batch {
            out.entry(name.clone())
                .or_insert_with(|| Err(format!("lookup timed out after {LOOKUP_TIMEOUT:?}")));
        }
    }
    out
}

/// TLS to an upstream's targets. Certificates are always verified (against the system's CAs, or `ca`);
/// there is deliberately no switch to turn verification off.
pub struct UpstreamTls {
    /// The name sent and verified; default: the target's host (its name, or its IP address).
    pub sni: Option<String>,
    /// CAs to trust instead of the system's.
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
}

impl UpstreamTls {
    /// Pingora pools upstream connections by address, SNI and verification flags, not by the CAs
    /// a connection was verified against: without this key, a connection verified with one
    /// upstream's CA would be reused by another upstream that trusts different CAs. Stable across
    /// reloads (a hash of the certificates), so pooled connections survive them.
    fn pool_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let Some(ca) = &self.ca else { return 0 };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in ca.iter() {
            c.borrow_raw_cert().hash(&mut h);
        }
        h.finish() | 1
    }
}

/// The host part of `host:port` (no brackets for IPv6).
fn host_of(spec: &str) -> &str {
    let host = spec.rsplit_once(':').map_or(spec, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Resolved upstream settings and its pool.
pub struct Upstream {
    pub name: String,
    /// `tollgate_upstream_duration_seconds{upstream=name}`, resolved when the snapshot is installed.
    duration: Lazy<prometheus::Histogram>,
    pub balance: Balance,
    pub hash_on: Option<HashOn>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Connect retries of composition calls (`retry.attempts - 1` when it retries connect failures).
    pub retries: u32,
    /// The retry policy of routes that do not override it.
    pub retry: Arc<RetryPolicy>,
    pub budget: Option<Budget>,
    pub outlier: Option<OutlierPolicy>,
    pub breaker: Option<Arc<Breaker>>,
    pub slow_start: Option<Duration>,
    /// What is known of each target (in flight, latency, ejections), handed on across reloads.
    pub stats: Arc<Stats>,
    /// Some pick or outcome reads or writes `stats` (load-aware balancing, ejection, slow start);
    /// otherwise a pick is the pool's alone.
    tracks: bool,
    /// The one address of an upstream whose only target is a literal address and which has no health
    /// check. Nothing can make that target unready (no check runs, and the gateway never disables a
    /// backend by hand), so Pingora's selection would always return it, and a pick that tracks nothing
    /// and avoids nothing returns it without that selection. The selection hashes the backend three
    /// times (SipHash), allocates a set and clones the backend: about 1,800 instructions per request,
    /// 2 % of a whole proxied request (benches/README.md). One literal address is the common case of a
    /// Kubernetes ClusterIP or a sidecar on loopback.
    sole: Option<SocketAddr>,
    /// Its resilience series, resolved when the snapshot is installed.
    series: Lazy<resilience::Series>,
    pub preserve_host: bool,
    pub health: Option<HealthCheckConfig>,
    pub tls: Option<UpstreamTls>,
    /// The HTTP version spoken to the targets, and HTTP/2's settings.
    pub protocol: Protocol,
    h2: H2Config,
    /// [`UpstreamTls::pool_key`], computed once.
    tls_pool_key: u64,
    pub discovery: Arc<Discovery>,
    pool: Pool,
    /// Health of the targets, shared with the upstream this one replaced on a reload.
    health_registry: Arc<HealthRegistry>,
    /// The configured targets with their current addresses.
    targets: Mutex<Vec<Target>>,
    /// `Host` and TLS name for the addresses of named targets.
    names: ArcSwap<HashMap<SocketAddr, TargetName>>,
    dns_refresh: Duration,
    has_names: bool,
    /// `Host` for the literal address targets, formatted once (a handful: searched in order).
    address_hosts: Box<[(SocketAddr, http::HeaderValue)]>,
}

/// Upstreams with more literal targets than this format `Host` per request instead.
const ADDRESS_HOSTS_MAX: usize = 16;

impl Upstream {
    /// Build from a validated config. `targets` are as [`Target::parse`] made them. `previous` is the
    /// upstream of the same name in the config being replaced: a named target it also had keeps the
    /// addresses found for it, and target health carries over when the health check is the same.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        mut targets: Vec<Target>,
        hash_on: Option<HashOn>,
        tls: Option<UpstreamTls>,
        resilience: resilience::Settings,
        previous: Option<&Upstream>,
    ) -> Upstream {
        if let Some(prev) = previous {
            let known = prev.current_targets();
            for t in targets.iter_mut().filter(|t| t.named && t.addrs.is_empty()) {
                if let Some(p) = known.iter().find(|p| p.named && p.spec == t.spec) {
                    t.addrs = p.addrs.clone();
                }
            }
        }
        let backends = backends_of(cfg.balance, &targets);
        let sole = match targets.as_slice() {
            [t] if !t.named && cfg.health_check.is_none() && t.addrs.len() == 1 && t.weight > 0 => {
                t.addrs.first().copied()
            }
            _ => None,
        };
        let stats = previous.map(|p| p.stats.clone()).unwrap_or_default();
        stats.retain(backends.iter().filter_map(|b| b.addr.as_inet().copied()));
        let discovery = Arc::new(Discovery::new(backends));
        let inherited = previous
            .filter(|p| p.health.is_some() && p.health == cfg.health_check)
            .map(|p| p.health_registry.clone());
        let fresh = inherited.is_none();
        let health_registry = inherited.unwrap_or_default();
        let make = || {
            Backends::new_with_health_registry(
                Box::new(SharedDiscovery(discovery.clone())),
                health_registry.clone(),
            )
        };
        let pool = match cfg.balance {
            Balance::RoundRobin | Balance::Weighted => {
                Pool::RoundRobin(LoadBalancer::from_backends(make()))
            }
            // Load-aware picks are ours (`Stats::least_loaded`); the pool keeps members and health.
            Balance::LeastRequest | Balance::Ewma => {
                Pool::RoundRobin(LoadBalancer::from_backends(make()))
            }
            Balance::ConsistentHash => Pool::Consistent(LoadBalancer::from_backends(make())),
        };
        if let Some(hc) = cfg.health_check.as_ref().filter(|_| fresh) {
            // Checks go to each target with the upstream's SNI (or its first target's host) and CAs.
            let check_host = tls
                .as_ref()
                .and_then(|t| t.sni.clone())
                .or_else(|| targets.first().map(|t| host_of(&t.spec).to_string()))
                .unwrap_or_else(|| "localhost".into());
            let inner: Box<dyn HealthCheck + Send + Sync> = match hc.kind {
                CheckKind::Http => {
                    let mut check = HttpHealthCheck::new(&check_host, tls.is_some());
                    if let Some(ca) = tls.as_ref().and_then(|t| t.ca.clone()) {
                        check.peer_template.options.ca = Some(ca);
                    }
                    check.consecutive_success = hc.healthy.max(1) as usize;
                    check.consecutive_failure = hc.unhealthy.max(1) as usize;
                    check.peer_template.options.connection_timeout = Some(hc.timeout.0);
                    check.peer_template.options.read_timeout = Some(hc.timeout.0);
                    check.peer_template.options.write_timeout = Some(hc.timeout.0);
                    if let Ok(mut req) = RequestHeader::build("GET", hc.path.as_bytes(), None) {
                        let _ = req.insert_header("host", check_host.as_str());
                        let _ = req.insert_header("user-agent", "tollgate-health-check");
                        check.req = req;
                    }
                    Box::new(check)
                }
                CheckKind::Grpc => {
                    let sni = if tls.is_some() {
                        check_host.clone()
                    } else {
                        String::new()
                    };
                    let mut peer = HttpPeer::new("0.0.0.0:1", tls.is_some(), sni);
                    let o = &mut peer.options;
                    o.ca = tls.as_ref().and_then(|t| t.ca.clone());
                    o.connection_timeout = Some(hc.timeout.0);
                    o.read_timeout = Some(hc.timeout.0);
                    o.write_timeout = Some(hc.timeout.0);
                    // HTTP/2 only: ALPN over TLS, prior knowledge in clear.
                    o.set_http_version(2, 2);
                    Box::new(crate::grpc::HealthCheck {
                        peer,
                        connector: pingora_core::connectors::http::Connector::new(None),
                        authority: check_host.clone(),
                        service: hc.service.clone(),
                        healthy: hc.healthy.max(1) as usize,
                        unhealthy: hc.unhealthy.max(1) as usize,
                    })
                }
            };
            health_registry.set_health_check(Box::new(Checked {
                inner,
                stats: stats.clone(),
            }));
        }
        let breaker = resilience.breaker.as_ref().map(|c| {
            previous
                .and_then(|p| p.breaker.clone())
                .filter(|b| b.config == *c)
                .unwrap_or_else(|| Arc::new(Breaker::new(c)))
        });
        let retry = resilience.retry;
        let retries = if retry.when.has(Failure::ConnectFailure) {
            retry.attempts.saturating_sub(1)
        } else {
            0
        };
        let up = Upstream {
            name: name.to_string(),
            duration: Lazy::default(),
            balance: cfg.balance,
            hash_on,
            connect_timeout: cfg.timeouts.connect.0,
            read_timeout: cfg.timeouts.read.0,
            write_timeout: cfg.timeouts.write.0,
            idle_timeout: cfg.timeouts.idle.0,
            retries,
            retry: Arc::new(retry),
            // Every upstream has a budget (20 % and 10 a second unless set), so that no retry policy,
            // the upstream's or a route's, can multiply an outage.
            budget: Some(resilience.budget.map_or_else(
                || Budget::new(DEFAULT_BUDGET.0, DEFAULT_BUDGET.1),
                |(p, m)| Budget::new(p, m),
            )),
            tracks: resilience.outlier.is_some()
                || resilience.slow_start.is_some()
                || matches!(cfg.balance, Balance::LeastRequest | Balance::Ewma),
            sole,
            outlier: resilience.outlier,
            breaker,
            slow_start: resilience.slow_start,
            stats,
            series: Lazy::default(),
            preserve_host: cfg.preserve_host,
            health: cfg.health_check.clone(),
            tls_pool_key: tls.as_ref().map_or(0, UpstreamTls::pool_key),
            protocol: cfg.protocol,
            h2: cfg.h2.clone(),
            tls,
            discovery,
            pool,
            health_registry,
            names: ArcSwap::from_pointee(target_names(&targets)),
            has_names: targets.iter().any(|t| t.named),
            address_hosts: address_hosts(&targets),
            targets: Mutex::new(targets),
            dns_refresh: cfg.dns_refresh.0,
        };
        // Static discovery answers at once, so the first update completes without a runtime.
        let _ = up.update().now_or_never();
        up
    }

    /// `tollgate_upstream_duration_seconds{upstream=name}`, resolved from `m` on first use (when the
    /// snapshot is installed).
    pub fn duration(&self, m: &Metrics) -> &prometheus::Histogram {
        self.duration
            .get_or_init(|| m.upstream_duration.with_label_values(&[&self.name]))
    }

    /// The targets with the addresses they stand for now.
    fn current_targets(&self) -> Vec<Target> {
        match self.targets.lock() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-read targets from discovery.
    pub async fn update(&self) -> pingora_error::Result<()> {
        match &self.pool {
            Pool::RoundRobin(lb) => lb.update().await,
            Pool::Consistent(lb) => lb.update().await,
        }
    }

    fn backends(&self) -> &Backends {
        match &self.pool {
            Pool::RoundRobin(lb) => lb.backends(),
            Pool::Consistent(lb) => lb.backends(),
        }
    }

    /// Pick a healthy target. `key` feeds consistent hashing and is ignored otherwise.
    pub fn select(&self, key: &[u8]) -> Option<SocketAddr> {
        self.pick(key, &[])
    }

    /// Pick a healthy target that is not ejected, other than those in `avoid` (tried already) when
    /// there is one; under a slow start, a returning target gets its share. Only the health checks'
    /// verdict is final: if nothing else is left, a target tried already, still ramping up, or
    /// ejected is taken rather than none ("panic mode", as Envoy's: passive health alone never
    /// empties an upstream, so a one-target upstream keeps serving while its target is "ejected").
    pub fn pick(&self, key: &[u8], avoid: &[SocketAddr]) -> Option<SocketAddr> {
        if !self.tracks && avoid.is_empty() {
            if let Some(addr) = self.sole {
                // Tests run debug builds: should anything ever make the target unready (a target
                // disabled by hand, or by discovery), they fail here rather than serve it.
                debug_assert_eq!(
                    self.pool_select(key),
                    Some(addr),
                    "the sole target is not ready"
                );
                return Some(addr);
            }
            return self.pool_select(key);
        }
        let now = resilience::now();
        self.pick_at(key, avoid, self.slow_start, now, true)
            .or_else(|| self.pick_at(key, &[], None, now, false))
    }

    /// Pingora's selection, health and enablement included.
    fn pool_select(&self, key: &[u8]) -> Option<SocketAddr> {
        let b = match &self.pool {
            Pool::RoundRobin(lb) => lb.select(key, 256),
            Pool::Consistent(lb) => lb.select(key, 256),
        }?;
        b.addr.as_inet().copied()
    }

    fn pick_at(
        &self,
        key: &[u8],
        avoid: &[SocketAddr],
        ramp: Option<Duration>,
        now: u64,
        passive: bool,
    ) -> Option<SocketAddr> {
        if matches!(self.balance, Balance::LeastRequest | Balance::Ewma) {
            let b = self.backends();
            let candidates: Vec<(SocketAddr, usize)> = b
                .get_backend()
                .iter()
                .filter(|t| b.ready(t))
                .filter_map(|t| t.addr.as_inet().map(|a| (*a, t.weight)))
                .filter(|(a, _)| !(avoid.contains(a) || passive && self.stats.ejected(a, now)))
                .collect();
            return self
                .stats
                .least_loaded(&candidates, self.balance == Balance::Ewma, ramp, now);
        }
        let accept = |b: &Backend, healthy: bool| {
            healthy
                && b.addr.as_inet().is_some_and(|a| {
                    !avoid.contains(a) && (!passive || self.stats.admits(a, ramp, now))
                })
        };
        let b = match &self.pool {
            Pool::RoundRobin(lb) => lb.select_with(key, 256, accept),
            Pool::Consistent(lb) => lb.select_with(key, 256, accept),
        }?;
        b.addr.as_inet().copied()
    }

    /// Start a try to `addr`: counted in its requests in flight while the returned value lives
    /// (`None` when nothing reads the count).
    pub fn begin(&self, addr: SocketAddr) -> Option<Attempt> {
        if !self.tracks {
            return None;
        }
        self.stats.begin(&addr)
    }

    /// How a try to `addr` went: its time to the response head, and its failure if it failed.
    /// Feeds the latency average and passive health; an ejection is logged and counted.
    pub fn outcome(&self, addr: SocketAddr, took: Option<Duration>, failure: Option<Failure>) {
        if !self.tracks {
            return;
        }
        // Targets the active checks took out count as out, so that the two kinds of health together
        // stay within `max_ejected_percent`.
        let unhealthy = || {
            let b = self.backends();
            b.get_backend().iter().filter(|t| !b.ready(t)).count()
        };
        if let Some(why) =
            self.stats
                .outcome(&addr, took, failure, self.outlier.as_ref(), unhealthy)
        {
            log::warn!("upstream {}: target {addr} ejected: {why}", self.name);
            if let Some(s) = self.series.get() {
                s.ejections.inc();
            }
        }
    }

    /// The resilience series, once the snapshot is installed.
    pub fn series(&self) -> Option<&resilience::Series> {
        self.series.get()
    }

    /// Resolve the resilience series from `m` (when the snapshot is installed).
    pub fn bind_series(&self, m: &Metrics) {
        self.series
            .get_or_init(|| resilience::Series::new(m, &self.name));
    }

    /// A peer for `addr` with this upstream's timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(t) => {
                let sni = t.sni.clone().unwrap_or_else(|| self.sni_for(addr));
                let mut p = HttpPeer::new(addr, true, sni);
                p.options.ca = t.ca.clone();
                p.group_key = self.tls_pool_key;
                p
            }
        };
        let o = &mut peer.options;
        // The gateway strips the client's hop-by-hop headers itself, in `upstream_request_filter`
        // (`headers::request_hop_by_hop`; what `Connection` may not name is refused before routing,
        // `request::check_connection`): Pingora's default policy did the same work again, 13 removals
        // from two maps per request, before the filter ran.
        o.http_upstream_request_policy = HttpUpstreamRequestPolicy::preserve();
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        // Pingora's connector speaks h2 when the peer's ALPN allows it: negotiated over TLS, and in
        // clear with prior knowledge when h2 is the least version allowed (pingora-core 0.9.1
        // `connectors/http/v2.rs`, `new_http_session`). Its default of one stream per connection
        // would open a connection per request: multiplexing needs the stream count.
        match self.protocol {
            Protocol::Http1 => return peer,
            Protocol::H2 | Protocol::H2c => o.set_http_version(2, 2),
            Protocol::Auto => o.set_http_version(2, 1),
        }
        o.max_h2_streams = self.h2.max_concurrent_streams.clamp(1, 1 << 16) as usize;
        o.h2_ping_interval = self.h2.ping_interval.map(|d| d.0);
        o.h2_stream_window_size = self
            .h2
            .stream_window
            .map(|b| b.0.min(u64::from(u32::MAX >> 1)) as u32);
        o.h2_connection_window_size = self
            .h2
            .connection_window
            .map(|b| b.0.min(u64::from(u32::MAX >> 1)) as u32);
        peer
    }

    /// The TLS name of `addr`: its target's name, or the address itself (verified against the
    /// certificate's IP addresses).
    fn sni_for(&self, addr: SocketAddr) -> String {
        match self.names.load().get(&addr) {
            Some(n) => n.sni.clone(),
            None => addr.ip().to_string(),
        }
    }

    /// The `Host` to send to `addr` when the route does not preserve the client's: a named target's
    /// name, a literal target's address; nothing for others (the caller formats the address).
    pub fn host_for(&self, addr: SocketAddr) -> Option<http::HeaderValue> {
        if self.has_names {
            if let Some(n) = self.names.load().get(&addr) {
                return Some(n.host.clone());
            }
        }
        self.address_hosts
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, h)| h.clone())
    }

    /// The background DNS refresh of this upstream's named targets, for as long as its snapshot is
    /// the current one (the task is dropped when it is replaced): a lookup at once, then every
    /// `dns_refresh`; while a name has no address yet, sooner (1 s, then twice as long each time).
    pub async fn follow_names(self: Arc<Self>) {
        if !self.has_names {
            return;
        }
        let mut retry = FIRST_RETRY.min(self.dns_refresh);
        loop {
            self.refresh(lookup).await;
            let unresolved = self
                .current_targets()
                .iter()
                .any(|t| t.named && t.addrs.is_empty());
            let wait = if unresolved {
                let w = retry;
                retry = (retry * 2).min(self.dns_refresh);
                w
            } else {
                retry = FIRST_RETRY.min(self.dns_refresh);
                self.dns_refresh
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Look every named target up with `lookup` and, if any address changed, swap the pool's members.
    /// A failed or empty answer keeps the name's last addresses. Returns whether anything changed.
    pub async fn refresh<F, Fut>(&self, lookup: F) -> bool
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Vec<SocketAddr>, String>>,
    {
        let mut answers = BTreeMap::new();
        for t in self.current_targets().into_iter().filter(|t| t.named) {
            if let std::collections::btree_map::Entry::Vacant(e) = answers.entry(t.spec) {
                let answer = lookup(e.key().clone()).await;
                e.insert(answer);
            }
        }
        self.apply(&answers)
    }

    /// Take the lookups' `answers` (by target as written) and, if any address changed, swap the pool's
    /// members. A failed or empty answer keeps the name's last addresses. Returns whether anything
    /// changed.
    fn apply(&self, answers: &BTreeMap<String, Result<Vec<SocketAddr>, String>>) -> bool {
        let mut targets = self.current_targets();
        let mut changed = false;
        for t in targets.iter_mut().filter(|t| t.named) {
            let keeping = if t.addrs.is_empty() {
                "its requests get 503 until it does".to_string()
            } else {
                format!("keeping {:?}", t.addrs)
            };
            match answers.get(&t.spec) {
                None => {}
                Some(Ok(addrs)) if !addrs.is_empty() && *addrs != t.addrs => {
                    log::info!(
                        "upstream {}: {} now resolves to {:?} (was {:?})",
                        self.name,
                        t.spec,
                        addrs,
                        t.addrs
                    );
                    t.addrs = addrs.clone();
                    changed = true;
                }
                Some(Ok(addrs)) if !addrs.is_empty() => {}
                Some(Ok(_)) => log::warn!(
                    "upstream {}: {} resolves to no address; {keeping}",
                    self.name,
                    t.spec
                ),
                Some(Err(e)) => log::warn!(
                    "upstream {}: cannot resolve {}: {e}; {keeping}",
                    self.name,
                    t.spec
                ),
            }
        }
        if !changed {
            return false;
        }
        self.names.store(Arc::new(target_names(&targets)));
        let backends = backends_of(self.balance, &targets);
        self.stats
            .retain(backends.iter().filter_map(|b| b.addr.as_inet().copied()));
        self.discovery.set(backends);
        // Our discovery answers at once (it reads an `ArcSwap`), so the update completes when polled
        // once: `LoadBalancer::update` awaits nothing else (pingora-load-balancing 0.9.1, lib.rs).
        match self.update().now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => log::warn!("upstream {}: updating targets failed: {e}", self.name),
            None => log::warn!("upstream {}: updating targets did not complete", self.name),
        }
        match self.targets.lock() {
            Ok(mut t) => *t = targets,
            Err(p) => *p.into_inner() = targets,
        }
        true
    }

    /// The targets as written, with their weights: what `tollgate explain` and `tollgate diff` show
    /// (offline, a named target has no address yet).
    pub fn target_specs(&self) -> Vec<(String, usize)> {
        let specs = |t: &Vec<Target>| t.iter().map(|t| (t.spec.clone(), t.weight)).collect();
        match self.targets.lock() {
            Ok(t) => specs(&t),
            Err(p) => specs(&p.into_inner()),
        }
    }

    /// Every target with its current health (for the admin API and tests).
    pub fn targets(&self) -> Vec<(SocketAddr, usize, bool)> {
        let b = self.backends();
        b.get_backend()
            .iter()
            .filter_map(|t| t.addr.as_inet().map(|a| (*a, t.weight, b.ready(t))))
            .collect()
    }

    /// The background health checks of this upstream, for as long as its snapshot is the current
    /// one (the task is dropped when it is replaced, which also cancels a check in flight: Pingora
    /// runs a pass's checks in a `JoinSet`, pingora-load-balancing 0.9.1 `Backends::run_health_check`).
    /// The first pass starts at once, the next ones `interval` after the previous one started (or as
    /// soon as it ended, if it took longer).
    pub async fn check_health(self: Arc<Self>) {
        let Some(hc) = &self.health else { return };
        let mut tick = tokio::time::interval(hc.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.backends().run_health_check(true).await;
        }
    }
}

/// Pingora's HTTP check with what passive health needs to know of it: a passing check brings an
/// ejected target back (as Envoy does), and a target turning healthy starts its slow start.
struct Checked {
    inner: Box<dyn HealthCheck + Send + Sync>,
    stats: Arc<Stats>,
}

#[async_trait]
impl HealthCheck for Checked {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let r = self.inner.check(target).await;
        if let (Ok(()), Some(a)) = (&r, target.addr.as_inet()) {
            if self.stats.check_passed(a) {
                log::info!("target {a} is back: its health check passed");
            }
        }
        r
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let (true, Some(a)) = (healthy, target.addr.as_inet()) {
            if let Some(s) = self.stats.get(a) {
                s.restart();
            }
        }
        self.inner.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// Look every named target of `upstreams` (a snapshot's) up now, blocking, each lookup bounded by 5 s,
/// and serve the addresses found. A name that does not resolve is an error at its place in the file.
/// `tollgate validate --resolve` reports these; `tollgate run` calls it before serving, so that a fresh
/// gateway does not answer 503 while its first lookups are on their way, and only warns (the upstream's
/// background refresh keeps trying).
pub fn resolve_names<'a, I>(upstreams: I) -> Diagnostics
where
    I: IntoIterator<Item = &'a Arc<Upstream>> + Clone,
{
    let mut names: Vec<String> = upstreams
        .clone()
        .into_iter()
        .flat_map(|u| u.current_targets())
        .filter(|t| t.named)
        .map(|t| t.spec)
        .collect();
    names.sort();
    names.dedup();
    let mut d = Diagnostics::default();
    if names.is_empty() {
        return d;
    }
    let answers = lookup_blocking(names);
    for u in upstreams {
        for t in u.current_targets().into_iter().filter(|t| t.named) {
            let problem = match answers.get(&t.spec) {
                Some(Ok(a)) if !a.is_empty() => continue,
                Some(Ok(_)) => format!("`{}` resolves to no address", t.spec),
                Some(Err(e)) => format!("cannot resolve `{}`: {e}", t.spec),
                None => continue,
            };
            if let Some(mut at) = t.at {
                at.message = problem;
                d.0.push(at);
            }
        }
        u.apply(&answers);
    }
    d.sort();
    d
}

/// The IP used for consistent hashing on the client address.
pub fn ip_key(ip: IpAddr, buf: &mut [u8; 16]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        IpAddr::V6(v6) => {
            buf.copy_from_slice(&v6.octets());
            &buf[..]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::Locations;
    use crate::config::raw::UpstreamConfig;

    fn parse(addr: &str, weight: usize) -> Result<Target, String> {
        Target::parse(
            addr,
            weight,
            &Locations::default().error("upstreams.u.targets[0].addr", ""),
        )
    }

    fn upstream(balance: &str) -> Arc<Upstream> {
        let cfg: UpstreamConfig = serde_yaml_ng::from_str(&format!(
            "{{ targets: [{{ addr: \"svc.test:8080\", weight: 3 }}, {{ addr: \"10.0.0.9:80\" }}], balance: {balance} }}"
        ))
        .unwrap();
        let targets = vec![
            Target {
                addrs: vec!["10.0.0.1:8080".parse().unwrap()],
                ..parse("svc.test:8080", 3).unwrap()
            },
            parse("10.0.0.9:80", 1).unwrap(),
        ];
        build(&cfg, targets, None)
    }

    /// Upstream `u` from `cfg` and `targets`, with no hashing, TLS or resilience settings.
    fn build(
        cfg: &UpstreamConfig,
        targets: Vec<Target>,
        previous: Option<&Upstream>,
    ) -> Arc<Upstream> {
        Arc::new(Upstream::build(
            "u",
            cfg,
            targets,
            None,
            None,
            Default::default(),
            previous,
        ))
    }

    fn addrs(u: &Upstream) -> Vec<(String, usize)> {
        u.targets()
            .into_iter()
            .map(|(a, w, _)| (a.to_string(), w))
            .collect()
    }

    /// A pick skips Pingora's selection only where it could not answer otherwise: one literal address
    /// and no health check. A name (its addresses change), a second target or a health check (it
    /// can make the target unready) keep the selection.
    #[test]
    fn only_one_address_that_nothing_can_make_unready_skips_the_selection() {
        let cfg = |extra: &str| -> UpstreamConfig {
            serde_yaml_ng::from_str(&format!(
                "{{ targets: [{{ addr: \"10.0.0.9:80\" }}]{extra} }}"
            ))
            .unwrap()
        };
        let one = build(&cfg(""), vec![parse("10.0.0.9:80", 1).unwrap()], None);
        assert_eq!(one.sole, "10.0.0.9:80".parse().ok());
        assert_eq!(one.pick(b"", &[]), "10.0.0.9:80".parse().ok());
        let checked = build(
            &cfg(", health_check: { path: /healthz }"),
            vec![parse("10.0.0.9:80", 1).unwrap()],
            None,
        );
        assert_eq!(checked.sole, None);
        let named = Target {
            addrs: vec!["10.0.0.1:8080".parse().unwrap()],
            ..parse("svc.test:8080", 1).unwrap()
        };
        assert_eq!(build(&cfg(""), vec![named], None).sole, None);
        assert_eq!(upstream("round_robin").sole, None);
        // Two literal addresses: the selection, which takes turns.
        let two = build(
            &cfg(""),
            vec![
                parse("10.0.0.9:80", 1).unwrap(),
                parse("10.0.0.8:80", 1).unwrap(),
            ],
            None,
        );
        assert_eq!(two.sole, None);
        let picked: std::collections::BTreeSet<_> =
            (0..4).filter_map(|_| two.pick(b"", &[])).collect();
        assert_eq!(picked.len(), 2, "{picked:?}");
    }

    #[tokio::test]
    async fn a_name_follows_its_addresses_and_keeps_them_when_dns_fails() {
        let u = upstream("weighted");
        assert_eq!(
            addrs(&u),
            [("10.0.0.1:8080".into(), 3), ("10.0.0.9:80".into(), 1)]
        );
        let host = |a: &str| u.host_for(a.parse().unwrap());
        assert_eq!(host("10.0.0.1:8080").unwrap(), "svc.test:8080");
        assert_eq!(
            host("10.0.0.9:80").unwrap(),
            "10.0.0.9:80",
            "a literal address is its own Host"
        );
        assert_eq!(host("10.0.0.8:80"), None, "not a target");

        // Scaled out to two addresses: both serve, with the target's weight, under its name.
        let two = || async {
            Ok(vec![
                "10.0.0.2:8080".parse().unwrap(),
                "10.0.0.3:8080".parse().unwrap(),
            ])
        };
        assert!(u.refresh(|_| two()).await);
        assert_eq!(
            addrs(&u),
            [
                ("10.0.0.2:8080".into(), 3),
                ("10.0.0.3:8080".into(), 3),
                ("10.0.0.9:80".into(), 1)
            ]
        );
        let picked: BTreeSet<SocketAddr> = (0..70).filter_map(|_| u.select(b"")).collect();
        assert_eq!(picked.len(), 3, "{picked:?}");
        assert!(!picked.contains(&"10.0.0.1:8080".parse().unwrap()));
        assert_eq!(host("10.0.0.3:8080").unwrap(), "svc.test:8080");
        assert!(!u.refresh(|_| two()).await, "same answer, nothing to do");

        // A failing or empty lookup keeps the last addresses.
        assert!(!u.refresh(|_| async { Err("SERVFAIL".to_string()) }).await);
        assert!(!u.refresh(|_| async { Ok(Vec::new()) }).await);
        assert_eq!(addrs(&u).len(), 3);
    }

    #[test]
    fn literal_addresses_and_names_without_a_port() {
        let t = parse("127.0.0.1:80", 2).unwrap();
        assert!(!t.named);
        assert_eq!(t.addrs, ["127.0.0.1:80".parse::<SocketAddr>().unwrap()]);
        assert!(parse("localhost", 1).unwrap_err().contains("needs a port"));
        assert!(parse("10.0.0.1", 1).unwrap_err().contains("needs a port"));
        // Compiling looks nothing up: a name starts without addresses, whatever it would resolve to.
        let l = parse("localhost:80", 1).unwrap();
        assert!(l.named && l.addrs.is_empty());
        let l = parse("no-such-host.invalid:80", 1).unwrap();
        assert!(l.named && l.addrs.is_empty());
        assert_eq!(l.at.unwrap().path, "upstreams.u.targets[0].addr");
    }

    #[test]
    fn target_syntax_is_checked_without_a_lookup() {
        for ok in [
            "[::1]:8080",
            "users:8081",
            "users_service:80",
            "svc-1.ns.svc.cluster.local:443",
            "search.example.com.:443",
            "10.0.0.1:65535",
            "deadbeef.example.com:80",
            "0xcafe.example:80",
        ] {
            assert!(parse(ok, 1).is_ok(), "{ok}: {:?}", parse(ok, 1));
        }
        for (bad, why) in [
            ("users:0", "from 1 to 65535"),
            ("10.0.0.1:0", "from 1 to 65535"),
            ("users:65536", "from 1 to 65535"),
            ("users:http", "from 1 to 65535"),
            ("users:", "from 1 to 65535"),
            (":80", "the host is empty"),
            ("::1:80", "`[::1:80]:PORT`"),
            ("[::1]", "[ADDR]:PORT"),
            ("fe80::1%eth0:80", "[ADDR]:PORT"),
            ("us ers:80", "not a host name or IP address"),
            ("users/api:80", "not a host name or IP address"),
            ("http://users:80", "is a URL"),
            ("a..b:80", "empty label"),
            ("-users:80", "starts or ends with `-`"),
            ("999.1.1.1:80", "not a valid IPv4 address"),
            ("0x7f000001:9090", "form other than dotted decimal"),
            ("0x7f.0x1:9090", "form other than dotted decimal"),
            ("0X7F.0.0.1:80", "IPv4 address"),
        ] {
            let e = parse(bad, 1).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("{}.example:80", "a".repeat(64));
        assert!(parse(&long, 1).unwrap_err().contains("longer than 63"));
        let longer = format!("{}x:80", "abcdefgh.".repeat(29));
        assert!(parse(&longer, 1).unwrap_err().contains("longer than 253"));
    }

    fn named_upstream(addr: &str, previous: Option<&Upstream>) -> Arc<Upstream> {
        let cfg: UpstreamConfig =
            serde_yaml_ng::from_str(&format!("{{ targets: [{{ addr: \"{addr}\" }}] }}")).unwrap();
        let targets = vec![parse(addr, 1).unwrap()];
        build(&cfg, targets, previous)
    }

    #[tokio::test]
    async fn a_name_without_addresses_selects_nothing_and_a_reload_keeps_the_found_ones() {
        let first = named_upstream("svc.test:8080", None);
        assert_eq!(
            first.select(b""),
            None,
            "no address yet: answered as no healthy target"
        );
        assert!(first.targets().is_empty());
        let found: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        assert!(first.refresh(|_| async move { Ok(vec![found]) }).await);
        assert_eq!(first.select(b""), Some(found));
        // The upstream that replaces it on a reload serves the same name at once, before any lookup.
        let next = named_upstream("svc.test:8080", Some(&first));
        assert_eq!(next.select(b""), Some(found));
        // A different name starts afresh.
        let other = named_upstream("other.test:8080", Some(&first));
        assert_eq!(other.select(b""), None);
    }

    #[test]
    fn resolving_reports_a_name_that_does_not_resolve_at_its_place() {
        // `localhost` resolves from the hosts file; `.invalid` never resolves (RFC 6761 §6.4).
        let good = named_upstream("localhost:80", None);
        let bad = named_upstream("no-such-host.invalid:80", None);
        let d = resolve_names([&good, &bad]);
        let errors: Vec<_> = d.errors().collect();
        assert_eq!(errors.len(), 1, "{d}");
        assert_eq!(errors[0].path, "upstreams.u.targets[0].addr");
        assert!(
            errors[0].message.contains("`no-such-host.invalid:80`"),
            "{}",
            errors[0].message
        );
        assert!(!good.targets().is_empty(), "the addresses found are served");
        assert!(bad.targets().is_empty());
    }
}
