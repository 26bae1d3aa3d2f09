//! `tollgate diff OLD NEW`: what a reload from OLD to NEW would change, offline.
//!
//! Both files are compiled as a reload would compile them (NEW with OLD as the snapshot it replaces),
//! so a NEW that would be refused is reported as such and nothing else. What is compared comes from
//! the compiled snapshots where they hold it (a route's match, upstream label and chain; upstream
//! targets; server settings, and [`Snapshot::fixed_setting_changes`] for what only an upgrade
//! changes), and from the files as written where the compiled form keeps no comparable trace (a
//! plugin's or provider's options).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_yaml_ng::Value;

use crate::config::load::Loaded;
use crate::config::raw::RouteConfig;
use crate::snapshot::{Route, Snapshot};

/// One thing that changed: `+` added, `-` removed, `~` changed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    pub kind: char,
    pub name: String,
    /// What about it (empty for an addition or removal).
    pub detail: Vec<String>,
}

/// Everything a reload from OLD to NEW would change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Diff {
    pub routes: Vec<Change>,
    pub upstreams: Vec<Change>,
    /// The global `plugins:` list.
    pub global_plugins: Vec<Change>,
    /// `rate_limits.*`.
    pub limits: Vec<Change>,
    /// `auth.*.*` (JWT providers, API key sets).
    pub auth: Vec<Change>,
    /// Server settings a reload applies.
    pub settings: Vec<Change>,
    /// Changes a reload does not apply: they wait for a graceful upgrade or restart.
    pub needs_upgrade: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.upstreams.is_empty()
            && self.global_plugins.is_empty()
            && self.limits.is_empty()
            && self.auth.is_empty()
            && self.settings.is_empty()
            && self.needs_upgrade.is_empty()
    }
}

/// A route's facts as `tollgate routes` shows them: the comparable part of its match.
fn route_match(r: &Route, headers: &[String]) -> String {
    let (host, methods, path) = &r.describe;
    let mut m = format!("{} {path}", if methods.is_empty() { "*" } else { methods });
    if !host.is_empty() {
        m = format!("{host} {m}");
    }
    if !headers.is_empty() {
        m.push_str(&format!(" [{}]", headers.join(",")));
    }
    m
}

fn rewrite_of(r: &Route, written: Option<&RouteConfig>) -> String {
    let mut s = Vec::new();
    if let Some(p) = &r.strip_prefix {
        s.push(format!("strip_prefix {p}"));
    }
    if let Some(rw) = written.and_then(|w| w.rewrite.as_ref()) {
        s.push(format!("rewrite {rw}"));
    }
    if r.preserve_host {
        s.push("preserve_host".to_string());
    }
    s.join(", ")
}

/// Compare keyed maps of comparable values into changes.
fn keyed<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    what: impl Fn(&T, &T) -> Vec<String>,
) -> Vec<Change> {
    let mut out = Vec::new();
    for (k, o) in old {
        match new.get(k) {
            None => out.push(Change {
                kind: '-',
                name: k.clone(),
                detail: Vec::new(),
            }),
            Some(n) if n != o => out.push(Change {
                kind: '~',
                name: k.clone(),
                detail: what(o, n),
            }),
            Some(_) => {}
        }
    }
    for k in new.keys().filter(|k| !old.contains_key(*k)) {
        out.push(Change {
            kind: '+',
            name: k.clone(),
            detail: Vec::new(),
        });
    }
    out
}

/// `section.kind.name` → value, e.g. `auth.jwt.demo`, as written.
fn providers(loaded: &Loaded) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(Value::Mapping(auth)) = loaded.config.sections.get("auth") {
        for (kind, v) in auth {
            let Value::Mapping(m) = v else { continue };
            for (name, p) in m {
                let key = format!(
                    "{}.{}",
                    kind.as_str().unwrap_or("?"),
                    name.as_str().unwrap_or("?")
                );
                out.insert(key, p.clone());
            }
        }
    }
    out
}

fn policies(loaded: &Loaded) -> BTreeMap<String, Value> {
    match loaded.config.sections.get("rate_limits") {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| (k.as_str().unwrap_or("?").to_string(), v.clone()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn yaml(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// What a reload from `old` to `new` would change. `old_raw` and `new_raw` are the files they were
/// compiled from (for options the snapshots keep no comparable form of).
pub fn diff(old: &Snapshot, old_raw: &Loaded, new: &Snapshot, new_raw: &Loaded) -> Diff {
    let mut d = Diff::default();

    // Routes, by name.
    type RouteFacts = (String, String, String, String, Vec<Value>, String);
    let facts = |s: &Snapshot, raw: &Loaded| -> BTreeMap<String, RouteFacts> {
        let written: BTreeMap<&str, &RouteConfig> = raw
            .config
            .routes
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        s.routes_in_order()
            .map(|(r, headers)| {
                let w = written.get(r.name.as_str()).copied();
                let plugins = w.map_or(Vec::new(), |w| w.plugins.clone());
                (
                    r.name.clone(),
                    (
                        route_match(r, &headers),
                        r.upstream_label(),
                        rewrite_of(r, w),
                        r.chain.names().join(","),
                        plugins,
                        r.retry.describe(),
                    ),
                )
            })
            .collect()
    };
    let (ro, rn) = (facts(old, old_raw), facts(new, new_raw));
    d.routes = keyed(&ro, &rn, |o, n| {
        let mut w = Vec::new();
        if o.0 != n.0 {
            w.push(format!("match {} → {}", o.0, n.0));
        }
        if o.1 != n.1 {
            w.push(format!("upstream {} → {}", o.1, n.1));
        }
        if o.2 != n.2 {
            w.push(format!(
                "path sent upstream: {} → {}",
                dash(&o.2),
                dash(&n.2)
            ));
        }
        if o.5 != n.5 {
            w.push(format!("retry {} → {}", o.5, n.5));
        }
        if o.3 != n.3 {
            w.push(format!("plugins {} → {}", dash(&o.3), dash(&n.3)));
        } else if o.4 != n.4 {
            w.push(format!(
                "plugin options {} → {}",
                o.4.iter().map(yaml).collect::<Vec<_>>().join(", "),
                n.4.iter().map(yaml).collect::<Vec<_>>().join(", ")
            ));
        }
        w
    });

    // Upstreams: targets from the snapshots, the rest as written.
    let ups = |s: &Snapshot, raw: &Loaded| -> BTreeMap<String, (Vec<(String, usize)>, String)> {
        s.upstreams
            .iter()
            .map(|(name, u)| {
                let cfg = raw
                    .config
                    .upstreams
                    .get(name)
                    .map(|c| {
                        let mut c = c.clone();
                        c.targets.clear();
                        format!("{c:?}")
                    })
                    .unwrap_or_default();
                (name.clone(), (u.target_specs(), cfg))
            })
            .collect()
    };
    d.upstreams = keyed(&ups(old, old_raw), &ups(new, new_raw), |o, n| {
        let mut w = Vec::new();
        for t in n.0.iter().filter(|t| !o.0.contains(t)) {
            w.push(format!("target + {} (weight {})", t.0, t.1));
        }
        for t in o.0.iter().filter(|t| !n.0.contains(t)) {
            w.push(format!("target - {} (weight {})", t.0, t.1));
        }
        if o.1 != n.1 {
            w.push("settings changed (balance, health check, timeouts, retry, outlier detection, circuit breaker, slow start or TLS)".into());
        }
        w
    });

    if old_raw.config.plugins != new_raw.config.plugins {
        d.global_plugins.push(Change {
            kind: '~',
            name: "plugins".into(),
            detail: vec![format!(
                "{} → {}",
                dash(&old.global.names().join(",")),
                dash(&new.global.names().join(","))
            )],
        });
    }
    d.limits = keyed(&policies(old_raw), &policies(new_raw), |o, n| {
        vec![format!("{} → {}", yaml(o), yaml(n))]
    });
    // Provider options may hold secrets: say that they changed, not what they are.
    d.auth = keyed(&providers(old_raw), &providers(new_raw), |_, _| {
        vec!["options changed".into()]
    });

    let (so, sn) = (&old.settings, &new.settings);
    let mut setting = |name: &str, o: String, n: String| {
        if o != n {
            d.settings.push(Change {
                kind: '~',
                name: name.into(),
                detail: vec![format!("{o} → {n}")],
            });
        }
    };
    setting(
        "server.limits.max_header_bytes",
        so.max_header_bytes.to_string(),
        sn.max_header_bytes.to_string(),
    );
    setting(
        "server.limits.max_headers",
        so.max_headers.to_string(),
        sn.max_headers.to_string(),
    );
    setting(
        "server.limits.max_uri_bytes",
        so.max_uri_bytes.to_string(),
        sn.max_uri_bytes.to_string(),
    );
    setting(
        "server.limits.keepalive_timeout",
        format!("{:?}", so.keepalive_timeout),
        format!("{:?}", sn.keepalive_timeout),
    );
    setting(
        "server.trusted_proxies",
        format!("{:?}", so.trusted_proxies),
        format!("{:?}", sn.trusted_proxies),
    );
    if so.admin_token != sn.admin_token {
        d.settings.push(Change {
            kind: '~',
            name: "server.admin.token".into(),
            detail: vec!["changed".into()],
        });
    }
    d.needs_upgrade = new.fixed_setting_changes(old);
    d
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

impl Diff {
    /// The plain-text form: a section per kind of thing, one change a line.
    pub fn text(&self) -> String {
        if self.is_empty() {
            return "no changes\n".to_string();
        }
        let mut s = String::new();
        let sections = [
            ("routes", &self.routes),
            ("upstreams", &self.upstreams),
            ("global plugins", &self.global_plugins),
            ("rate limits", &self.limits),
            ("auth", &self.auth),
            ("settings", &self.settings),
        ];
        for (title, changes) in sections {
            if changes.is_empty() {
                continue;
            }
            s.push_str(&format!("{title}:\n"));
            for c in changes {
                if c.detail.is_empty() {
                    s.push_str(&format!("  {} {}\n", c.kind, c.name));
                } else {
                    s.push_str(&format!(
                        "  {} {}: {}\n",
                        c.kind,
                        c.name,
                        c.detail.join("; ")
                    ));
                }
            }
        }
        if self.needs_upgrade.is_empty() {
            s.push_str("reload: every change above applies on reload\n");
        } else {
            s.push_str("needs an upgrade or restart (a reload keeps the running value):\n");
            for w in &self.needs_upgrade {
                s.push_str(&format!("  {w}\n"));
            }
        }
        s
    }
}
