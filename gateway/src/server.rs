//! Assembling and running the Pingora server: the proxy service on the configured listeners, the admin
//! listener and the background services.
//!
//! What serves a snapshot runs with it: [`SnapshotTasks`] starts the health checks, DNS refreshes and
//! JWKS refreshes of each snapshot the reloader installs, and stops them (drops their tasks) when the
//! next one replaces it. What serves the process (span export, the config watch, the drain at shutdown)
//! runs as a background service of the server. The metrics and the span exporter are made here and
//! handed to the proxy, the reloader and these services.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};

use pingora_core::services::listening::Service;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::conn::{ConnectionTracker, HeaderDeadline};
use crate::metrics::Metrics;
use crate::otlp::Exporter;
use crate::plugin::Registry;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::snapshot::Snapshot;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, ResolvesServerCert};

/// How often a JWT provider's task asks it whether its JWKS is due (the provider keeps the due time:
/// its refresh interval, sooner after a failure).
const JWKS_POLL: Duration = Duration::from_millis(200);

/// Runs the background work of the installed snapshot: per upstream its health checks
/// ([`crate::upstream::Upstream::check_health`]) and the DNS refresh of its named targets
/// ([`crate::upstream::Upstream::follow_names`]), per JWT provider with a `jwks_url` its JWKS refresh.
/// The tasks are owned by a `JoinSet` per snapshot; when the reloader installs the next snapshot the
/// set is dropped, which aborts them (an upstream removed by a reload is no longer checked), and the
/// new snapshot's tasks start.
pub struct SnapshotTasks {
    pub installed: watch::Receiver<Arc<Snapshot>>,
}

/// Start the background work of `snap` in `tasks`.
fn start_tasks(snap: &Snapshot, tasks: &mut JoinSet<()>) {
    for up in snap.upstreams.values() {
        if up.health.is_some() {
            tasks.spawn(up.clone().check_health());
        }
        tasks.spawn(up.clone().follow_names());
    }
    for p in snap.jwt.values().filter(|p| p.has_jwks()) {
        let p = p.clone();
        tasks.spawn(async move {
            loop {
                p.refresh_if_due().await;
                tokio::time::sleep(JWKS_POLL).await;
            }
        });
    }
}

#[async_trait]
impl BackgroundService for SnapshotTasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut installed = self.installed.clone();
        loop {
            let mut tasks = JoinSet::new();
            start_tasks(&installed.borrow_and_update(), &mut tasks);
            tokio::select! {
                _ = shutdown.changed() => return,
                changed = installed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            // `tasks` goes out of scope here: a dropped `JoinSet` aborts every task it holds.
        }
    }
}

/// Sends finished spans to the collector of the *current* snapshot (see `otlp`). What is left at
/// shutdown is sent by [`Drain`] once the last request is done.
pub struct SpanExport {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub exporter: Arc<Exporter>,
}

/// Send the spans waiting now, to the current snapshot's collector (if tracing is on).
async fn export_spans(
    snapshot: &ArcSwap<Snapshot>,
    exporter: &Exporter,
    client: &reqwest::Client,
    spans: Vec<crate::otlp::Span>,
) {
    let snap = snapshot.load_full();
    if let (false, Some(t)) = (spans.is_empty(), &snap.tracing) {
        exporter
            .send(
                client,
                &t.otlp_endpoint,
                &t.service_name,
                t.timeout.0,
                spans,
            )
            .await;
    }
}

#[async_trait]
impl BackgroundService for SpanExport {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = reqwest::Client::new();
        loop {
            tokio::select! {
                spans = self.exporter.next_batch() => {
                    export_spans(&self.snapshot, &self.exporter, &client, spans).await
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Reloads the config when its file changes (polled every `server.reload.interval`) and on SIGHUP.
pub struct ConfigWatch {
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_poll = std::time::Instant::now();
        loop {
            let sighup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    self.reloader.reload("sighup").await;
                }
                _ = tick.tick() => {
                    let every = self.reloader.shared.load().settings.watch_config;
                    if let Some(every) = every {
                        if last_poll.elapsed() >= every {
                            last_poll = std::time::Instant::now();
                            if self.reloader.file_changed() {
                                self.reloader.reload("file").await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Ends the process as soon as a graceful shutdown (SIGTERM) or upgrade (SIGQUIT, after the sockets
/// were handed over) has no request left in flight, instead of always waiting out Pingora's grace period;
/// at the latest when `shutdown.timeout` has passed. Before it exits it sends the last spans and has the
/// access-log writer write every line and stop.
pub struct Drain {
    phase: std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    /// The public listener's connections.
    connections: Arc<ConnectionTracker>,
    /// For the last spans' collector.
    snapshot: Arc<ArcSwap<Snapshot>>,
    exporter: Arc<Exporter>,
    metrics: Arc<Metrics>,
    access_log: Option<Arc<AccessLog>>,
    /// `shutdown.timeout`.
    timeout: Duration,
}

/// How long the access-log writer may take to write what is left at exit.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phase) = self.phase.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            match phase.recv().await {
                Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
        log::info!("draining: waiting for in-flight requests and open connections");
        // Once the proxy stopped accepting and closed its idle connections, every remaining connection
        // is one whose request is being served (keep-alive is off now), so "none open" means done.
        let c = &self.connections;
        let deadline = Instant::now() + self.timeout;
        let drained = || c.closed() && c.open() == 0 && self.metrics.in_flight.get() <= 0;
        while !drained() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !drained() {
            log::warn!(
                "shutdown.timeout passed with {} requests in flight; exiting",
                self.metrics.in_flight.get()
            );
        }
        let spans = self.exporter.take();
        export_spans(
            &self.snapshot,
            &self.exporter,
            &reqwest::Client::new(),
            spans,
        )
        .await;
        if let Some(log) = self.access_log.clone() {
            let closed = tokio::task::spawn_blocking(move || log.close(LOG_FLUSH_TIMEOUT)).await;
            if !matches!(closed, Ok(true)) {
                log::warn!("the access log could not be written out in {LOG_FLUSH_TIMEOUT:?}");
            }
        }
        log::info!("drained; exiting");
        std::process::exit(0);
    }
}

/// How to run.
pub struct RunOptions {
    /// The config file, for reloads and `/admin/config`.
    pub config_path: String,
    /// Plugins the config may use (reloads build with it too).
    pub registry: Arc<Registry>,
    /// Take over the listening sockets of a running instance (`tollgate run --upgrade`).
    pub upgrade: bool,
}

/// Build the Pingora server for `snapshot` and run it until shutdown. Never returns.
///
/// Signals: SIGTERM stops accepting and exits once no request is in flight (at most `shutdown.timeout`);
/// SIGQUIT hands the listening sockets to a new process started with `--upgrade`, then does the same;
/// SIGINT stops at once; SIGHUP reloads.
pub fn run(snapshot: Snapshot, opts: RunOptions) -> ! {
    let settings = snapshot.settings.clone();
    // The upgrade socket hands the listening sockets to whoever listens on it: its directory must be
    // ours alone, checked (or created) before anything starts. Both the old and the new process run this.
    if let Err(e) = crate::upgrade::prepare_dir(std::path::Path::new(&settings.upgrade_sock)) {
        eprintln!(
            "tollgate: upgrade socket `{}` (server.upgrade_sock): {e}",
            settings.upgrade_sock
        );
        std::process::exit(1);
    }
    // Pingora retries a busy address for a while and then runs without that listener; an operator
    // wants to know at once. (With --upgrade the sockets come from the running instance instead.)
    if !opts.upgrade {
        let admin = settings.admin_listen.iter();
        for addr in settings
            .listen
            .iter()
            .chain(&settings.tls_listen)
            .chain(admin)
        {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!("tollgate: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    // Names are looked up while the gateway runs, not while compiling: once here, before anything
    // serves, so the first requests find addresses; then by each upstream's background refresh (which
    // keeps trying a name that does not resolve now, so this only warns).
    for w in crate::upstream::resolve_names(snapshot.upstreams.values()).0 {
        log::warn!("{w}; retrying in the background");
    }
    let metrics = match Metrics::new() {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("tollgate: cannot set up metrics: {e}");
            std::process::exit(1);
        }
    };
    let exporter = Arc::new(Exporter::new(metrics.spans_dropped.clone()));
    let reloader = Arc::new(Reloader::new(
        &opts.config_path,
        opts.registry,
        snapshot,
        metrics.clone(),
    ));
    let shared = reloader.shared.clone();

    let conf = ServerConf {
        threads: settings.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        // Pingora stops accepting at once, then keeps the runtimes alive for this "grace period" before
        // tearing them down (dropping whatever is still running). `Drain` exits earlier, as soon as
        // nothing is in flight, and at the latest at `shutdown.timeout`; the extra second leaves it
        // the time to write out the access log and the last spans before Pingora would.
        grace_period_seconds: Some(settings.shutdown_timeout.as_secs_f64().ceil() as u64 + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 512,
        upgrade_sock: settings.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let gateway = Gateway::new(shared.clone(), metrics.clone(), exporter.clone());
    let access_log = gateway.access_log();
    let refused = gateway.refused_requests();
    let mut http = pingora_proxy::HttpProxy::new(gateway, server.configuration.clone());
    http.handle_init_modules();
    // HTTP/2 (negotiated by ALPN on the HTTPS listeners): an idle connection closes like an idle
    // HTTP/1 keep-alive one.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(settings.keepalive_timeout);
    http.server_options = Some(options);
    let app = HeaderDeadline::new(
        Arc::new(http),
        settings.header_read_timeout,
        settings.tunnel_idle_timeout,
    )
    .with_refused(refused);
    let connections = app.tracker.clone();
    let mut proxy = Service::new("tollgate".to_string(), app);
    for addr in &settings.listen {
        proxy.add_tcp(&addr.to_string());
    }
    for addr in &settings.tls_listen {
        // The certificate comes from the current snapshot at each handshake (see `tls`); the paths
        // given to Pingora are unused once a resolver is set.
        let Ok(mut tls) = TlsSettings::intermediate("", "") else {
            eprintln!("tollgate: cannot set up TLS on {addr}");
            std::process::exit(1);
        };
        tls.set_cert_resolver(Arc::new(SnapshotCert(shared.clone())));
        tls.enable_h2();
        proxy.add_tls_with_settings(&addr.to_string(), None, tls);
    }
    server.add_service(proxy);
    if let Some(addr) = settings.admin_listen {
        let mut admin = Service::new(
            "admin".to_string(),
            Admin {
                reloader: reloader.clone(),
            },
        );
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    server.add_service(background_service(
        "snapshot tasks",
        SnapshotTasks {
            installed: reloader.subscribe(),
        },
    ));
    server.add_service(background_service(
        "span export",
        SpanExport {
            snapshot: shared.clone(),
            exporter: exporter.clone(),
        },
    ));
    server.add_service(background_service("config watch", ConfigWatch { reloader }));
    server.add_service(background_service(
        "drain",
        Drain {
            phase: std::sync::Mutex::new(Some(server.watch_execution_phase())),
            connections,
            snapshot: shared.clone(),
            exporter,
            metrics,
            access_log,
            timeout: settings.shutdown_timeout,
        },
    ));
    server.run_forever()
}

/// Hands the current snapshot's certificate to every TLS handshake.
/// (Here rather than in `tls`, so that `tls` knows nothing of snapshots: no module cycle.)
pub struct SnapshotCert(pub Arc<ArcSwap<Snapshot>>);

impl std::fmt::Debug for SnapshotCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCert")
    }
}

impl ResolvesServerCert for SnapshotCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().tls.as_ref()?.pick(hello.server_name()))
    }
}
