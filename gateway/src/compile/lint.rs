//! Warnings about configs that are valid but cannot do what they say.

use std::collections::{HashMap, HashSet};

use crate::config::raw::RawConfig;
use crate::config::sink::Scope;
use crate::router::{template_param, PathMatch, RouteMatcher};

/// An upstream target that is one of this gateway's own listeners: the admin listener would be
/// published on the public ones (a team's file could do that to reach `/metrics` or the dashboard's
/// assets), a public one would send requests round in a loop. Literal addresses are checked, with
/// the other spellings of this host (`localhost`, any loopback address, `0.0.0.0`, `::`, an
/// IPv4-mapped IPv6 address); any other name is resolved only when the gateway runs.
pub(super) fn own_listeners(
    cfg: &RawConfig,
    settings: &crate::snapshot::Settings,
    upstreams: &Scope,
) {
    use std::net::{IpAddr, SocketAddr};
    // Connecting to `0.0.0.0` or `::` reaches this host (Linux), as a loopback address does. A
    // listener on all addresses is also on this host's other addresses, which are not known without
    // asking the system: another host's address on the same port (a service on 8080 behind a gateway
    // on 0.0.0.0:8080) is not this gateway.
    let this_host = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    let same = |a: SocketAddr, b: SocketAddr| {
        let (ai, bi) = (a.ip().to_canonical(), b.ip().to_canonical());
        a.port() == b.port() && (ai == bi || (this_host(ai) && this_host(bi)))
    };
    for (name, up) in &cfg.upstreams {
        for (i, t) in up.targets.iter().enumerate() {
            let Some(addr) = literal_addr(&t.addr) else {
                continue;
            };
            let at = upstreams.at(name).at("targets").idx(i).at("addr");
            if settings.admin_listen.is_some_and(|a| same(addr, a)) {
                at.error(format!(
                    "`{addr}` is this gateway's admin listener: proxying to it would publish the admin API on the public listeners"
                ));
            } else if settings
                .listen
                .iter()
                .chain(&settings.tls_listen)
                .any(|l| same(addr, *l))
            {
                at.error(format!(
                    "`{addr}` is one of this gateway's own listeners: its requests would come back in a loop"
                ));
            }
        }
    }
}

/// `addr` as an address, when it is written as one or as `localhost:PORT` (the one name whose address
/// is known without a lookup).
fn literal_addr(addr: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    let (host, port) = addr.rsplit_once(':')?;
    host.trim_end_matches('.')
        .eq_ignore_ascii_case("localhost")
        .then(|| port.parse().ok())
        .flatten()
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
}

/// A file without routes answers every request with 404.
pub(super) fn no_routes(cfg: &RawConfig, routes: &Scope) {
    if cfg.routes.is_empty() {
        routes.warning("no routes: every request will get 404");
    }
}

/// Warn about a route that can never be chosen because an earlier one with the same host and path
/// accepts every request it would.
pub(super) fn shadowed(matchers: &[(usize, RouteMatcher)], cfg: &RawConfig, routes: &Scope) {
    let key = |m: &RouteMatcher| -> String {
        let p = match &m.path {
            PathMatch::Exact(p) => format!("e:{p}"),
            PathMatch::Template(p) => {
                let shape: Vec<&str> = p
                    .split('/')
                    .map(|s| if template_param(s).is_some() { "{}" } else { s })
                    .collect();
                format!("t:{}", shape.join("/"))
            }
            PathMatch::Prefix(p) => format!("p:{p}"),
            PathMatch::Regex(r) => format!("r:{}", r.as_str()),
        };
        format!("{:?}|{p}", m.host)
    };
    // Only routes with the same host and path shape can shadow each other: group them by that key so
    // the check stays linear in the route count (a config of 100,000 distinct routes is one pass).
    let mut groups: HashMap<String, Vec<(usize, &RouteMatcher)>> =
        HashMap::with_capacity(matchers.len());
    let mut warned = HashSet::new();
    for (i, m) in matchers {
        let group = groups.entry(key(m)).or_default();
        for (j, earlier) in group.iter() {
            let methods_covered = earlier.methods.is_empty()
                || (!m.methods.is_empty() && m.methods.iter().all(|x| earlier.methods.contains(x)));
            let headers_covered = earlier.headers.iter().all(|h| m.headers.contains(h));
            if methods_covered && headers_covered && warned.insert(*i) {
                let (r, e) = (&cfg.routes[*i], &cfg.routes[*j]);
                routes.idx(r.index).warning(format!(
                    "route `{}` is never matched: route `{}` (routes[{}]) matches the same requests first",
                    r.name, e.name, e.index
                ));
            }
        }
        group.push((*i, m));
    }
}
