//! `routes[].compose` → a [`Composition`]: templates parsed against the route's parameters and the
//! other calls, the call graph checked for cycles, the answer's shape parsed. Everything that can be
//! known before a request is a load-time error here: unknown calls and sources, a call read as an
//! object when it fans out, a cycle, a write method, an unknown upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, Method};
use serde_yaml_ng::Value;

use crate::compose::template::{self, Names, Piece, Source, RESERVED};
use crate::compose::{Call, Composition, Shape};
use crate::config::raw::{ComposeConfig, RawConfig};
use crate::config::sink::Scope;
use crate::upstream::Upstream;

/// Compile a route's `compose:` (`at` is its scope). `params`: what the route's path captures;
/// `has_jwt`: the route's chain verifies JWTs.
pub(super) fn compile(
    cfg: &RawConfig,
    c: &ComposeConfig,
    at: &Scope,
    params: &[String],
    has_jwt: bool,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Option<Composition> {
    let identity_headers = identity_headers(cfg);
    let before = at.error_count();
    let calls_at = at.at("calls");
    if c.calls.is_empty() {
        calls_at.error("a composition needs at least one call");
    }
    if c.concurrency == 0 {
        at.at("concurrency").error("must be at least 1");
    }
    if c.timeout.0.is_zero() {
        at.at("timeout").error("must be more than 0");
    }
    let names: Vec<String> = c.calls.keys().cloned().collect();
    // A fan-out is a call whose path has a `[]` reference; known before parsing, so that every
    // reference to it can be checked to read it as the array it is.
    let fans_out: Vec<bool> = c
        .calls
        .values()
        .map(|call| call.path.contains("[]"))
        .collect();
    let names_ctx = Names {
        params,
        calls: &names,
        fans_out: &fans_out,
        has_jwt,
    };
    let mut calls = Vec::with_capacity(c.calls.len());
    for (i, (name, call)) in c.calls.iter().enumerate() {
        let here = calls_at.at(name);
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            here.error(format!(
                "`{name}` is not a valid call name (letters, digits, `_`, `-`)"
            ));
        } else if RESERVED.contains(&name.as_str()) {
            here.error(format!(
                "`{name}` is reserved (references start with `query.`, `header.`, `claims.`; `errors` is the answer's error list)"
            ));
        } else if params.contains(name) {
            here.error(format!(
                "call `{name}` has the name of a route parameter: `{{{name}}}` would be ambiguous"
            ));
        }
        let method = call.method.0.clone();
        if method != Method::GET && method != Method::HEAD {
            here.at("method").error(format!(
                "`{method}`: composed calls are GET or HEAD only (a write fanned out to several services cannot be undone when one of them fails)"
            ));
        }
        let upstream = super::routes::upstream(cfg, &call.upstream, &here, upstreams);
        let path_at = here.at("path");
        if !call.path.starts_with('/') {
            path_at.error("must start with '/'");
        }
        if !call.path.bytes().all(crate::request::target_byte) {
            path_at.error("may hold only visible ASCII, without spaces or `#`");
        }
        let target = template::parse(&call.path, &names_ctx)
            .map_err(|e| path_at.error(e))
            .ok();
        if let Some(t) = &target {
            let literal_brackets = t
                .iter()
                .any(|p| matches!(p, Piece::Lit(l) if l.contains(['[', ']'])));
            if literal_brackets {
                path_at.error("`[` and `]` may appear only in references (`{order.items[]}`): a path cannot hold them");
            }
            let each = refs(t).filter(|r| r.each().is_some()).count();
            if each > 1 {
                path_at.error("a call fans out over one array: only one `[]` in its path");
            }
            if refs(t).any(|r| r.source == Source::Call(i)) {
                path_at.error(format!("call `{name}` refers to itself"));
            }
        }
        let mut headers = Vec::with_capacity(call.headers.len());
        for (h, v) in &call.headers {
            let hat = here.at("headers").at(h);
            let Ok(hn) = HeaderName::from_bytes(h.as_bytes()) else {
                hat.error(format!("`{h}` is not a valid header name"));
                continue;
            };
            // Framing and connection headers would desynchronize the pooled connection; the
            // gateway's own and the trusted-proxy ones are the gateway's to set; identity headers
            // are the chain's (`forward_claims`), which a template could otherwise forge on a route
            // whose chain does not set them.
            let n = hn.as_str();
            if crate::headers::HOP_BY_HOP.contains(&n)
                || crate::headers::GATEWAY_SET.contains(&n)
                || crate::headers::FROM_TRUSTED_ONLY.contains(&n)
                || n == "expect"
                || identity_headers.contains(n)
            {
                hat.error(format!(
                    "`{hn}` is the gateway's to set (framing, forwarding, or identity from the chain)"
                ));
                continue;
            }
            match template::parse(v, &names_ctx) {
                Ok(p) if refs(&p).any(|r| r.each().is_some()) => {
                    hat.error("`[]` fans out, which only the path does")
                }
                Ok(p) if refs(&p).any(|r| r.source == Source::Call(i)) => {
                    hat.error(format!("call `{name}` refers to itself"))
                }
                Ok(p) => headers.push((hn, p)),
                Err(e) => hat.error(e),
            }
        }
        if call.max_calls == 0 {
            here.at("max_calls").error("must be at least 1");
        }
        if call.max_body.0 == 0 {
            here.at("max_body").error("must be more than 0");
        }
        let (Some(upstream), Some(target)) = (upstream, target) else {
            continue;
        };
        let mut deps: Vec<usize> = refs(&target)
            .chain(headers.iter().flat_map(|(_, p)| refs(p)))
            .filter_map(|r| match r.source {
                Source::Call(d) => Some(d),
                _ => None,
            })
            .collect();
        deps.sort_unstable();
        deps.dedup();
        // The composition's deadline bounds every call anyway (and reports itself as such).
        let timeout = call.timeout.map_or(upstream.read_timeout, |t| t.0);
        calls.push(Call {
            name: name.clone(),
            upstream,
            method,
            target,
            headers,
            timeout,
            required: call.required,
            max_calls: call.max_calls,
            max_body: usize::try_from(call.max_body.0).unwrap_or(usize::MAX),
            deps,
            fans_out: fans_out[i],
            duration: Default::default(),
        });
    }
    if at.error_count() > before {
        return None;
    }
    if let Some(cycle) = find_cycle(&calls) {
        let path: Vec<&str> = cycle.iter().map(|&i| calls[i].name.as_str()).collect();
        calls_at.at(&calls[cycle[0]].name).error(format!(
            "calls depend on each other in a cycle: {}",
            path.join(" → ")
        ));
        return None;
    }
    let response = c.response.as_ref().and_then(|v| {
        let rat = at.at("response");
        if !v.is_mapping() {
            rat.error("must be a mapping (the answer is a JSON object)");
            return None;
        }
        if v.get("errors").is_some() {
            rat.at("errors")
                .error("`errors` is where failed optional calls are listed; use another name");
            return None;
        }
        shape(v, &rat, &names_ctx)
    });
    if at.error_count() > before {
        return None;
    }
    Some(Composition {
        calls,
        response,
        timeout: c.timeout.0,
        concurrency: c.concurrency,
    })
}

fn refs(pieces: &[Piece]) -> impl Iterator<Item = &template::Ref> {
    pieces.iter().filter_map(|p| match p {
        Piece::Ref(r) => Some(r),
        Piece::Lit(_) => None,
    })
}

/// A cycle in the dependency graph, as call indexes (first repeated at the end), if there is one.
fn find_cycle(calls: &[Call]) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the stack, 2 done.
    fn visit(
        i: usize,
        calls: &[Call],
        mark: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        stack.push(i);
        for &d in &calls[i].deps {
            match mark.get(d) {
                Some(1) => {
                    let from = stack.iter().position(|&s| s == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d);
                    return Some(cycle);
                }
                Some(0) => {
                    if let Some(c) = visit(d, calls, mark, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; calls.len()];
    for i in 0..calls.len() {
        if mark[i] == 0 {
            if let Some(c) = visit(i, calls, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The response shape, from YAML.
fn shape(v: &Value, at: &Scope, names: &Names<'_>) -> Option<Shape> {
    Some(match v {
        Value::Mapping(m) => {
            let mut fields = Vec::with_capacity(m.len());
            let mut ok = true;
            for (k, v) in m {
                let Some(k) = k.as_str() else {
                    at.error("keys must be strings");
                    ok = false;
                    continue;
                };
                match shape(v, &at.at(k), names) {
                    Some(s) => fields.push((k.to_string(), s)),
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            Shape::Object(fields)
        }
        Value::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(shape(item, &at.idx(i), names)?);
            }
            Shape::Array(out)
        }
        Value::String(s) if s.contains('{') || s.contains('}') => {
            let whole = s.starts_with('{') && s.ends_with('}') && s[1..].find('{').is_none();
            if whole {
                match template::parse_ref(&s[1..s.len() - 1], names) {
                    Ok(r) => Shape::Ref(r),
                    Err(e) => {
                        at.error(e);
                        return None;
                    }
                }
            } else {
                match template::parse(s, names) {
                    Ok(p) if refs(&p).any(|r| r.each().is_some()) => {
                        at.error("`[]` gives an array, which cannot be put inside text");
                        return None;
                    }
                    Ok(p) => Shape::Text(p),
                    Err(e) => {
                        at.error(e);
                        return None;
                    }
                }
            }
        }
        other => match serde_json::to_value(other) {
            Ok(j) => Shape::Lit(j),
            Err(e) => {
                at.error(format!("not representable as JSON: {e}"));
                return None;
            }
        },
    })
}

/// Header names any route's `jwt` plugin fills from claims (`forward_claims`, as written in the
/// file): a composed call may not set them from a template, on any route (a service that trusts
/// `X-User-Id` from the gateway trusts it from every route).
fn identity_headers(cfg: &RawConfig) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let entries = cfg
        .plugins
        .iter()
        .chain(cfg.routes.iter().flat_map(|r| r.plugins.iter()));
    for e in entries {
        let Some(fc) = e.get("jwt").and_then(|j| j.get("forward_claims")) else {
            continue;
        };
        for (_, v) in fc.as_mapping().into_iter().flatten() {
            let name = v
                .as_str()
                .or_else(|| v.get("header").and_then(Value::as_str));
            if let Some(n) = name {
                out.insert(n.to_ascii_lowercase());
            }
        }
    }
    out
}
