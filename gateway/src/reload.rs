//! Hot reload: parse, validate and compile a new snapshot off the request path, then swap it in
//! atomically. Requests in flight keep the snapshot they started with (each holds its own `Arc`). A file
//! that does not load never replaces a good one: the old config keeps serving, and the problems (with
//! FILE:LINE:COL) are logged, counted and kept for `GET /admin/reload`.
//!
//! Triggers: a change of the file's contents (polled, so editors that replace the file and Kubernetes
//! ConfigMap symlink swaps are both seen), SIGHUP, and `POST /admin/reload`.
//!
//! Installing a snapshot is one step ([`Reloader::install`]): its metric series are resolved (compiling
//! registers none), it becomes the one requests load, and it is published to what runs alongside it
//! (`server::SnapshotTasks`), which stops the replaced snapshot's background work and starts its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::plugin::Registry;
use crate::snapshot::Snapshot;

/// The outcome of the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub ok: bool,
    /// `start`, `file`, `sighup`, `admin`, or `handle` (`server::Running::reload`, in process).
    pub trigger: &'static str,
    /// Unix seconds.
    pub at: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

pub struct Reloader {
    pub path: String,
    registry: Arc<Registry>,
    /// The snapshot requests load.
    pub shared: Arc<ArcSwap<Snapshot>>,
    /// The same, for what runs alongside the snapshot and must hear of its replacement.
    installed: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    status: Mutex<ReloadStatus>,
    /// Hash of the file contents last loaded (or tried), to tell a change from a touch.
    fingerprint: Mutex<Option<u64>>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A hash of the config file and of the files it names that are worth watching (the TLS certificate
/// and key, renewed in place by cert-manager or certbot). None while the config file cannot be read.
fn fingerprint(path: &str, also: &[std::path::PathBuf]) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    for f in also {
        std::fs::read(f).ok().hash(&mut h);
    }
    Some(h.finish())
}

/// Resolve the metric series of `snap`'s routes, upstreams and rate-limit policies from `m`, so that
/// they are exported from the start and the request path finds them resolved.
pub fn bind_series(snap: &Snapshot, m: &Metrics) {
    for r in &snap.routes {
        r.series.bind(m, &r.name);
    }
    for u in snap.upstreams.values() {
        u.duration(m);
    }
    for p in snap.providers.rate_limits.values() {
        p.series.bind(m, &p.name);
    }
}

impl Reloader {
    /// Install `snapshot`, loaded from `path` at start; counts go to `metrics`.
    pub fn new(
        path: &str,
        registry: Arc<Registry>,
        snapshot: Snapshot,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        metrics.reloads.with_label_values(&["success"]).inc();
        metrics.last_reload.set(unix_now() as f64);
        bind_series(&snapshot, &metrics);
        let first = fingerprint(path, &snapshot.settings.tls_files);
        let snapshot = Arc::new(snapshot);
        Reloader {
            path: path.to_string(),
            registry,
            shared: Arc::new(ArcSwap::new(snapshot.clone())),
            installed: watch::Sender::new(snapshot),
            metrics,
            status: Mutex::new(ReloadStatus {
                ok: true,
                trigger: "start",
                at: unix_now(),
                errors: Vec::new(),
                warnings: Vec::new(),
            }),
            fingerprint: Mutex::new(first),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The metrics the gateway counts in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The installed snapshot, now and as it is replaced.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.installed.subscribe()
    }

    /// Make `snap` (its series bound) the snapshot requests load, and publish it to what runs
    /// alongside it.
    fn install(&self, snap: Snapshot) {
        let snap = Arc::new(snap);
        self.shared.store(snap.clone());
        self.installed.send_replace(snap);
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The config file's and its watched files' fingerprint as they are now.
    fn fingerprint_now(&self) -> Option<u64> {
        fingerprint(&self.path, &self.shared.load().settings.tls_files)
    }

    /// Has the file's content changed since it was last loaded (or tried)?
    pub fn file_changed(&self) -> bool {
        let now = self.fingerprint_now();
        let Ok(mut last) = self.fingerprint.lock() else {
            return false;
        };
        if now.is_some() && now != *last {
            *last = now;
            return true;
        }
        false
    }

    /// Load the file again and, if it is valid, swap it in.
    pub async fn reload(&self, trigger: &'static str) -> ReloadStatus {
        let _one = self.running.lock().await;
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = self.fingerprint_now();
        }
        let (path, registry) = (self.path.clone(), self.registry.clone());
        // Only reloads store snapshots and they run one at a time, so this is the one being replaced.
        let old = self.shared.load_full();
        let previous = old.clone();
        let metrics = self.metrics.clone();
        // Off the runtime's threads: compiling, and resolving the series of every route.
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = Snapshot::from_file_replacing(&path, &registry, Some(&previous));
            if let Ok((snap, _)) = &loaded {
                bind_series(snap, &metrics);
            }
            loaded
        })
        .await;
        let status = match loaded {
            Ok(Ok((snap, warnings))) => {
                let mut warnings: Vec<String> = warnings.0.iter().map(|w| w.to_string()).collect();
                warnings.extend(snap.fixed_setting_changes(&old));
                for w in &warnings {
                    log::warn!("reload: {w}");
                }
                self.install(snap);
                self.metrics.reloads.with_label_values(&["success"]).inc();
                self.metrics.last_reload.set(unix_now() as f64);
                log::info!("config reloaded from {} ({trigger})", self.path);
                ReloadStatus {
                    ok: true,
                    trigger,
                    at: unix_now(),
                    errors: Vec::new(),
                    warnings,
                }
            }
            Ok(Err(diags)) => {
                let errors: Vec<String> = diags.0.iter().map(|d| d.to_string()).collect();
                for e in &errors {
                    log::error!("reload refused, the running config stays: {e}");
                }
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                ReloadStatus {
                    ok: false,
                    trigger,
                    at: unix_now(),
                    errors,
                    warnings: Vec::new(),
                }
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                ReloadStatus {
                    ok: false,
                    trigger,
                    at: unix_now(),
                    errors: vec![format!("the reload task failed: {e}")],
                    warnings: Vec::new(),
                }
            }
        };
        if let Ok(mut s) = self.status.lock() {
            *s = status.clone();
        }
        status
    }
}
