//! Upstream pools: targets behind a service-discovery seam, a Pingora load balancer, health checks.
//!
//! Targets live in [`Discovery`], an `ArcSwap` that implements Pingora's `ServiceDiscovery`, so they can
//! be replaced at runtime and picked up by `LoadBalancer::update`. A target given by name stands for
//! every address the name resolves to, and is resolved again every `dns_refresh` (so a scaled service or a
//! moved container is followed without a reload); a failed lookup keeps the last addresses. Health
//! is Pingora's: an HTTP check per target, with consecutive-success/failure thresholds; a target starts
//! healthy so that a fresh gateway serves before the first check finishes.
//!
//! Health lives in a Pingora [`HealthRegistry`] that a reload hands on to the rebuilt upstream of the same
//! name when its health check is unchanged: a target found dead stays out of rotation across reloads
//! instead of taking traffic again until the next checks fail.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::FutureExt;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};

use crate::config::raw::{Balance, HealthCheckConfig, UpstreamConfig};
use crate::metrics::{Lazy, Metrics};

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
    /// Sorted, without duplicates; one address for a literal target.
    pub addrs: Vec<SocketAddr>,
    pub weight: usize,
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

/// Look a name up with the system resolver (bounded in time), for the periodic refresh.
async fn lookup(name: String) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host(name.as_str()),
    )
    .await
    {
        Ok(Ok(addrs)) => {
            let mut v: Vec<SocketAddr> = addrs.collect();
            v.sort();
            v.dedup();
            Ok(v)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("lookup timed out after 5s".into()),
    }
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
    pub retries: u32,
    pub preserve_host: bool,
    pub health: Option<HealthCheckConfig>,
    pub tls: Option<UpstreamTls>,
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
    resolving: AtomicBool,
    /// Milliseconds since `epoch` when the next lookup is due.
    next_resolve_ms: AtomicU64,
    health_running: AtomicBool,
    /// Milliseconds since `epoch` when the next health check is due (u64: a u32 would wrap after 49 days).
    next_check_ms: AtomicU64,
    epoch: Instant,
}

/// Resolve a target's `host:port`: an IP address as it is, a name to every address it has (at load time
/// with the system resolver; [`Upstream::maybe_resolve`] refreshes it later).
pub fn resolve(addr: &str, weight: usize) -> Result<Target, String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(Target {
            spec: addr.to_string(),
            named: false,
            addrs: vec![sa],
            weight,
        });
    }
    if !addr.contains(':') {
        return Err(format!("`{addr}` needs a port, e.g. `{addr}:80`"));
    }
    let mut addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("`{addr}` resolves to no address"));
    }
    Ok(Target {
        spec: addr.to_string(),
        named: true,
        addrs,
        weight,
    })
}

impl Upstream {
    /// Build from a validated config. `targets` are resolved addresses with weights. `previous` is the
    /// upstream of the same name in the config being replaced, whose target health carries over when
    /// the health check is the same.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        targets: Vec<Target>,
        hash_on: Option<HashOn>,
        tls: Option<UpstreamTls>,
        previous: Option<&Upstream>,
    ) -> Upstream {
        let backends = backends_of(cfg.balance, &targets);
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
            Balance::ConsistentHash => Pool::Consistent(LoadBalancer::from_backends(make())),
        };
        if let Some(hc) = cfg.health_check.as_ref().filter(|_| fresh) {
            // Checks go to each target with the upstream's SNI (or its first target's host) and CAs.
            let check_host = tls
                .as_ref()
                .and_then(|t| t.sni.clone())
                .or_else(|| targets.first().map(|t| host_of(&t.spec).to_string()))
                .unwrap_or_else(|| "localhost".into());
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
            health_registry.set_health_check(Box::new(check));
        }
        let up = Upstream {
            name: name.to_string(),
            duration: Lazy::default(),
            balance: cfg.balance,
            hash_on,
            connect_timeout: cfg.timeouts.connect.0,
            read_timeout: cfg.timeouts.read.0,
            write_timeout: cfg.timeouts.write.0,
            idle_timeout: cfg.timeouts.idle.0,
            retries: cfg.retries,
            preserve_host: cfg.preserve_host,
            health: cfg.health_check.clone(),
            tls_pool_key: tls.as_ref().map_or(0, UpstreamTls::pool_key),
            tls,
            discovery,
            pool,
            health_registry,
            names: ArcSwap::from_pointee(target_names(&targets)),
            has_names: targets.iter().any(|t| t.named),
            targets: Mutex::new(targets),
            dns_refresh: cfg.dns_refresh.0,
            resolving: AtomicBool::new(false),
            next_resolve_ms: AtomicU64::new(cfg.dns_refresh.0.as_millis() as u64),
            health_running: AtomicBool::new(false),
            next_check_ms: AtomicU64::new(0),
            epoch: Instant::now(),
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
        let b = match &self.pool {
            Pool::RoundRobin(lb) => lb.select(key, 256),
            Pool::Consistent(lb) => lb.select(key, 256),
        }?;
        b.addr.as_inet().copied()
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
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
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
    /// name, else nothing (the caller uses the address).
    pub fn host_for(&self, addr: SocketAddr) -> Option<http::HeaderValue> {
        if !self.has_names {
            return None;
        }
        self.names.load().get(&addr).map(|n| n.host.clone())
    }

    /// Resolve named targets again if they have any and it is due. Returns at once; the lookups run on
    /// their own task.
    pub fn maybe_resolve(self: &Arc<Self>) {
        if !self.has_names {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.next_resolve_ms.load(Ordering::Relaxed)
            || self.resolving.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let every = self.dns_refresh.as_millis() as u64;
        self.next_resolve_ms
            .store(now.saturating_add(every), Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            me.refresh(lookup).await;
            me.resolving.store(false, Ordering::Release);
        });
    }

    /// Look every named target up with `lookup` and, if any address changed, swap the pool's members.
    /// A failed or empty answer keeps the name's last addresses. Returns whether anything changed.
    pub async fn refresh<F, Fut>(&self, lookup: F) -> bool
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Vec<SocketAddr>, String>>,
    {
        let mut targets = match self.targets.lock() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut changed = false;
        for t in targets.iter_mut().filter(|t| t.named) {
            match lookup(t.spec.clone()).await {
                Ok(addrs) if !addrs.is_empty() => {
                    if addrs != t.addrs {
                        log::info!(
                            "upstream {}: {} now resolves to {:?} (was {:?})",
                            self.name,
                            t.spec,
                            addrs,
                            t.addrs
                        );
                        t.addrs = addrs;
                        changed = true;
                    }
                }
                Ok(_) => log::warn!(
                    "upstream {}: {} resolves to no address; keeping {:?}",
                    self.name,
                    t.spec,
                    t.addrs
                ),
                Err(e) => log::warn!(
                    "upstream {}: cannot resolve {}: {e}; keeping {:?}",
                    self.name,
                    t.spec,
                    t.addrs
                ),
            }
        }
        if !changed {
            return false;
        }
        self.names.store(Arc::new(target_names(&targets)));
        self.discovery.set(backends_of(self.balance, &targets));
        if let Err(e) = self.update().await {
            log::warn!("upstream {}: updating targets failed: {e}", self.name);
        }
        match self.targets.lock() {
            Ok(mut t) => *t = targets,
            Err(p) => *p.into_inner() = targets,
        }
        true
    }

    /// Every target with its current health (for the admin API and tests).
    pub fn targets(&self) -> Vec<(SocketAddr, usize, bool)> {
        let b = self.backends();
        b.get_backend()
            .iter()
            .filter_map(|t| t.addr.as_inet().map(|a| (*a, t.weight, b.ready(t))))
            .collect()
    }

    /// Run a health check if one is configured, due, and not already running. Returns at once;
    /// the check runs on its own task.
    pub fn maybe_check(self: &Arc<Self>) {
        let Some(hc) = &self.health else { return };
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.next_check_ms.load(Ordering::Relaxed) {
            return;
        }
        if self.health_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let interval = hc.interval.0.as_millis() as u64;
        self.next_check_ms
            .store(now.saturating_add(interval), Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            me.backends().run_health_check(true).await;
            me.health_running.store(false, Ordering::Release);
        });
    }
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
    use crate::config::raw::UpstreamConfig;

    fn upstream(balance: &str) -> Arc<Upstream> {
        let cfg: UpstreamConfig = serde_yaml_ng::from_str(&format!(
            "{{ targets: [{{ addr: \"svc.test:8080\", weight: 3 }}, {{ addr: \"10.0.0.9:80\" }}], balance: {balance} }}"
        ))
        .unwrap();
        let targets = vec![
            Target {
                spec: "svc.test:8080".into(),
                named: true,
                addrs: vec!["10.0.0.1:8080".parse().unwrap()],
                weight: 3,
            },
            resolve("10.0.0.9:80", 1).unwrap(),
        ];
        Arc::new(Upstream::build("u", &cfg, targets, None, None, None))
    }

    fn addrs(u: &Upstream) -> Vec<(String, usize)> {
        u.targets()
            .into_iter()
            .map(|(a, w, _)| (a.to_string(), w))
            .collect()
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
            host("10.0.0.9:80"),
            None,
            "a literal address is its own Host"
        );

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
        let t = resolve("127.0.0.1:80", 2).unwrap();
        assert!(!t.named);
        assert_eq!(t.addrs, ["127.0.0.1:80".parse::<SocketAddr>().unwrap()]);
        assert!(resolve("localhost", 1)
            .unwrap_err()
            .contains("needs a port"));
        let l = resolve("localhost:80", 1).unwrap();
        assert!(l.named && !l.addrs.is_empty());
    }
}
