//! The compiled route table: given host, method, normalized path and headers, find the route.
//!
//! Match priority, deterministic and documented in the README:
//! 1. host: an exact host's routes first, then wildcard hosts (`*.example.com`, longest suffix first), then
//!    routes with no host; a group that has no route for the request falls through to the next;
//! 2. within a host group, by path kind: exact path > template (`/users/{id}`; literal segments beat
//!    parameters, position by position) > regex > prefix (longest first);
//! 3. among equals, file order.
//!
//! A route whose path matches but whose method does not is remembered; when no route matches fully the
//! answer is 405 with the union of those methods in `Allow`, instead of 404.
//!
//! Exact paths are a hash lookup, templates and prefixes a walk down a segment trie, so a match costs
//! the same at 10 routes and at 10,000; regexes are tried through one `RegexSet`.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::{Regex, RegexSet};

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: any host ending with it (and not equal to `example.com`).
    Suffix(String),
}

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// `/users/{id}/orders`: literal segments and `{name}` parameters, each a whole segment.
    Template(String),
    /// Segment-aware prefix.
    Prefix(String),
    Regex(Regex),
}

/// One route as the router sees it.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub host: HostMatch,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Captured path parameters of a match, as byte ranges into the matched path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    /// Shared with the route (a match clones a reference count, not the names).
    pub names: Arc<[String]>,
    /// Byte range of each name's value; `None` for a regex group that did not take part.
    pub ranges: Vec<Option<(usize, usize)>>,
}

impl Params {
    /// Value of parameter `name` in `path` (the same path that was matched).
    pub fn get<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let i = self.names.iter().position(|n| n == name)?;
        let (s, e) = (*self.ranges.get(i)?)?;
        path.get(s..e)
    }

    /// Every captured parameter with its value in `path` (those that took part).
    pub fn pairs(&self, path: &str) -> Vec<(String, String)> {
        self.names
            .iter()
            .zip(&self.ranges)
            .filter_map(|(n, r)| {
                let (s, e) = (*r)?;
                Some((n.clone(), path.get(s..e)?.to_string()))
            })
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Index of the route in the order given to [`Router::new`].
    Route(usize, Params),
    /// The path matched routes that allow only these methods.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

#[derive(Default, Debug)]
struct SegTrie {
    literal: HashMap<Box<str>, SegTrie>,
    param: Option<Box<SegTrie>>,
    routes: Vec<usize>,
}

#[derive(Default, Debug)]
struct Table {
    exact: HashMap<Box<str>, Vec<usize>>,
    templates: SegTrie,
    /// Routes (by index) with a regex path, in file order, and one set over all their patterns.
    regex_routes: Vec<usize>,
    regex_set: Option<RegexSet>,
    prefixes: SegTrie,
}

/// The route table. Immutable once built; shared by all requests of a config snapshot.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<RouteMatcher>,
    /// Parameter names of template and regex routes (named groups, in group order), by route index.
    param_names: Vec<Arc<[String]>>,
    exact_hosts: HashMap<Box<str>, Table>,
    /// (suffix, table), longest suffix first.
    wildcard_hosts: Vec<(String, Table)>,
    any_host: Table,
}

impl Table {
    fn first_route(&self) -> Option<usize> {
        let mut all = Vec::new();
        collect(&self.templates, &mut all);
        collect(&self.prefixes, &mut all);
        all.extend(self.exact.values().flatten());
        all.extend(&self.regex_routes);
        all.into_iter().min()
    }
}

/// Every route index in a trie.
fn collect(node: &SegTrie, out: &mut Vec<usize>) {
    out.extend(&node.routes);
    for child in node.literal.values().chain(node.param.as_deref()) {
        collect(child, out);
    }
}

/// (depth, route) for every route of a prefix trie.
fn prefix_depths(node: &SegTrie, depth: usize, out: &mut Vec<(usize, usize)>) {
    out.extend(node.routes.iter().map(|&i| (depth, i)));
    for child in node.literal.values() {
        prefix_depths(child, depth + 1, out);
    }
}

/// Segments of a path; a trailing slash gives a final empty segment so `/a/` and `/a` differ for templates.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

/// Parameter name of a template segment (`{id}` → `id`).
pub fn template_param(seg: &str) -> Option<&str> {
    seg.strip_prefix('{')?.strip_suffix('}')
}

impl Router {
    /// Build from routes in file order (their index is their identity and their tie-break).
    pub fn new(routes: Vec<RouteMatcher>) -> Result<Router, regex::Error> {
        let mut r = Router::default();
        let mut names: Vec<Vec<String>> = vec![Vec::new(); routes.len()];
        for (i, route) in routes.iter().enumerate() {
            let table = match &route.host {
                HostMatch::Any => &mut r.any_host,
                HostMatch::Exact(h) => r.exact_hosts.entry(h.as_str().into()).or_default(),
                HostMatch::Suffix(s) => {
                    match r.wildcard_hosts.iter().position(|(suffix, _)| suffix == s) {
                        Some(p) => &mut r.wildcard_hosts[p].1,
                        None => {
                            r.wildcard_hosts.push((s.clone(), Table::default()));
                            let last = r.wildcard_hosts.len() - 1;
                            &mut r.wildcard_hosts[last].1
                        }
                    }
                }
            };
            match &route.path {
                PathMatch::Exact(p) => table.exact.entry(p.as_str().into()).or_default().push(i),
                PathMatch::Template(t) => {
                    let mut node = &mut table.templates;
                    for seg in segments(t) {
                        node = match template_param(seg) {
                            Some(name) => {
                                names[i].push(name.to_string());
                                node.param.get_or_insert_with(Default::default)
                            }
                            None => node.literal.entry(seg.into()).or_default(),
                        };
                    }
                    node.routes.push(i);
                }
                PathMatch::Prefix(p) => {
                    let mut node = &mut table.prefixes;
                    for seg in segments(p).filter(|s| !s.is_empty()) {
                        node = node.literal.entry(seg.into()).or_default();
                    }
                    node.routes.push(i);
                }
                PathMatch::Regex(re) => {
                    names[i] = re.capture_names().flatten().map(str::to_string).collect();
                    table.regex_routes.push(i)
                }
            }
        }
        r.wildcard_hosts
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let tables = std::iter::once(&mut r.any_host)
            .chain(r.exact_hosts.values_mut())
            .chain(r.wildcard_hosts.iter_mut().map(|(_, t)| t));
        for t in tables {
            if !t.regex_routes.is_empty() {
                let pats = t.regex_routes.iter().map(|&i| match &routes[i].path {
                    PathMatch::Regex(re) => re.as_str().to_string(),
                    _ => String::new(),
                });
                t.regex_set = Some(RegexSet::new(pats)?);
            }
        }
        r.param_names = names.into_iter().map(Arc::from).collect();
        r.routes = routes;
        Ok(r)
    }

    /// Route indices in the order [`Router::find`] tries them, for `tollgate routes`: exact hosts,
    /// wildcard hosts (longest suffix first), then routes without a host; within each, exact paths,
    /// templates (at each segment a literal before a parameter, as `walk_templates` descends), regexes
    /// (the `RegexSet` reports matches in file order), prefixes (deepest trie node first, as `find_in`
    /// tries them). Of two routes that can match the same request, the one `find` prefers comes first;
    /// where the structure leaves the order open (different exact hosts or exact paths, prefixes of
    /// equal depth on different branches) routes that can never compete stay in file order.
    pub fn order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.routes.len());
        let mut exact: Vec<&Table> = self.exact_hosts.values().collect();
        exact.sort_by_key(|t| t.first_route());
        let tables = exact
            .into_iter()
            .chain(self.wildcard_hosts.iter().map(|(_, t)| t))
            .chain(std::iter::once(&self.any_host));
        for t in tables {
            self.table_order(t, &mut out);
        }
        out
    }

    /// The route at `index` (file order), as [`Router::new`] was given it.
    pub fn matcher(&self, index: usize) -> Option<&RouteMatcher> {
        self.routes.get(index)
    }

    fn table_order(&self, t: &Table, out: &mut Vec<usize>) {
        // One hash lookup: routes of different exact paths never compete; one path's keep file order.
        let mut exact: Vec<usize> = t.exact.values().flatten().copied().collect();
        exact.sort_unstable();
        out.extend(exact);
        // Depth-first, literal before parameter, is the order of the per-segment kinds compared
        // left to right; two templates that match one path have equal literals wherever both have one.
        let mut templates = Vec::new();
        collect(&t.templates, &mut templates);
        let kinds = |i: usize| -> Vec<bool> {
            match &self.routes[i].path {
                PathMatch::Template(p) => {
                    segments(p).map(|s| template_param(s).is_some()).collect()
                }
                _ => Vec::new(),
            }
        };
        templates.sort_by_cached_key(|&i| (kinds(i), i));
        out.extend(templates);
        out.extend(t.regex_routes.iter().copied());
        let mut prefixes = Vec::new();
        prefix_depths(&t.prefixes, 0, &mut prefixes);
        prefixes.sort_unstable_by_key(|&(depth, i)| (std::cmp::Reverse(depth), i));
        out.extend(prefixes.into_iter().map(|(_, i)| i));
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Find the route for a request. `host` may carry a port and any case; `path` must be normalized.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Found {
        let mut allow: Vec<Method> = Vec::new();
        // No route names a host (one site behind the gateway): the host is not looked at.
        let by_host = !(self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty());
        let host = host.filter(|_| by_host).map(normalize_host);
        let host = host.as_deref();
        if let Some(h) = host {
            if let Some(t) = self.exact_hosts.get(h) {
                if let Some(found) = self.find_in(t, method, path, headers, &mut allow) {
                    return found;
                }
            }
            for (suffix, t) in &self.wildcard_hosts {
                if h.len() > suffix.len() && h.ends_with(suffix.as_str()) {
                    if let Some(found) = self.find_in(t, method, path, headers, &mut allow) {
                        return found;
                    }
                }
            }
        }
        if let Some(found) = self.find_in(&self.any_host, method, path, headers, &mut allow) {
            return found;
        }
        if allow.is_empty() {
            Found::NotFound
        } else {
            Found::MethodNotAllowed(allow)
        }
    }

    /// `Some(Found::Route)` on a full match; `None` when nothing in this table matched fully
    /// (path-only matches add their methods to `allow`).
    fn find_in(
        &self,
        t: &Table,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        allow: &mut Vec<Method>,
    ) -> Option<Found> {
        if let Some(ids) = t.exact.get(path) {
            for &i in ids {
                if self.accepts(i, method, headers, allow) {
                    return Some(Found::Route(i, Params::default()));
                }
            }
        }
        if !t.templates.literal.is_empty() || t.templates.param.is_some() {
            let mut caps: Vec<Option<(usize, usize)>> = Vec::new();
            let rest = path.strip_prefix('/').unwrap_or(path);
            if let Some(i) = self.walk_templates(
                &t.templates,
                rest,
                path.len() - rest.len(),
                &mut caps,
                method,
                headers,
                allow,
            ) {
                return Some(Found::Route(
                    i,
                    Params {
                        names: self.param_names[i].clone(),
                        ranges: caps,
                    },
                ));
            }
        }
        if let Some(set) = &t.regex_set {
            for k in set.matches(path).iter() {
                let i = t.regex_routes[k];
                if self.accepts(i, method, headers, allow) {
                    let mut params = Params {
                        names: self.param_names[i].clone(),
                        ranges: Vec::new(),
                    };
                    if let PathMatch::Regex(re) = &self.routes[i].path {
                        if !params.names.is_empty() {
                            if let Some(c) = re.captures(path) {
                                for (gi, name) in re.capture_names().enumerate() {
                                    if name.is_some() {
                                        params.ranges.push(c.get(gi).map(|m| (m.start(), m.end())));
                                    }
                                }
                            }
                        }
                    }
                    return Some(Found::Route(i, params));
                }
            }
        }
        // Longest prefix first: collect the trie nodes along the path, then try them deepest first.
        let mut chain: [Option<&SegTrie>; 32] = [None; 32];
        let mut depth = 0;
        let mut node = &t.prefixes;
        chain[0] = Some(node);
        for seg in segments(path).filter(|s| !s.is_empty()) {
            match node.literal.get(seg) {
                Some(next) if depth + 1 < chain.len() => {
                    depth += 1;
                    chain[depth] = Some(next);
                    node = next;
                }
                _ => break,
            }
        }
        for n in chain[..=depth].iter().rev().flatten() {
            for &i in &n.routes {
                if self.accepts(i, method, headers, allow) {
                    return Some(Found::Route(i, Params::default()));
                }
            }
        }
        None
    }

    /// Depth-first over the template trie, literal children before the parameter child. `rest` is the
    /// unmatched remainder of the path (without its leading '/') and `offset` its position in the path;
    /// `None` when the path is used up. On success `caps` holds the parameter ranges.
    #[allow(clippy::too_many_arguments)]
    fn walk_templates(
        &self,
        node: &SegTrie,
        rest: &str,
        offset: usize,
        caps: &mut Vec<Option<(usize, usize)>>,
        method: &Method,
        headers: &HeaderMap,
        allow: &mut Vec<Method>,
    ) -> Option<usize> {
        let (seg, tail, done) = match memchr::memchr(b'/', rest.as_bytes()) {
            Some(i) => (&rest[..i], &rest[i + 1..], false),
            None => (rest, "", true),
        };
        let next_offset = offset + seg.len() + 1;
        let descend = |child: &SegTrie,
                       caps: &mut Vec<Option<(usize, usize)>>,
                       allow: &mut Vec<Method>|
         -> Option<usize> {
            if done {
                child
                    .routes
                    .iter()
                    .copied()
                    .find(|&i| self.accepts(i, method, headers, allow))
            } else {
                self.walk_templates(child, tail, next_offset, caps, method, headers, allow)
            }
        };
        if let Some(child) = node.literal.get(seg) {
            if let Some(hit) = descend(child, caps, allow) {
                return Some(hit);
            }
        }
        if let Some(child) = &node.param {
            if !seg.is_empty() {
                caps.push(Some((offset, offset + seg.len())));
                if let Some(hit) = descend(child, caps, allow) {
                    return Some(hit);
                }
                caps.pop();
            }
        }
        None
    }

    fn accepts(
        &self,
        i: usize,
        method: &Method,
        headers: &HeaderMap,
        allow: &mut Vec<Method>,
    ) -> bool {
        let r = &self.routes[i];
        if !r
            .headers
            .iter()
            .all(|(n, v)| headers.get_all(n).iter().any(|x| x == v))
        {
            return false;
        }
        if r.methods.is_empty() || r.methods.iter().any(|m| m == method) {
            return true;
        }
        // HEAD is served wherever GET is.
        if method == Method::HEAD && r.methods.contains(&Method::GET) {
            return true;
        }
        for m in &r.methods {
            if !allow.contains(m) {
                allow.push(m.clone());
            }
        }
        false
    }
}

/// Why a route that looked close did not take a request ([`Router::near`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Its path matches, its host does not.
    Host,
    /// Its path matches, its method does not (these are the methods it allows).
    Method(Vec<Method>),
    /// Its path matches, this header of it is absent or different.
    Header(HeaderName),
    /// It matches the request fully, but the route chosen comes first in match priority.
    Shadowed,
}

impl Router {
    /// Every route whose path matches `path`, other than `chosen`, with why it did not take the
    /// request, in match order. For `tollgate explain` only: it looks at every route one by one
    /// (linear in the table), so that [`Router::find`], the hot path, stays as it is.
    pub fn near(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        chosen: Option<usize>,
    ) -> Vec<(usize, Miss)> {
        let host = host.map(normalize_host);
        let host = host.as_deref();
        let mut out = Vec::new();
        for i in self.order() {
            if Some(i) == chosen {
                continue;
            }
            let r = &self.routes[i];
            if !path_matches(&r.path, path) {
                continue;
            }
            let host_ok = match (&r.host, host) {
                (HostMatch::Any, _) => true,
                (HostMatch::Exact(h), Some(x)) => h == x,
                (HostMatch::Suffix(s), Some(x)) => x.len() > s.len() && x.ends_with(s.as_str()),
                (_, None) => false,
            };
            let miss = if !host_ok {
                Miss::Host
            } else if let Some((n, _)) = r
                .headers
                .iter()
                .find(|(n, v)| !headers.get_all(n).iter().any(|x| x == v))
            {
                Miss::Header(n.clone())
            } else if !self.accepts(i, method, headers, &mut Vec::new()) {
                Miss::Method(r.methods.clone())
            } else {
                Miss::Shadowed
            };
            out.push((i, miss));
        }
        out
    }
}

/// Does `path` (normalized) match `m` alone, as the router's tables would match it?
fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Regex(re) => re.is_match(path),
        PathMatch::Template(t) => {
            let mut want = segments(t);
            let mut have = segments(path);
            loop {
                match (want.next(), have.next()) {
                    (None, None) => return true,
                    (Some(w), Some(h)) => {
                        let ok = match template_param(w) {
                            Some(_) => !h.is_empty(),
                            None => w == h,
                        };
                        if !ok {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
        }
        PathMatch::Prefix(p) => {
            let mut have = segments(path).filter(|s| !s.is_empty());
            segments(p)
                .filter(|s| !s.is_empty())
                .all(|w| have.next() == Some(w))
        }
    }
}

/// Lower-case a host and drop its port (`API.Example.com:8080` → `api.example.com`); IPv6 literals keep brackets.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: HostMatch, path: PathMatch, methods: &[Method]) -> RouteMatcher {
        RouteMatcher {
            host,
            path,
            methods: methods.to_vec(),
            headers: vec![],
        }
    }

    #[test]
    fn near_says_why_each_close_route_missed() {
        let mut by_header = m(HostMatch::Any, PathMatch::Prefix("/api".into()), &[]);
        by_header.headers = vec![(
            HeaderName::from_static("x-v"),
            HeaderValue::from_static("2"),
        )];
        let r = Router::new(vec![
            m(
                HostMatch::Any,
                PathMatch::Prefix("/api".into()),
                &[Method::GET],
            ),
            m(
                HostMatch::Any,
                PathMatch::Template("/api/{id}".into()),
                &[Method::POST],
            ),
            m(
                HostMatch::Exact("a.example".into()),
                PathMatch::Prefix("/api".into()),
                &[],
            ),
            by_header,
            m(HostMatch::Any, PathMatch::Exact("/api/7".into()), &[]),
            m(HostMatch::Any, PathMatch::Prefix("/other".into()), &[]),
            m(HostMatch::Any, PathMatch::Prefix("/ap".into()), &[]),
        ])
        .unwrap();
        let h = HeaderMap::new();
        let found = r.find(Some("b.example"), &Method::GET, "/api/7", &h);
        assert_eq!(found, Found::Route(4, Params::default()));
        let near = r.near(Some("b.example"), &Method::GET, "/api/7", &h, Some(4));
        assert_eq!(
            near,
            vec![
                (2, Miss::Host),
                (1, Miss::Method(vec![Method::POST])),
                (0, Miss::Shadowed),
                (3, Miss::Header(HeaderName::from_static("x-v"))),
            ]
        );
        // Paths alone: templates need every segment, prefixes whole segments.
        assert!(path_matches(&PathMatch::Template("/a/{x}".into()), "/a/1"));
        assert!(!path_matches(&PathMatch::Template("/a/{x}".into()), "/a/"));
        assert!(!path_matches(
            &PathMatch::Template("/a/{x}".into()),
            "/a/1/2"
        ));
        assert!(path_matches(&PathMatch::Prefix("/".into()), "/anything"));
        assert!(!path_matches(&PathMatch::Prefix("/ap".into()), "/api"));
    }

    fn find(r: &Router, host: &str, method: Method, path: &str) -> Found {
        r.find(Some(host), &method, path, &HeaderMap::new())
    }

    fn idx(f: Found) -> usize {
        match f {
            Found::Route(i, _) => i,
            other => panic!("no route: {other:?}"),
        }
    }

    #[test]
    fn priority_exact_template_regex_prefix() {
        let r = Router::new(vec![
            m(HostMatch::Any, PathMatch::Prefix("/".into()), &[]),
            m(HostMatch::Any, PathMatch::Prefix("/api".into()), &[]),
            m(
                HostMatch::Any,
                PathMatch::Regex(Regex::new("^/api/v[0-9]+/.*$").unwrap()),
                &[],
            ),
            m(
                HostMatch::Any,
                PathMatch::Template("/api/v1/users/{id}".into()),
                &[],
            ),
            m(
                HostMatch::Any,
                PathMatch::Exact("/api/v1/users/me".into()),
                &[],
            ),
            m(
                HostMatch::Any,
                PathMatch::Template("/api/v1/{what}/{id}".into()),
                &[],
            ),
        ])
        .unwrap();
        assert_eq!(idx(find(&r, "x", Method::GET, "/api/v1/users/me")), 4);
        assert_eq!(idx(find(&r, "x", Method::GET, "/api/v1/users/7")), 3);
        assert_eq!(idx(find(&r, "x", Method::GET, "/api/v1/orders/7")), 5);
        assert_eq!(idx(find(&r, "x", Method::GET, "/api/v2/x")), 2);
        assert_eq!(idx(find(&r, "x", Method::GET, "/api/other")), 1);
        assert_eq!(idx(find(&r, "x", Method::GET, "/api")), 1);
        assert_eq!(idx(find(&r, "x", Method::GET, "/apix")), 0);
        assert_eq!(idx(find(&r, "x", Method::GET, "/")), 0);
    }

    #[test]
    fn params_are_captured() {
        let r = Router::new(vec![m(
            HostMatch::Any,
            PathMatch::Template("/users/{id}/orders/{oid}".into()),
            &[],
        )])
        .unwrap();
        let path = "/users/42/orders/abc";
        match find(&r, "h", Method::GET, path) {
            Found::Route(0, p) => {
                assert_eq!(p.get(path, "id"), Some("42"));
                assert_eq!(p.get(path, "oid"), Some("abc"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            find(&r, "h", Method::GET, "/users/42/orders"),
            Found::NotFound
        );
        assert_eq!(
            find(&r, "h", Method::GET, "/users//orders/x"),
            Found::NotFound
        );
    }

    #[test]
    fn hosts_and_fallthrough() {
        let r = Router::new(vec![
            m(HostMatch::Any, PathMatch::Prefix("/".into()), &[]),
            m(
                HostMatch::Suffix(".example.com".into()),
                PathMatch::Prefix("/".into()),
                &[],
            ),
            m(
                HostMatch::Exact("api.example.com".into()),
                PathMatch::Prefix("/v1".into()),
                &[],
            ),
        ])
        .unwrap();
        assert_eq!(
            idx(find(&r, "API.example.com:8080", Method::GET, "/v1/x")),
            2
        );
        assert_eq!(idx(find(&r, "api.example.com", Method::GET, "/v2")), 1);
        assert_eq!(idx(find(&r, "www.example.com", Method::GET, "/v1")), 1);
        assert_eq!(idx(find(&r, "example.com", Method::GET, "/v1")), 0);
        assert_eq!(idx(find(&r, "other.org", Method::GET, "/")), 0);
    }

    #[test]
    fn methods_and_405() {
        let r = Router::new(vec![
            m(
                HostMatch::Any,
                PathMatch::Exact("/a".into()),
                &[Method::GET],
            ),
            m(
                HostMatch::Any,
                PathMatch::Prefix("/a".into()),
                &[Method::POST],
            ),
        ])
        .unwrap();
        assert_eq!(idx(find(&r, "h", Method::GET, "/a")), 0);
        assert_eq!(idx(find(&r, "h", Method::HEAD, "/a")), 0);
        assert_eq!(idx(find(&r, "h", Method::POST, "/a")), 1);
        assert_eq!(
            find(&r, "h", Method::DELETE, "/a"),
            Found::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
        assert_eq!(find(&r, "h", Method::GET, "/b"), Found::NotFound);
    }

    #[test]
    fn headers_must_match() {
        let mut route = m(HostMatch::Any, PathMatch::Prefix("/".into()), &[]);
        route.headers = vec![(
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        )];
        let r = Router::new(vec![
            route,
            m(HostMatch::Any, PathMatch::Prefix("/".into()), &[]),
        ])
        .unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(idx(r.find(None, &Method::GET, "/", &h)), 1);
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(idx(r.find(None, &Method::GET, "/", &h)), 0);
    }

    /// Whether `m` alone accepts the request, written from the README's rules rather than the tables.
    fn accepts_alone(
        m: &RouteMatcher,
        host: &str,
        method: &Method,
        path: &str,
        h: &HeaderMap,
    ) -> bool {
        let host = normalize_host(host);
        let host_ok = match &m.host {
            HostMatch::Any => true,
            HostMatch::Exact(e) => *e == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        let path_ok = match &m.path {
            PathMatch::Exact(p) => p == path,
            PathMatch::Template(t) => {
                let want: Vec<&str> = segments(t).collect();
                let got: Vec<&str> = segments(path).collect();
                want.len() == got.len()
                    && want.iter().zip(&got).all(|(w, g)| match template_param(w) {
                        Some(_) => !g.is_empty(),
                        None => w == g,
                    })
            }
            PathMatch::Prefix(p) => {
                let want: Vec<&str> = segments(p).filter(|s| !s.is_empty()).collect();
                let got: Vec<&str> = segments(path).filter(|s| !s.is_empty()).collect();
                got.starts_with(&want)
            }
            PathMatch::Regex(re) => re.is_match(path),
        };
        let headers_ok = m
            .headers
            .iter()
            .all(|(n, v)| h.get_all(n).iter().any(|x| x == v));
        let method_ok = m.methods.is_empty()
            || m.methods.contains(method)
            || (method == Method::HEAD && m.methods.contains(&Method::GET));
        host_ok && path_ok && headers_ok && method_ok
    }

    /// `order()` is the order `find` really tries routes in: for every request of a grid over hosts,
    /// paths, methods and a header, `find` picks the first route in `order()` that accepts it alone.
    /// The file order is nearly the reverse of the match order, and every route wins somewhere.
    #[test]
    fn order_is_what_find_tries() {
        let re = |p: &str| PathMatch::Regex(Regex::new(p).unwrap());
        let mut canary = m(HostMatch::Any, PathMatch::Prefix("/api/v2".into()), &[]);
        canary.headers = vec![(
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        )];
        let r = Router::new(vec![
            m(HostMatch::Any, PathMatch::Prefix("/".into()), &[]),
            m(HostMatch::Any, PathMatch::Prefix("/api".into()), &[]),
            canary,
            m(HostMatch::Any, PathMatch::Prefix("/api/v2/".into()), &[]),
            m(
                HostMatch::Any,
                PathMatch::Template("/users/{id}/orders".into()),
                &[],
            ),
            m(
                HostMatch::Any,
                PathMatch::Template("/users/me/{tab}".into()),
                &[],
            ),
            m(
                HostMatch::Any,
                PathMatch::Template("/{a}/{b}/orders".into()),
                &[],
            ),
            m(
                HostMatch::Any,
                PathMatch::Exact("/users/me/orders".into()),
                &[Method::POST],
            ),
            m(HostMatch::Any, re("^/api/v[0-9]+$"), &[Method::GET]),
            m(
                HostMatch::Suffix(".example.com".into()),
                PathMatch::Prefix("/".into()),
                &[],
            ),
            m(
                HostMatch::Suffix(".api.example.com".into()),
                PathMatch::Prefix("/api".into()),
                &[],
            ),
            m(
                HostMatch::Exact("api.example.com".into()),
                PathMatch::Template("/users/{id}/orders".into()),
                &[Method::GET],
            ),
            m(
                HostMatch::Suffix(".b.example.com".into()),
                PathMatch::Prefix("/".into()),
                &[],
            ),
            m(
                HostMatch::Exact("www.example.com".into()),
                PathMatch::Exact("/".into()),
                &[],
            ),
        ])
        .unwrap();
        let order = r.order();
        assert_eq!(order, [11, 13, 10, 12, 9, 7, 5, 4, 6, 8, 2, 3, 1, 0]);
        let hosts = [
            "api.example.com",
            "x.api.example.com",
            "x.b.example.com",
            "www.example.com",
            "example.com",
            "Other.org:8080",
        ];
        let paths = [
            "/",
            "/api",
            "/api/v2",
            "/api/v2/x",
            "/api/v3",
            "/users/me/orders",
            "/users/7/orders",
            "/a/b/orders",
            "/users/me/x",
            "/users/me",
            "/x/y",
        ];
        let mut with_canary = HeaderMap::new();
        with_canary.insert("x-canary", HeaderValue::from_static("1"));
        let mut other_canary = HeaderMap::new();
        other_canary.insert("x-canary", HeaderValue::from_static("2"));
        let mut winners = std::collections::BTreeSet::new();
        for host in hosts {
            for path in paths {
                for method in [Method::GET, Method::HEAD, Method::POST, Method::DELETE] {
                    for h in [&HeaderMap::new(), &with_canary, &other_canary] {
                        let want = order
                            .iter()
                            .copied()
                            .find(|&i| accepts_alone(&r.routes[i], host, &method, path, h));
                        let got = match r.find(Some(host), &method, path, h) {
                            Found::Route(i, _) => Some(i),
                            _ => None,
                        };
                        assert_eq!(got, want, "{method} {host}{path} {h:?}");
                        winners.extend(got);
                    }
                }
            }
        }
        assert_eq!(
            winners.len(),
            order.len(),
            "every route wins some request of the grid"
        );
    }

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("Example.COM:80"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
