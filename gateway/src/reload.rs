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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::load::Source;
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

/// Versions kept in the history (applied and refused).
const HISTORY: usize = 20;

/// One config the gateway applied or refused, for `GET /admin/config/versions` and rollbacks.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    /// 1 for the config the gateway started with, then one more per attempt.
    pub version: u64,
    /// SHA-256 of the file's text (hex, first 16 digits; with includes, of every file's name and text):
    /// equal texts, equal hashes.
    pub hash: String,
    /// Unix seconds.
    pub at: u64,
    /// What made the attempt: `start`, `file`, `sighup`, `admin`, `handle`, `rollback`.
    pub trigger: &'static str,
    /// `applied`, or `refused` (the running config stayed).
    pub outcome: &'static str,
    /// For a rollback: the version it went back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// What it changed against the config served before it (applied versions), as `tollgate diff`
    /// reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<crate::diff::Diff>,
    /// The included files it was made of, in merge order (absent for a one-file config).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// The texts, kept for applied versions (what a rollback compiles again).
    #[serde(skip)]
    pub source: Option<Arc<Source>>,
}

/// Why a rollback did not happen.
#[derive(Debug)]
pub enum RollbackError {
    /// No applied version with that number is kept.
    Unknown(u64),
    /// The version's text no longer compiles (a file it names changed, a variable is unset...).
    Refused(ReloadStatus),
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
    /// The files (and folders) of the last attempt: the watcher follows them, so a change in an
    /// included file is seen, and a fix to a file a refused attempt added too.
    watched: Mutex<Arc<Source>>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
    /// The last [`HISTORY`] versions, oldest first.
    history: Mutex<VecDeque<Version>>,
    /// The version being served.
    current: Mutex<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The included files of `source` that were read, in merge order.
fn included_files(source: &Source) -> Vec<String> {
    source.included().map(|(p, _)| p.to_string()).collect()
}

/// Resolve the metric series of `snap`'s routes, upstreams and rate-limit policies from `m`, so that
/// they are exported from the start and the request path finds them resolved.
pub fn bind_series(snap: &Snapshot, m: &Metrics) {
    for r in &snap.routes {
        r.series.bind(m, &r.name);
    }
    for u in snap.upstreams.values() {
        u.duration(m);
        u.bind_series(m);
    }
    for p in snap.providers.rate_limits.values() {
        p.series.bind(m, &p.name);
    }
    // Every (plugin, reason) pair the config's chains can count, at 0 until it happens. Series of a
    // plugin that a reload removed stay (a counter must not go back), as the route series do.
    let chains = std::iter::once(&snap.global).chain(snap.routes.iter().map(|r| &r.chain));
    for p in chains.flat_map(|c| c.plugins()) {
        for reason in p.auth_failure_reasons() {
            m.auth_failures.with_label_values(&[p.name(), reason]);
        }
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
        // The texts the first snapshot was compiled from; the disk as it is now (a change since is
        // seen by the watcher).
        let source = snapshot.source.clone();
        let first = source.fingerprint(&snapshot.settings.tls_files);
        let start = Version {
            version: 1,
            hash: source.hash(),
            at: unix_now(),
            trigger: "start",
            outcome: "applied",
            rollback_to: None,
            errors: Vec::new(),
            changes: None,
            files: included_files(&source),
            source: Some(source.clone()),
        };
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
            watched: Mutex::new(source),
            running: tokio::sync::Mutex::new(()),
            history: Mutex::new(VecDeque::from([start])),
            current: Mutex::new(1),
        }
    }

    /// The versions kept, newest first, and the one being served.
    pub fn versions(&self) -> (Vec<Version>, u64) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (h.iter().rev().cloned().collect(), self.current_version())
    }

    /// The version being served.
    pub fn current_version(&self) -> u64 {
        *self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The texts of the config being served (not the files, which may hold a refused version).
    pub fn served_source(&self) -> Arc<Source> {
        self.shared.load().source.clone()
    }

    /// Record an attempt; returns its number.
    fn record(&self, mut v: Version) -> u64 {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        v.version = h.back().map_or(1, |last| last.version + 1);
        let n = v.version;
        if v.outcome == "applied" {
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = n;
        }
        h.push_back(v);
        // Never drop the version being served (a rollback may be wanted back to it).
        while h.len() > HISTORY {
            let current = self.current_version();
            match h.iter().position(|v| v.version != current) {
                Some(i) => {
                    h.remove(i);
                }
                None => break,
            }
        }
        n
    }

    /// Serve applied version `version` again: its text compiled afresh, with what the running
    /// snapshot learned carried over, as a reload does. The file is not touched (a later reload from
    /// the file brings its content back).
    pub async fn rollback(&self, version: u64) -> Result<ReloadStatus, RollbackError> {
        let source = {
            let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.iter()
                .find(|v| v.version == version && v.outcome == "applied")
                .and_then(|v| v.source.clone())
        }
        .ok_or(RollbackError::Unknown(version))?;
        let status = self.apply(Some(source), "rollback", Some(version)).await;
        if status.ok {
            Ok(status)
        } else {
            Err(RollbackError::Refused(status))
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

    /// The config's files' and its watched files' fingerprint as they are now.
    fn fingerprint_now(&self) -> Option<u64> {
        let watched = self
            .watched
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        watched.fingerprint(&self.shared.load().settings.tls_files)
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

    /// Load the files again and, if they are valid, swap them in.
    pub async fn reload(&self, trigger: &'static str) -> ReloadStatus {
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = self.fingerprint_now();
        }
        self.apply(None, trigger, None).await
    }

    /// Compile `source` (a kept version), or the files as they are now when `None`, and if it is
    /// valid swap it in; record the attempt.
    async fn apply(
        &self,
        source: Option<Arc<Source>>,
        trigger: &'static str,
        rollback_to: Option<u64>,
    ) -> ReloadStatus {
        let _one = self.running.lock().await;
        let (path, registry) = (self.path.clone(), self.registry.clone());
        let served = self.served_source();
        // Only reloads store snapshots and they run one at a time, so this is the one being replaced.
        let old = self.shared.load_full();
        let previous = old.clone();
        let metrics = self.metrics.clone();
        // Off the runtime's threads: compiling, and resolving the series of every route.
        let task = tokio::task::spawn_blocking(move || {
            use crate::config::load;
            let env = |k: &str| std::env::var(k).ok();
            let (read, raw) = match source {
                Some(s) => (Some(s.clone()), load::load_source(&s, &env)),
                None => {
                    let (read, raw) = load::load_file_recorded(&path);
                    (read.map(Arc::new), raw)
                }
            };
            let compiled = raw.and_then(|raw| {
                let (snap, warnings) = Snapshot::from_loaded(&raw, &registry, Some(&previous))?;
                bind_series(&snap, &metrics);
                // What it changes against the config being served (parsed again: reloads are rare).
                let changes = load::load_source(&served, &env)
                    .ok()
                    .map(|old_raw| crate::diff::diff(&previous, &old_raw, &snap, &raw));
                Ok((snap, warnings, changes))
            });
            (read, compiled)
        })
        .await;
        let (read, loaded) = match task {
            Ok((read, compiled)) => (read, Ok(compiled)),
            Err(e) => (None, Err(e)),
        };
        if let Some(r) = &read {
            if let Ok(mut w) = self.watched.lock() {
                *w = r.clone();
            }
        }
        let hash = read.as_deref().map(Source::hash).unwrap_or_default();
        let files = read.as_deref().map(included_files).unwrap_or_default();
        let status = match loaded {
            Ok(Ok((snap, warnings, changes))) => {
                let mut warnings: Vec<String> = warnings.0.iter().map(|w| w.to_string()).collect();
                warnings.extend(snap.fixed_setting_changes(&old));
                for w in &warnings {
                    log::warn!("reload: {w}");
                }
                let source = snap.source.clone();
                self.install(snap);
                self.record(Version {
                    version: 0,
                    hash,
                    at: unix_now(),
                    trigger,
                    outcome: "applied",
                    rollback_to,
                    errors: Vec::new(),
                    changes,
                    files,
                    source: Some(source),
                });
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
        if !status.ok {
            self.record(Version {
                version: 0,
                hash: read.as_deref().map(Source::hash).unwrap_or_default(),
                at: status.at,
                trigger,
                outcome: "refused",
                rollback_to,
                errors: status.errors.clone(),
                changes: None,
                files: read.as_deref().map(included_files).unwrap_or_default(),
                source: None,
            });
        }
        if let Ok(mut s) = self.status.lock() {
            *s = status.clone();
        }
        status
    }
}
