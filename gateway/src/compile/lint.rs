//! Warnings about configs that are valid but cannot do what they say.

use std::collections::{HashMap, HashSet};

use crate::config::raw::RawConfig;
use crate::config::sink::Scope;
use crate::router::{template_param, PathMatch, RouteMatcher};

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
