//! Assembling and running the Pingora server: the proxy service on the configured listeners and the
//! health-check background service.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};

use pingora_core::services::listening::Service;

use crate::deadline::HeaderDeadline;
use crate::proxy::Gateway;
use crate::snapshot::Snapshot;

/// Runs due health checks of the *current* snapshot's upstreams, so reloaded pools are checked too.
pub struct HealthChecks {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let snap = self.snapshot.load();
                    for up in snap.upstreams.values() {
                        up.maybe_check();
                    }
                }
            }
        }
    }
}

/// Fetches and refreshes the JWKS of the *current* snapshot's JWT providers (at start, then every
/// `jwks_refresh`; sooner after a failure).
pub struct JwksRefresh {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut running: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    running.retain(|h| !h.is_finished());
                    if !running.is_empty() {
                        continue;
                    }
                    let snap = self.snapshot.load_full();
                    for p in snap.jwt.values().filter(|p| p.has_jwks()) {
                        let p = p.clone();
                        running.push(tokio::spawn(async move { p.refresh_if_due().await }));
                    }
                }
            }
        }
    }
}

/// Build the Pingora server for `snapshot` and run it until shutdown. Never returns.
pub fn run(snapshot: Snapshot) -> ! {
    let settings = snapshot.settings.clone();
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));

    let conf = ServerConf {
        threads: settings.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        grace_period_seconds: Some(settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.shutdown_timeout.as_secs()),
        upstream_keepalive_pool_size: 512,
        ..ServerConf::default()
    };
    let opt = Opt::default();
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut http =
        pingora_proxy::HttpProxy::new(Gateway::new(shared.clone()), server.configuration.clone());
    http.handle_init_modules();
    let app = HeaderDeadline {
        inner: Arc::new(http),
        timeout: settings.header_read_timeout,
    };
    let mut proxy = Service::new("tollgate".to_string(), app);
    for addr in &settings.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "health checks",
        HealthChecks {
            snapshot: shared.clone(),
        },
    ));
    server.add_service(background_service(
        "jwks refresh",
        JwksRefresh { snapshot: shared },
    ));
    server.run_forever()
}
