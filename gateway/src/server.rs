//! Assembling and running the Pingora server: the proxy service on the configured listeners, the admin
//! listener and the background services.
//!
//! What serves a snapshot runs with it: [`SnapshotTasks`] starts the health checks, DNS refreshes and
//! JWKS refreshes of each snapshot the reloader installs, and stops them (drops their tasks) when the
//! next one replaces it. What serves the process (span export, the config watch, the drain at shutdown)
//! runs as a background service of the server. The metrics and the span exporter are made here and
//! handed to the proxy, the reloader and these services.
//!
//! Two ways to run it: [`run`] is `tollgate run`, the process (its signals, its drain, upgrades);
//! [`spawn_in_process`] runs the same gateway on a thread of the caller's process, on listeners the
//! caller bound before start, for tests that need the gateway's behaviour but no process of its own.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{
    ExecutionPhase, Fds, ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch,
    ShutdownWatch,
};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::services::Service as PingoraService;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::conn::{ConnectionTracker, HeaderDeadline};
use crate::metrics::Metrics;
use crate::otlp::Exporter;
use crate::plugin::Registry;
use crate::proxy::Gateway;
use crate::reload::{ReloadStatus, Reloader};
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
    for p in snap.providers.jwt.values().filter(|p| p.has_jwks()) {
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
    /// Reload on SIGHUP. Off for a gateway run in process: a signal goes to the whole process, so it
    /// would reload every gateway in it, and listening for it replaces the process's own handling.
    pub sighup: bool,
}

#[async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        #[cfg(unix)]
        let hup = self
            .sighup
            .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()));
        let mut hup = match hup {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
            None => None,
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

/// Reopens the access-log file on SIGUSR1, after logrotate moved it (`postrotate kill -USR1`). Only for
/// a gateway that is the process (a signal is the process's), and only with `access_log.path`.
pub struct LogReopen {
    pub access_log: Arc<AccessLog>,
}

#[async_trait]
impl BackgroundService for LogReopen {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Pingora listens for SIGTERM, SIGINT and SIGQUIT only (pingora-core 0.9.1
        // `server/mod.rs`, `UnixShutdownSignalWatch`); SIGUSR1's default action would end the process.
        let mut usr1 =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGUSR1 (access-log reopen): {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = usr1.recv() => self.access_log.reopen(),
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
/// SIGINT stops at once; SIGHUP reloads; SIGUSR1 reopens the access-log file.
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
    let upgrade = opts.upgrade;
    match assemble(
        snapshot,
        opts.config_path,
        opts.registry,
        Sockets::Bind { upgrade },
    ) {
        Ok(built) => built.server.run_forever(),
        Err(e) => {
            eprintln!("tollgate: {e}");
            std::process::exit(1);
        }
    }
}

/// Where the listening services get their sockets.
enum Sockets {
    /// Bind the configured addresses (or, with `upgrade`, take them from the running instance).
    Bind { upgrade: bool },
    /// Serve on sockets the caller bound; `tag` names the threads (see [`spawn_in_process`]).
    PreBound { listeners: Listeners, tag: String },
}

/// The server with its services added, and what its runner needs besides.
struct Assembled {
    server: Server,
    reloader: Arc<Reloader>,
    access_log: Option<Arc<AccessLog>>,
    /// The pre-bound admin and HTTPS listeners that serve (in process).
    serving: (Option<SocketAddr>, Option<SocketAddr>),
}

/// Build the Pingora server for `snapshot`: the proxy and admin services, the background services.
/// Process-level parts (the drain that exits the process, SIGHUP) only when binding for a process.
fn assemble(
    snapshot: Snapshot,
    config_path: String,
    registry: Arc<Registry>,
    sockets: Sockets,
) -> Result<Assembled, String> {
    let settings = snapshot.settings.clone();
    // Names are looked up while the gateway runs, not while compiling: once here, before anything
    // serves, so the first requests find addresses; then by each upstream's background refresh (which
    // keeps trying a name that does not resolve now, so this only warns).
    for w in crate::upstream::resolve_names(snapshot.upstreams.values()).0 {
        log::warn!("{w}; retrying in the background");
    }
    let metrics = Metrics::new()
        .map(Arc::new)
        .map_err(|e| format!("cannot set up metrics: {e}"))?;
    let exporter = Arc::new(Exporter::new(metrics.spans_dropped.clone()));
    let reloader = Arc::new(Reloader::new(
        &config_path,
        registry,
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
        // Every Pingora timeout of a second or more (the upstream read, write and pool idle timeouts)
        // on tokio's timer rather than pingora-timeout's shared 10 ms wheel: its registration (a
        // lock, a map lookup, a boxed waiter on a shared `Notify`) cost about 2,000 instructions per
        // proxied request more than tokio's (callgrind, benches/README.md "Timers"), and no clock
        // thread wakes 100 times a second. Tokio's timer is also exact to the millisecond.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: matches!(sockets, Sockets::Bind { upgrade: true }),
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // In process the services' names carry the tag, so that their threads (named after them by
    // Pingora's runtimes) tell which gateway of the process logged a line.
    let (in_process, tag) = match &sockets {
        Sockets::Bind { .. } => (false, String::new()),
        Sockets::PreBound { tag, .. } => (true, format!(" {tag}")),
    };
    let named = |name: &str| format!("{name}{tag}");

    let gateway = Gateway::new(shared.clone(), metrics.clone(), exporter.clone());
    let access_log = gateway.access_log();
    let refused = gateway.refused_requests();
    let mut http = pingora_proxy::HttpProxy::new(gateway, server.configuration.clone());
    http.handle_init_modules();
    // HTTP/2 (negotiated by ALPN on the HTTPS listeners): an idle connection closes like an idle
    // HTTP/1 keep-alive one.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(settings.keepalive_timeout);
    // HTTP/2 in clear on the plain listeners (`server.h2c`): `HeaderDeadline` tells it from HTTP/1.
    options.h2c = settings.h2c;
    http.server_options = Some(options);
    let app = HeaderDeadline::new(
        Arc::new(http),
        settings.header_read_timeout,
        settings.tunnel_idle_timeout,
    )
    .with_refused(refused)
    .with_h2c(settings.h2c)
    .with_keepalive({
        let shared = shared.clone();
        Arc::new(move || shared.load().settings.keepalive_timeout)
    });
    // `server.proxy_protocol` as the running snapshot has it (a reload changes who is trusted), with
    // the head deadline the header must arrive within.
    let pp_snapshot = shared.clone();
    let proxy_protocol: crate::proxy_protocol::Current = Arc::new(move || {
        let s = pp_snapshot.load();
        let p = s.settings.proxy_protocol.clone()?;
        Some((p, s.settings.header_read_timeout))
    });
    let app = app.with_proxy_protocol(proxy_protocol.clone());
    let connections = app.tracker.clone();
    // HTTPS listeners read the header before the TLS handshake (Pingora's pre-TLS hook; Service has
    // no setter for it, its Listeners do).
    let mut endpoints = pingora_core::listeners::Listeners::new();
    endpoints.set_pre_tls_callback(Arc::new(crate::proxy_protocol::PreTls(proxy_protocol)));
    let mut proxy = Service::with_listeners(named("tollgate"), endpoints, app);
    // The certificate comes from the current snapshot at each handshake (see `tls`); the paths given
    // to Pingora are unused once a resolver is set.
    let tls_settings = |addr: &dyn std::fmt::Display| {
        let mut tls = TlsSettings::intermediate("", "")
            .map_err(|_| format!("cannot set up TLS on {addr}"))?;
        tls.set_cert_resolver(Arc::new(SnapshotCert(shared.clone())));
        tls.enable_h2();
        Ok::<_, String>(tls)
    };
    let admin_app = Admin::new(reloader.clone());
    let mut serving = (None, None);
    match sockets {
        Sockets::Bind { .. } => {
            for addr in &settings.listen {
                proxy.add_tcp(&addr.to_string());
            }
            for addr in &settings.tls_listen {
                proxy.add_tls_with_settings(&addr.to_string(), None, tls_settings(addr)?);
            }
            server.add_service(proxy);
            if let Some(addr) = settings.admin_listen {
                let mut admin = Service::new(named("admin"), admin_app);
                admin.add_tcp(&addr.to_string());
                server.add_service(admin);
            }
        }
        Sockets::PreBound { listeners, .. } => {
            // A listener for what the config does not have is dropped (closed), as a process would
            // not listen there either.
            let mut proxy = PreBound::new(proxy);
            proxy.add_tcp(listeners.proxy)?;
            if let Some(l) = listeners.tls.filter(|_| !settings.tls_listen.is_empty()) {
                let addr = local_addr(&l)?;
                proxy.add_tls(l, tls_settings(&addr)?)?;
                serving.1 = Some(addr);
            }
            server.add_service(proxy);
            if let Some(l) = listeners.admin.filter(|_| settings.admin_listen.is_some()) {
                serving.0 = Some(local_addr(&l)?);
                let mut admin = PreBound::new(Service::new(named("admin"), admin_app));
                admin.add_tcp(l)?;
                server.add_service(admin);
            }
        }
    }
    server.add_service(background_service(
        &named("snapshot tasks"),
        SnapshotTasks {
            installed: reloader.subscribe(),
        },
    ));
    server.add_service(background_service(
        &named("span export"),
        SpanExport {
            snapshot: shared.clone(),
            exporter: exporter.clone(),
        },
    ));
    server.add_service(background_service(
        &named("config watch"),
        ConfigWatch {
            reloader: reloader.clone(),
            sighup: !in_process,
        },
    ));
    // SIGUSR1 reopens the access log; listened for from the start, so a signal sent before the first
    // request reopens nothing (the log opens its path then) rather than killing the process.
    if !in_process {
        if let Some(log) = access_log.clone() {
            server.add_service(background_service(
                "access-log reopen",
                LogReopen { access_log: log },
            ));
        }
    }
    // The drain ends the process: only for a gateway that is the process.
    if !in_process {
        server.add_service(background_service(
            "drain",
            Drain {
                phase: std::sync::Mutex::new(Some(server.watch_execution_phase())),
                connections,
                snapshot: shared.clone(),
                exporter,
                metrics,
                access_log: access_log.clone(),
                timeout: settings.shutdown_timeout,
            },
        ));
    }
    Ok(Assembled {
        server,
        reloader,
        access_log,
        serving,
    })
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, String> {
    l.local_addr()
        .map_err(|e| format!("a pre-bound listener has no local address: {e}"))
}

/// A listening service whose sockets were bound by the caller.
///
/// Pingora hands every service the server's table of listening sockets by address (`ListenFds`), and
/// a listener whose address is in the table takes that socket instead of binding. In pingora-core
/// 0.9.1: `listeners/l4.rs` 335-371, `ListenerEndpointBuilder::listen`: `fds_table.lock()
/// .get(addr_str)` then `from_raw_fd` (218-239), else `bind` and `add` the new socket to the table;
/// `services/listening.rs` 279-293 passes the table to `Listeners::build`. That is how an upgrade
/// passes sockets on (`server/bootstrap_services.rs` 246-258, `load_fds`). The table is private to
/// the `Server`, but each service receives it in `start_service` (`server/mod.rs` 762-774 and 434-441,
/// `run_service`: `Some(fds)`). So this service puts its sockets in the table under the address each
/// endpoint is configured with, then starts the wrapped one: nothing is bound by address, no port is
/// picked twice, and the table holds them exactly as if Pingora had bound them itself.
struct PreBound<A> {
    inner: Service<A>,
    sockets: Vec<(String, TcpListener)>,
}

impl<A> PreBound<A> {
    fn new(inner: Service<A>) -> Self {
        PreBound {
            inner,
            sockets: Vec::new(),
        }
    }

    /// The address key of `l`, made ready for Pingora: `from_raw_fd` wraps the socket in a tokio
    /// `TcpSocket` (`TcpSocket::from_std_stream`), which wants it non-blocking, as sockets passed by
    /// an upgrade already are.
    fn take(&mut self, l: TcpListener) -> Result<String, String> {
        let addr = local_addr(&l)?.to_string();
        l.set_nonblocking(true)
            .map_err(|e| format!("cannot make the listener on {addr} non-blocking: {e}"))?;
        self.sockets.push((addr.clone(), l));
        Ok(addr)
    }

    fn add_tcp(&mut self, l: TcpListener) -> Result<(), String> {
        let addr = self.take(l)?;
        self.inner.add_tcp(&addr);
        Ok(())
    }

    fn add_tls(&mut self, l: TcpListener, tls: TlsSettings) -> Result<(), String> {
        let addr = self.take(l)?;
        self.inner.add_tls_with_settings(&addr, None, tls);
        Ok(())
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> PingoraService for PreBound<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        // Always `Some` on unix (`run_service` passes the server's table).
        let table = fds.unwrap_or_else(|| Arc::new(parking_lot::Mutex::new(Fds::new())));
        {
            let mut t = table.lock();
            for (addr, l) in self.sockets.drain(..) {
                // Ownership of the socket passes to the table's reader, `from_raw_fd`.
                t.add(addr, l.into_raw_fd());
            }
        }
        PingoraService::start_service(&mut self.inner, Some(table), shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        PingoraService::name(&self.inner)
    }

    fn threads(&self) -> Option<usize> {
        PingoraService::threads(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        PingoraService::listen_addresses(&self.inner)
    }
}

/// Sockets for a gateway run in process, bound by the caller (typically to `127.0.0.1:0`) before it
/// starts, so the caller knows the ports and no port is chosen twice. They stand for the config's
/// addresses, which are not bound: `proxy` for `server.listen`, `admin` for `server.admin.listen`,
/// `tls` for `server.tls.listen`. The admin and HTTPS ones serve only if the config has an admin
/// listener or `server.tls` (else they are closed), and neither runs without its socket here.
pub struct Listeners {
    /// The public HTTP listener.
    pub proxy: TcpListener,
    /// The admin listener.
    pub admin: Option<TcpListener>,
    /// An HTTPS listener, served with the config's certificates (`server.tls`).
    pub tls: Option<TcpListener>,
}

impl Listeners {
    /// A proxy listener, and an admin and an HTTPS one if asked, each on `127.0.0.1:0`.
    pub fn loopback(admin: bool, tls: bool) -> std::io::Result<Listeners> {
        let bind = || TcpListener::bind("127.0.0.1:0");
        Ok(Listeners {
            proxy: bind()?,
            admin: admin.then(bind).transpose()?,
            tls: tls.then(bind).transpose()?,
        })
    }
}

/// Ends [`Server::run`] when the [`Running`] handle says so (or is gone): the in-process stand-in for
/// Pingora's `UnixShutdownSignalWatch`, which would listen for the process's signals (`RunArgs`,
/// pingora-core 0.9.1 `server/mod.rs` 180-199; awaited by `main_loop`, 247).
struct StopSignal(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.0.clone();
        // An error means the handle was dropped: stop too.
        let _ = stop.wait_for(|s| *s).await;
        // At once, like SIGINT (`ShutdownType::Quick`: no grace period, runtimes shut down with a zero
        // timeout, `server/mod.rs` 248-251 and 800-824). The graceful paths sleep through the grace
        // period and belong to a process (`Drain` exits it); they are tested through the binary.
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running in this process (see [`spawn_in_process`]). Dropping it stops it.
pub struct Running {
    /// The public listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address, if it has one (a socket for it, and an admin listener in the
    /// config).
    pub admin: Option<SocketAddr>,
    /// The HTTPS listener's address, if it has one (a socket for it, and `server.tls`).
    pub tls: Option<SocketAddr>,
    /// The tag in the names of its threads.
    pub tag: String,
    reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Load the config file again and swap it in if it is valid, as SIGHUP does for the binary.
    pub fn reload(&self) -> ReloadStatus {
        let reloader = self.reloader.clone();
        // A runtime of its own on a thread of its own, so that this works from async callers too; the
        // compile itself runs on this runtime's blocking pool.
        let run = move || match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(reloader.reload("handle")),
            Err(e) => failed_reload(format!("cannot start a runtime for the reload: {e}")),
        };
        std::thread::Builder::new()
            .name(format!("reload {}", self.tag))
            .spawn(run)
            .map_err(|e| format!("cannot start the reload thread: {e}"))
            .and_then(|t| {
                t.join()
                    .map_err(|_| "the reload thread panicked".to_string())
            })
            .unwrap_or_else(failed_reload)
    }

    /// The outcome of the last reload, as `GET /admin/reload` shows it.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reloader.status()
    }

    /// Stop at once (requests in flight are cut, as with SIGINT), write out the access log and wait
    /// until the gateway's threads are done and its listeners closed.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the in-process gateway {} panicked", self.tag);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn failed_reload(error: String) -> ReloadStatus {
    ReloadStatus {
        ok: false,
        trigger: "handle",
        at: 0,
        errors: vec![error],
        warnings: Vec::new(),
    }
}

/// Run the gateway in this process on `listeners`, with the config at `config_path` compiled with
/// `registry`, until the returned handle is stopped or dropped.
///
/// For tests of the gateway's behaviour that need no process of their own: the sockets are bound before
/// start (no port race, nothing to wait for: the kernel queues connections from the moment of
/// `bind`), and starting costs no `exec`. Everything but the process-level parts runs as in
/// `tollgate run`: the proxy, the admin API (reloads through it included), the background services,
/// the file watch. Not here: SIGHUP (use [`Running::reload`]), SIGTERM's drain and SIGQUIT's upgrade,
/// which belong to a process; Pingora is run with [`Server::run`] and a [`StopSignal`] instead of its
/// signal handlers, because `run_forever` exits the process (pingora-core 0.9.1 `server/mod.rs`
/// 626-630: `run(RunArgs::default())`, then `std::process::exit(0)`; `run`, 642, returns).
///
/// Several may run in one process: metrics and the span exporter are per gateway, the access log is
/// per gateway (point `server.access_log.path` at a file: stdout is shared). Logging (the `log` crate)
/// is per process; the threads of each gateway are named with its [`Running::tag`] (`… 127.0.0.1:PORT`,
/// the proxy's address) so that a logger can tell them apart. What else is per process is harmless
/// to share: rustls' default provider (installed once, first caller wins, always ring:
/// pingora-rustls 0.9.1 `lib.rs` 44-46), Pingora's per-address bind locks (`listeners/l4.rs` 59) and
/// timer thread, and `process_*` metrics, which describe the process whichever gateway serves them.
pub fn spawn_in_process(
    config_path: &str,
    registry: Arc<Registry>,
    listeners: Listeners,
) -> Result<Running, String> {
    let addr = local_addr(&listeners.proxy)?;
    let tag = addr.to_string();
    let (stop, stop_rx) = watch::channel(false);
    let (started, started_rx) = std::sync::mpsc::sync_channel(1);
    let path = config_path.to_string();
    let thread_tag = tag.clone();
    // Loading, assembling and running all happen on the gateway's own thread, named with its tag, so
    // that what they log is the gateway's.
    let thread = std::thread::Builder::new()
        .name(format!("tollgate {tag}"))
        .spawn(move || {
            let built = Snapshot::from_file_with(&path, &registry)
                .map_err(|errs| format!("{path} is not valid:\n{errs}"))
                .and_then(|(snap, warnings)| {
                    for w in warnings.0 {
                        log::warn!("{w}");
                    }
                    let sockets = Sockets::PreBound {
                        listeners,
                        tag: thread_tag,
                    };
                    assemble(snap, path.clone(), registry, sockets)
                });
            let built = match built {
                Ok(b) => {
                    let _ = started.send(Ok((b.reloader.clone(), b.serving)));
                    b
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            built.server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(stop_rx)),
            });
            // What `Drain` does for a process at exit: every line accepted so far is written.
            if let Some(log) = built.access_log {
                if !log.close(LOG_FLUSH_TIMEOUT) {
                    log::warn!("the access log could not be written out in {LOG_FLUSH_TIMEOUT:?}");
                }
            }
        })
        .map_err(|e| format!("cannot start the gateway's thread: {e}"))?;
    let (reloader, (admin, tls)) = match started_rx.recv() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err("the gateway's thread ended before it started".into());
        }
    };
    Ok(Running {
        addr,
        admin,
        tls,
        tag,
        reloader,
        stop,
        thread: Some(thread),
    })
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
