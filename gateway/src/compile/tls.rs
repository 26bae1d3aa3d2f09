//! `server.tls` → the HTTPS listeners' certificates ([`crate::tls::Certificates`]).

use std::sync::Arc;

use super::config_relative;
use crate::config::raw::TlsConfig;
use crate::config::sink::Scope;
use crate::snapshot::Snapshot;
use crate::tls::{Certificates, Loaded};

/// The certificates of `server.tls` (`server` is the scope of `server:`). Without `server.tls`, a
/// reload keeps the running listeners' certificates: listeners only change with an upgrade.
pub(super) fn compile(
    tls: Option<&TlsConfig>,
    server: &Scope,
    previous: Option<&Snapshot>,
) -> Option<Arc<Certificates>> {
    match tls {
        Some(t) => certificates(t, &server.at("tls")),
        None => {
            let kept = previous.and_then(|p| p.tls.clone());
            if kept.is_some() {
                server.warning("server.tls removed: the running HTTPS listeners keep their certificates until a graceful upgrade or restart");
            }
            kept
        }
    }
}

/// Load the certificates, reporting problems at `cert` / `key` (and `certificates[i].cert` / `.key`).
fn certificates(t: &TlsConfig, at: &Scope) -> Option<Arc<Certificates>> {
    let load = |at: Scope, cert: &str, key: &str| -> Option<Loaded> {
        let (cert, key) = (config_relative(&at, cert), config_relative(&at, key));
        match crate::tls::load(&cert, &key) {
            Ok(l) => {
                if let Some(w) = &l.warning {
                    at.at("cert").warning(w.clone());
                }
                Some(l)
            }
            Err((field, msg)) => {
                at.at(field).error(msg);
                None
            }
        }
    };
    let default = load(at.clone(), &t.cert, &t.key);
    let more: Vec<Option<Loaded>> = t
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| load(at.at("certificates").idx(i), &c.cert, &c.key))
        .collect();
    let more: Option<Vec<_>> = more.into_iter().collect();
    Some(Arc::new(Certificates::new(default?, more?)))
}
