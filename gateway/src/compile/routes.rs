//! `routes:` → the router's matchers and the compiled [`Route`]s: match, rewrite, plugin chain.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::config::raw::{RawConfig, RouteConfig};
use crate::config::sink::Scope;
use crate::plugin::{Chain, Plugin, Providers, Registry};
use crate::resilience::RetryPolicy;
use crate::router::{template_param, HostMatch, PathMatch, RouteMatcher};
use crate::snapshot::{Action, Part, Route};
use crate::upstream::Upstream;

/// The routes that compile, and the matchers of every route whose match compiled (with its position
/// among `cfg.routes`, the router's order tie-break), whether or not the rest of it did: the lint and
/// the error count see them all.
pub(super) struct Compiled {
    pub routes: Vec<Arc<Route>>,
    pub matchers: Vec<(usize, RouteMatcher)>,
}

/// Compile `cfg.routes` (`at` is the scope of `routes:`) against the compiled upstreams; each route's
/// chain is `global` then its own plugins.
pub(super) fn compile(
    cfg: &RawConfig,
    at: &Scope,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    global: &[Arc<dyn Plugin>],
    registry: &Registry,
    providers: &Providers,
    server_compression: Option<&Arc<crate::compression::Policy>>,
) -> Compiled {
    let mut out = Compiled {
        routes: Vec::with_capacity(cfg.routes.len()),
        matchers: Vec::with_capacity(cfg.routes.len()),
    };
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        // `i` is the position among the routes that parsed (the router's), `r.index` the file's.
        let here = at.idx(r.index);
        if r.name.trim().is_empty() {
            here.at("name").error("a route needs a name");
        } else if let Some(first) = names.insert(&r.name, r.index) {
            let first_at = at
                .locations()
                .map(|l| {
                    format!(
                        " at {}",
                        l.describe(&format!("{}[{first}].name", at.path()), false)
                    )
                })
                .unwrap_or_default();
            here.at("name").error(format!(
                "duplicate route name `{}` (first used{first_at})",
                r.name
            ));
            names.insert(&r.name, first);
        }
        let target = match (&r.upstream, &r.compose) {
            (Some(u), None) => upstream(cfg, u, &here, upstreams).map(Target::Proxy),
            (None, Some(_)) => Some(Target::Compose),
            (Some(_), Some(_)) => {
                here.at("compose")
                    .error("a route has either `upstream` or `compose`, not both");
                None
            }
            (None, None) => {
                here.at("upstream")
                    .error("a route needs an `upstream` to proxy to, or `compose` calls");
                None
            }
        };
        let Some((mut matcher, capture_names)) = route_matcher(r, &here) else {
            continue;
        };
        if r.compose.is_some() {
            composition_route_checks(r, &here, &mut matcher);
        }
        let rewrite = r.rewrite.as_ref().and_then(|rw| {
            parse_rewrite(rw, &capture_names)
                .map_err(|e| here.at("rewrite").error(e))
                .ok()
        });
        if let Some(sp) = &r.strip_prefix {
            if !sp.starts_with('/') || sp.len() < 2 || sp.ends_with('/') {
                here.at("strip_prefix")
                    .error("must start with '/', not end with '/', and not be just '/'");
            }
            if r.rewrite.is_some() {
                here.at("strip_prefix")
                    .warning("ignored: `rewrite` sets the whole upstream path");
            }
        }
        let describe = describe(&matcher, r);
        let mut chain = global.to_vec();
        chain.extend(super::plugins::chain(
            &r.plugins,
            &here.at("plugins"),
            registry,
            providers,
        ));
        let action = match (target, &r.compose) {
            (Some(Target::Proxy(up)), _) => Some(Action::Proxy(up)),
            (Some(Target::Compose), Some(c)) => {
                let has_jwt = chain.iter().any(|p| p.name() == "jwt");
                super::compose::compile(
                    cfg,
                    c,
                    &here.at("compose"),
                    &capture_names,
                    has_jwt,
                    upstreams,
                )
                .map(|c| Action::Compose(Arc::new(c)))
            }
            _ => None,
        };
        if let Some(action) = action {
            let preserve_host = match &action {
                Action::Proxy(up) => r.preserve_host.unwrap_or(up.preserve_host),
                Action::Compose(_) => false,
            };
            let retry = match (&action, &r.retry) {
                (Action::Proxy(up), Some(rc)) => {
                    if rc.budget.is_some() {
                        here.at("retry").at("budget").error(
                            "a retry budget belongs to the upstream (it counts all of its requests)",
                        );
                    }
                    // Fields the route leaves out: its upstream's, or the defaults if it has none.
                    let base = if *up.retry == RetryPolicy::NONE {
                        &super::upstreams::DEFAULT_RETRY
                    } else {
                        &*up.retry
                    };
                    Arc::new(super::upstreams::retry_policy(base, rc, &here.at("retry")))
                }
                (Action::Proxy(up), None) => up.retry.clone(),
                (Action::Compose(_), _) => Arc::new(RetryPolicy::NONE),
            };
            // A route's own section replaces the server's as a whole.
            let compression = match &r.compression {
                Some(c) => super::settings::compression(Some(c), &here.at("compression")),
                None => server_compression.cloned(),
            };
            out.routes.push(Arc::new(Route {
                name: r.name.clone(),
                index: r.index,
                action,
                strip_prefix: r.strip_prefix.clone(),
                rewrite,
                preserve_host,
                retry,
                chain: Chain::new(chain),
                compression,
                series: Default::default(),
                describe,
            }));
        }
        out.matchers.push((i, matcher));
    }
    out
}

/// What a route does, before its composition (if any) is compiled.
enum Target {
    Proxy(Arc<Upstream>),
    Compose,
}

/// A composition route answers GET and HEAD (any method: those two); it has no upstream path of its
/// own to strip, rewrite or give a Host.
fn composition_route_checks(r: &RouteConfig, at: &Scope, matcher: &mut RouteMatcher) {
    if matcher.methods.is_empty() {
        matcher.methods = vec![Method::GET, Method::HEAD];
    } else if let Some(m) = matcher
        .methods
        .iter()
        .find(|m| **m != Method::GET && **m != Method::HEAD)
    {
        at.at("match").at("methods").error(format!(
            "`{m}`: a composition route answers GET and HEAD only (a write fanned out to several services cannot be undone when one of them fails, nor retried without repeating the ones that succeeded)"
        ));
    }
    for (field, set) in [
        ("strip_prefix", r.strip_prefix.is_some()),
        ("rewrite", r.rewrite.is_some()),
        ("preserve_host", r.preserve_host.is_some()),
        ("retry", r.retry.is_some()),
    ] {
        if set {
            at.at(field).error(
                "has no effect on a composition route: each call gives its own path (and Host)",
            );
        }
    }
}

/// The upstream `name` of a route or a composition's call (`at`: its scope; an unknown name is
/// reported at `at.upstream`), unless the upstream is defined but broken (reported where it is
/// defined).
pub(super) fn upstream(
    cfg: &RawConfig,
    name: &str,
    at: &Scope,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Option<Arc<Upstream>> {
    if let Some(u) = upstreams.get(name) {
        return Some(u.clone());
    }
    if cfg.upstreams.contains_key(name) || cfg.broken_upstreams.contains(name) {
        return None;
    }
    at.at("upstream").error(unknown_upstream(cfg, name));
    None
}

/// "unknown upstream `x` (defined: a, b)".
pub(super) fn unknown_upstream(cfg: &RawConfig, name: &str) -> String {
    let mut known: Vec<&str> = cfg
        .upstreams
        .keys()
        .chain(cfg.broken_upstreams.iter())
        .map(String::as_str)
        .collect();
    known.sort_unstable();
    let known = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    format!("unknown upstream `{name}` (defined: {known})")
}

/// Build the router's view of a route; returns it with the names it captures.
fn route_matcher(r: &RouteConfig, at: &Scope) -> Option<(RouteMatcher, Vec<String>)> {
    let m = &r.matcher;
    let mb = at.at("match");
    let before = at.error_count();
    let host = match m.host.as_deref() {
        None => HostMatch::Any,
        Some(h) => {
            let h = h.to_ascii_lowercase();
            let valid = |s: &str| {
                !s.is_empty()
                    && s.split('.').all(|l| {
                        !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
            };
            if let Some(suffix) = h.strip_prefix("*.") {
                if !valid(suffix) {
                    mb.at("host")
                        .error(format!("`{h}` is not a valid wildcard host"));
                }
                HostMatch::Suffix(format!(".{suffix}"))
            } else {
                if !valid(&h) {
                    mb.at("host").error(format!(
                        "`{h}` is not a valid host (exact, or `*.example.com`)"
                    ));
                }
                HostMatch::Exact(h)
            }
        }
    };
    let kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if kinds != 1 {
        mb.error("give exactly one of `path`, `path_prefix` or `path_regex`");
        return None;
    }
    let mut captures = Vec::new();
    let path = if let Some(p) = &m.path {
        let at = mb.at("path");
        if !p.starts_with('/') {
            at.error("must start with '/'");
        }
        if p.contains('{') || p.contains('}') {
            for seg in p.trim_start_matches('/').split('/') {
                match template_param(seg) {
                    Some(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                        if captures.iter().any(|c| c == name) {
                            at.error(format!("parameter `{{{name}}}` appears twice"));
                        }
                        captures.push(name.to_string());
                    }
                    Some(_) => at.error(format!("`{seg}` is not a valid parameter (use `{{name}}` with letters, digits, _)")),
                    None if seg.contains('{') || seg.contains('}') => {
                        at.error(format!("segment `{seg}`: a parameter must be a whole segment, like `/users/{{id}}`"))
                    }
                    None => {}
                }
            }
            PathMatch::Template(p.clone())
        } else {
            check_normalized(p, &at);
            PathMatch::Exact(p.clone())
        }
    } else if let Some(p) = &m.path_prefix {
        let at = mb.at("path_prefix");
        if !p.starts_with('/') {
            at.error("must start with '/'");
        }
        check_normalized(p, &at);
        let trimmed = p.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.to_string()
        })
    } else {
        let p = m.path_regex.as_deref().unwrap_or_default();
        let anchored = format!("^(?:{})$", p.trim_start_matches('^').trim_end_matches('$'));
        match Regex::new(&anchored) {
            Ok(re) => {
                captures.extend(re.capture_names().flatten().map(str::to_string));
                PathMatch::Regex(re)
            }
            Err(e) => {
                let msg = e.to_string();
                let msg = msg.lines().last().unwrap_or("invalid").trim().to_string();
                mb.at("path_regex").error(format!("invalid regex: {msg}"));
                return None;
            }
        }
    };
    let mut methods: Vec<Method> = Vec::with_capacity(m.methods.len());
    for meth in &m.methods {
        if !methods.contains(&meth.0) {
            methods.push(meth.0.clone());
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        let at = mb.at("headers").at(name);
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            (Err(_), _) => at.error(format!("`{name}` is not a valid header name")),
            (_, Err(_)) => at.error("not a valid header value"),
        }
    }
    if at.error_count() > before {
        return None;
    }
    Some((
        RouteMatcher {
            host,
            path,
            methods,
            headers,
        },
        captures,
    ))
}

/// A configured path that normalization would change can never match; say so at load time.
fn check_normalized(p: &str, at: &Scope) {
    match crate::path::normalize(p) {
        Ok(n) if n != p && n.trim_end_matches('/') != p.trim_end_matches('/') => at.error(format!(
            "`{p}` is not a normalized path and would never match; write `{n}`"
        )),
        Err(e) => at.error(e.message()),
        _ => {}
    }
}

fn parse_rewrite(rw: &str, captures: &[String]) -> Result<Vec<Part>, String> {
    if !rw.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if !rw.bytes().all(crate::request::target_byte) {
        return Err("may hold only visible ASCII, without spaces or `#`".into());
    }
    let mut parts = Vec::new();
    let mut rest = rw;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or("unclosed `{`")? + open;
        let name = &rest[open + 1..close];
        if !captures.iter().any(|c| c == name) {
            return Err(if captures.is_empty() {
                format!("`{{{name}}}`: this route captures no parameters (use a `{{param}}` path or a regex with named groups)")
            } else {
                format!(
                    "`{{{name}}}` is not captured by the route's path (captured: {})",
                    captures.join(", ")
                )
            });
        }
        let in_query = rw[..rw.len() - rest.len() + open].contains('?');
        parts.push(Part::Param {
            name: name.to_string(),
            in_query,
        });
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}`".into());
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

fn describe(m: &RouteMatcher, r: &RouteConfig) -> (String, String, String) {
    let host = match &m.host {
        HostMatch::Any => "*".to_string(),
        HostMatch::Exact(h) => h.clone(),
        HostMatch::Suffix(s) => format!("*{s}"),
    };
    let methods = if m.methods.is_empty() {
        "ANY".to_string()
    } else {
        m.methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let path = match &m.path {
        PathMatch::Exact(p) => format!("= {p}"),
        PathMatch::Template(p) => format!("~ {p}"),
        PathMatch::Prefix(p) => format!("{p}*"),
        PathMatch::Regex(_) => format!(
            "regex {}",
            r.matcher.path_regex.as_deref().unwrap_or_default()
        ),
    };
    (host, methods, path)
}
