//! `server:` → [`Settings`]: listeners, limits, admin, reload and shutdown.

use std::net::SocketAddr;

use std::num::NonZeroUsize;
use std::sync::Arc;

use super::{config_relative, nonzero};
use crate::config::raw::ServerConfig;
use crate::config::sink::Scope;
use crate::snapshot::Settings;

/// Two listen addresses that cannot both be bound (same port, same or wildcard IP).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The settings of `server` (at `at`), or `None` when it has errors (all reported).
pub(super) fn compile(s: &ServerConfig, at: &Scope) -> Option<Settings> {
    let before = at.error_count();
    let tls_count = s.tls.as_ref().map_or(0, |t| t.listen.len());
    if s.listen.is_empty() && tls_count == 0 {
        at.at("listen")
            .error("at least one listen address (or server.tls.listen) is required");
    }
    if s.tls.as_ref().is_some_and(|t| t.listen.is_empty()) {
        at.at("tls")
            .at("listen")
            .error("at least one address to serve HTTPS on is required");
    }
    let listen: Vec<SocketAddr> = s.listen.iter().map(|a| a.0).collect();
    let mut tls_listen: Vec<SocketAddr> = Vec::new();
    for (i, l) in s.tls.iter().flat_map(|t| t.listen.iter()).enumerate() {
        let field = at.at("tls").at("listen").idx(i);
        let a = l.0;
        if listen.iter().chain(&tls_listen).any(|l| overlaps(*l, a)) {
            field.error(format!("`{a}` is already a listener"));
        } else {
            tls_listen.push(a);
        }
    }
    let trusted = s.trusted_proxies.iter().map(|c| c.0).collect();
    let proxy_protocol = s.proxy_protocol.as_ref().and_then(|p| {
        if p.from.is_empty() {
            at.at("proxy_protocol").at("from").error(
                "name the load balancers' addresses (CIDRs): only they may send a PROXY header",
            );
            return None;
        }
        Some(std::sync::Arc::new(crate::proxy_protocol::Policy {
            from: p.from.iter().map(|c| c.0).collect(),
        }))
    });
    let l = &s.limits;
    let limits = at.at("limits");
    if l.max_header_bytes.0 == 0 {
        limits
            .at("max_header_bytes")
            .error("must be greater than zero");
    }
    if l.max_headers == 0 {
        limits.at("max_headers").error("must be greater than zero");
    }
    if l.max_uri_bytes.0 == 0 {
        limits
            .at("max_uri_bytes")
            .error("must be greater than zero");
    }
    nonzero(&limits.at("header_read_timeout"), l.header_read_timeout.0);
    nonzero(&limits.at("keepalive_timeout"), l.keepalive_timeout.0);
    nonzero(&limits.at("tunnel_idle_timeout"), l.tunnel_idle_timeout.0);
    let mut admin_listen = None;
    if s.admin.enabled {
        let field = at.at("admin").at("listen");
        let a = s.admin.listen.0;
        if listen.iter().chain(&tls_listen).any(|l| overlaps(*l, a)) {
            field.error(format!(
                "`{a}` overlaps a public listener: the admin API must have its own address"
            ));
        } else {
            admin_listen = Some(a);
        }
    }
    if let Some(t) = &s.admin.token {
        if t.len() < 16 {
            at.at("admin")
                .at("token")
                .error("must be at least 16 characters");
        }
    }
    nonzero(&at.at("reload").at("interval"), s.reload.interval.0);
    if s.upgrade_sock
        .as_deref()
        .is_some_and(|p| p.trim().is_empty())
    {
        at.at("upgrade_sock")
            .error("must be a path (or left out for the default)");
    }
    let https_redirect = s.https_redirect.as_ref().and_then(|r| {
        let here = at.at("https_redirect");
        if !matches!(r.status, 301 | 302 | 307 | 308) {
            here.at("status").error(format!(
                "`{}`: a redirect is 308 (keeps the method and body), 301, 302 or 307",
                r.status
            ));
        }
        if listen.is_empty() {
            here.error("there is no plain listener (server.listen) to redirect from");
        }
        let port = match (r.port, tls_listen.first()) {
            (Some(0), _) => {
                here.at("port").error("must be a port, 1 to 65535");
                None
            }
            (Some(p), _) => Some(p),
            (None, Some(a)) => Some(a.port()),
            (None, None) => {
                here.at("port").error(
                    "name the port clients reach HTTPS on: there is no server.tls.listen to take it from",
                );
                None
            }
        };
        Some(crate::https::Redirect {
            port: port?,
            status: r.status,
        })
    });
    let hsts = s.hsts.as_ref().map(|h| {
        let here = at.at("hsts");
        let secs = h.max_age.0.as_secs();
        if h.preload && !h.include_subdomains {
            here.at("preload")
                .error("the preload list takes only policies with `include_subdomains: true`");
        }
        if h.preload && secs < crate::https::PRELOAD_MIN_SECS {
            here.at("max_age").error(format!(
                "`{}`: the preload list takes a max_age of at least a year (`365d`)",
                h.max_age
            ));
        }
        crate::https::hsts_value(secs, h.include_subdomains, h.preload)
    });
    if at.error_count() > before {
        return None;
    }
    let tls_files = s
        .tls
        .iter()
        .flat_map(|t| {
            let pairs = std::iter::once((&t.cert, &t.key))
                .chain(t.certificates.iter().map(|c| (&c.cert, &c.key)));
            pairs
                .flat_map(|(c, k)| [config_relative(at, c), config_relative(at, k)])
                .collect::<Vec<_>>()
        })
        .collect();
    Some(Settings {
        listen,
        tls_listen,
        tls_files,
        threads: s.threads.map(NonZeroUsize::get),
        trusted_proxies: trusted,
        proxy_protocol,
        max_header_bytes: l.max_header_bytes.0 as usize,
        max_headers: l.max_headers,
        max_uri_bytes: l.max_uri_bytes.0 as usize,
        header_read_timeout: l.header_read_timeout.0,
        keepalive_timeout: l.keepalive_timeout.0,
        tunnel_idle_timeout: l.tunnel_idle_timeout.0,
        max_compressing: l.max_compressing,
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
        h2c: s.h2c,
        grpc_web: s.grpc_web,
        https_redirect,
        hsts,
    })
}

/// A `compression:` section (the server's or a route's, at `at`) → its policy; `None`: off (absent,
/// `enabled: false`, or with errors, which are reported).
pub(super) fn compression(
    c: Option<&crate::config::raw::CompressionConfig>,
    at: &Scope,
) -> Option<Arc<crate::compression::Policy>> {
    use crate::compression::Algorithm;
    use crate::config::raw::CompressionAlgorithm as Raw;
    let c = c?;
    let before = at.error_count();
    if !(1..=9).contains(&c.level) {
        at.at("level").error(format!(
            "`{}`: a level is 1 (fastest) to 9 (smallest), the range every algorithm has",
            c.level
        ));
    }
    if c.algorithms.is_empty() {
        at.at("algorithms")
            .error("at least one of gzip, br, zstd (or `enabled: false`)");
    }
    let mut algorithms = Vec::new();
    for (i, a) in c.algorithms.iter().enumerate() {
        let a = match a {
            Raw::Gzip => Algorithm::Gzip,
            Raw::Br => Algorithm::Brotli,
            Raw::Zstd => Algorithm::Zstd,
        };
        if algorithms.contains(&a) {
            at.at("algorithms")
                .idx(i)
                .error(format!("`{}` is listed twice", a.token()));
        }
        algorithms.push(a);
    }
    if !c.enabled || at.error_count() > before {
        return None;
    }
    Some(Arc::new(crate::compression::Policy {
        algorithms,
        level: c.level,
        min_size: c.min_size.0,
    }))
}
