//! Upstream pools: targets behind a service-discovery seam, a Pingora load balancer, health checks.
//!
//! Targets live in [`Discovery`], an `ArcSwap` that implements Pingora's `ServiceDiscovery`, so they can
//! be replaced at runtime (admin API, reload, DNS later) and picked up by `LoadBalancer::update`. Health
//! is Pingora's: an HTTP check per target, with consecutive-success/failure thresholds; a target starts
//! healthy so that a fresh gateway serves before the first check finishes.
//!
//! Health lives in a Pingora [`HealthRegistry`] that a reload hands on to the rebuilt upstream of the same
//! name when its health check is unchanged: a target found dead stays out of rotation across reloads
//! instead of taking traffic again until the next checks fail.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
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

/// Resolved upstream settings and its pool.
pub struct Upstream {
    pub name: String,
    /// `tollgate_upstream_duration_seconds{upstream=name}`, resolved once.
    pub duration: prometheus::Histogram,
    pub balance: Balance,
    pub hash_on: Option<HashOn>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    pub preserve_host: bool,
    pub health: Option<HealthCheckConfig>,
    pub discovery: Arc<Discovery>,
    pool: Pool,
    /// Health of the targets, shared with the upstream this one replaced on a reload.
    health_registry: Arc<HealthRegistry>,
    health_running: AtomicBool,
    /// Milliseconds since `epoch` when the next health check is due.
    next_check_ms: AtomicU32,
    epoch: Instant,
}

/// Resolve `host:port` (an IP or a name resolved once at load time).
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if !addr.contains(':') {
        return Err(format!("`{addr}` needs a port, e.g. `{addr}:80`"));
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{addr}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{addr}` resolves to no address"))
}

impl Upstream {
    /// Build from a validated config. `targets` are resolved addresses with weights. `previous` is the
    /// upstream of the same name in the config being replaced, whose target health carries over when
    /// the health check is the same.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        targets: Vec<(SocketAddr, usize)>,
        hash_on: Option<HashOn>,
        previous: Option<&Upstream>,
    ) -> Upstream {
        let backends: BTreeSet<Backend> = targets
            .iter()
            .map(|(addr, w)| {
                let weight = if cfg.balance == Balance::RoundRobin {
                    1
                } else {
                    *w
                };
                Backend {
                    addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(*addr),
                    weight,
                    ext: Default::default(),
                }
            })
            .collect();
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
            let mut check = HttpHealthCheck::new("localhost", false);
            check.consecutive_success = hc.healthy.max(1) as usize;
            check.consecutive_failure = hc.unhealthy.max(1) as usize;
            check.peer_template.options.connection_timeout = Some(hc.timeout.0);
            check.peer_template.options.read_timeout = Some(hc.timeout.0);
            check.peer_template.options.write_timeout = Some(hc.timeout.0);
            if let Ok(mut req) = RequestHeader::build("GET", hc.path.as_bytes(), None) {
                let _ = req.insert_header("host", "localhost");
                let _ = req.insert_header("user-agent", "tollgate-health-check");
                check.req = req;
            }
            health_registry.set_health_check(Box::new(check));
        }
        let up = Upstream {
            name: name.to_string(),
            duration: crate::metrics::upstream_duration(name),
            balance: cfg.balance,
            hash_on,
            connect_timeout: cfg.timeouts.connect.0,
            read_timeout: cfg.timeouts.read.0,
            write_timeout: cfg.timeouts.write.0,
            idle_timeout: cfg.timeouts.idle.0,
            retries: cfg.retries,
            preserve_host: cfg.preserve_host,
            health: cfg.health_check.clone(),
            discovery,
            pool,
            health_registry,
            health_running: AtomicBool::new(false),
            next_check_ms: AtomicU32::new(0),
            epoch: Instant::now(),
        };
        // Static discovery answers at once, so the first update completes without a runtime.
        let _ = up.update().now_or_never();
        up
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
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        peer
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
        let now = self.epoch.elapsed().as_millis() as u32;
        if now < self.next_check_ms.load(Ordering::Relaxed) {
            return;
        }
        if self.health_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let interval = hc.interval.0.as_millis() as u32;
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
