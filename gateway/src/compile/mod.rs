//! The config compiler: a loaded file ([`crate::config::load::Loaded`]) → a [`Snapshot`] for serving.
//!
//! One orchestrator, [`compile`], calls one module per part of the file, each given the [`Scope`] of
//! the part it checks, so every problem (of loading, compiling, plugins, providers, TLS) is one located
//! diagnostic in one [`Sink`], all found in one pass. Compiling has no side effects: no DNS lookups
//! (names are resolved by the running gateway, or by `validate --resolve`), no metric registration
//! (series are bound when a snapshot is installed), no background task (a snapshot's tasks start when
//! it is installed). Only the files the config names are read: certificates, CA bundles, JWK files.
//!
//! A reload compiles with the running snapshot as `previous`, to take over what it learned: JWKS keys,
//! target health, rate-limit counters, and the certificates of listeners whose `server.tls` went away.

mod compose;
mod lint;
mod plugins;
mod routes;
mod settings;
mod tls;
mod upstreams;

use std::time::Duration;

use crate::config::diag::Diagnostics;
use crate::config::load::{self, Loaded};
use crate::config::raw::RawConfig;
use crate::config::sink::{Scope, Sink};
use crate::plugin::{Chain, Registry};
use crate::router::Router;
use crate::snapshot::Snapshot;

impl Snapshot {
    /// Load, validate and compile a file with the built-in plugins. On success also returns warnings.
    pub fn from_file(path: &str) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::from_file_with(path, &Registry::builtin())
    }

    /// Load, validate and compile a file with the plugins of `registry`.
    pub fn from_file_with(
        path: &str,
        registry: &Registry,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::from_file_replacing(path, registry, None)
    }

    /// Load, validate and compile a file that is to replace `previous` (a reload).
    pub fn from_file_replacing(
        path: &str,
        registry: &Registry,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        Self::from_loaded(&load::load_file(path)?, registry, previous)
    }

    /// Compile `text` as the content of config file `path` (messages name `path`, relative file
    /// names are resolved against its folder) that is to replace `previous`: a reload from the text it
    /// read, or a rollback to a version the gateway kept.
    pub fn from_text_replacing(
        path: &str,
        text: &str,
        registry: &Registry,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        let loaded = load::load_str(path, text, &|k| std::env::var(k).ok())?;
        Self::from_loaded(&loaded, registry, previous)
    }

    /// Compile a loaded file: its problems so far and the compiler's, in file order. A snapshot only
    /// when there is no error at all (warnings come with it).
    pub fn from_loaded(
        loaded: &Loaded,
        registry: &Registry,
        previous: Option<&Snapshot>,
    ) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        let sink = loaded.sink();
        let snap = compile(&loaded.config, &sink, registry, previous);
        let d = sink.finish();
        match snap {
            Some(mut snap) if !d.has_errors() => {
                snap.source = loaded.source.clone();
                Ok((snap, d))
            }
            _ => Err(d),
        }
    }
}

/// Compile `cfg`, reporting into `sink`. `None` when anything is wrong (all of it reported).
pub fn compile(
    cfg: &RawConfig,
    sink: &Sink,
    registry: &Registry,
    previous: Option<&Snapshot>,
) -> Option<Snapshot> {
    let root = sink.root();
    let settings = settings::compile(&cfg.server, &root.at("server"));
    let providers = registry.compile_sections(&cfg.sections, &root, previous.map(|p| &p.providers));
    if let Some(t) = &cfg.tracing {
        let at = root.at("tracing");
        match reqwest::Url::parse(&t.otlp_endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => at.at("otlp_endpoint").error(format!(
                "`{}` is not an http(s) URL like `http://otel-collector:4318/v1/traces`",
                t.otlp_endpoint
            )),
        }
        nonzero(&at.at("timeout"), t.timeout.0);
    }
    let tls = tls::compile(cfg.server.tls.as_ref(), &root.at("server"), previous);
    let global = plugins::chain(&cfg.plugins, &root.at("plugins"), registry, &providers);
    let upstreams = upstreams::compile(&cfg.upstreams, &root.at("upstreams"), previous);
    let routes_at = root.at("routes");
    let compression = settings::compression(
        cfg.server.compression.as_ref(),
        &root.at("server").at("compression"),
    );
    let compiled = routes::compile(
        cfg,
        &routes_at,
        &upstreams,
        &global,
        registry,
        &providers,
        compression.as_ref(),
    );
    lint::shadowed(&compiled.matchers, cfg, &routes_at);
    if let Some(s) = &settings {
        lint::own_listeners(cfg, s, &root.at("upstreams"));
    }
    lint::no_routes(cfg, &routes_at);
    if sink.has_errors() {
        return None;
    }
    let router = match Router::new(compiled.matchers.into_iter().map(|(_, m)| m).collect()) {
        Ok(r) => r,
        Err(e) => {
            routes_at.error(format!("cannot build the regex set: {e}"));
            return None;
        }
    };
    Some(Snapshot {
        settings: settings?,
        router,
        routes: compiled.routes,
        upstreams,
        providers,
        tls,
        tracing: cfg.tracing.clone(),
        global: Chain::new(global),
        source: Default::default(),
    })
}

/// A path from the config, relative to the config file's folder.
fn config_relative(at: &Scope, p: &str) -> std::path::PathBuf {
    at.config_relative(p)
}

fn positive(at: &Scope, v: i64) {
    if v < 1 {
        at.error(format!("must be at least 1, got {v}"));
    }
}

fn nonzero(at: &Scope, v: Duration) {
    if v.is_zero() {
        at.error("must be greater than zero");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report of compiling `text` (as `t.yaml`), which must fail.
    fn refusal(text: &str) -> String {
        let l = load_str("t.yaml", text, &|_| None).unwrap();
        Snapshot::from_loaded(&l, &Registry::builtin(), None)
            .err()
            .unwrap()
            .to_string()
    }
    use crate::config::load::load_str;
    use http::Method;

    fn compile(text: &str) -> Result<(Snapshot, Diagnostics), Diagnostics> {
        let l = load_str("t.yaml", text, &|_| None)?;
        assert!(!l.diagnostics.has_errors(), "{}", l.diagnostics);
        Snapshot::from_loaded(&l, &Registry::builtin(), None)
    }

    const UP: &str = "upstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:1\" }]\n";

    #[test]
    fn semantic_errors_all_reported() {
        let text = format!(
            "{UP}routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: nope\n  - name: a\n    match: {{ path_regex: \"([\" }}\n    upstream: u\n  - name: c\n    match: {{ path: /x, path_prefix: /y }}\n    upstream: u\n"
        );
        let errs = compile(&text).err().unwrap();
        let s = errs.to_string();
        assert!(
            s.contains(
                "t.yaml:7:15: error: routes[0].upstream: unknown upstream `nope` (defined: u)"
            ),
            "{s}"
        );
        assert!(
            s.contains("t.yaml:8:11: error: routes[1].name: duplicate route name `a`"),
            "{s}"
        );
        assert!(
            s.contains("routes[1].match.path_regex: invalid regex"),
            "{s}"
        );
        assert!(s.contains("routes[2].match: give exactly one of"), "{s}");
    }

    #[test]
    fn zero_weight_and_bad_listen() {
        let text = "server:\n  listen: [nowhere]\nupstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:1\", weight: 0 }]\n";
        // The address is refused when loading (it is typed), the weight when compiling: one report.
        let s = refusal(text);
        assert!(s.contains("t.yaml:2:12: error: server.listen[0]"), "{s}");
        assert!(
            s.contains("upstreams.u.targets[0].weight: weight must be at least 1, got 0"),
            "{s}"
        );
        // Nor so large that a balancer's table is huge, or wraps to nothing.
        let text = "upstreams:\n  u:\n    targets: [{ addr: \"127.0.0.1:1\", weight: 134217728 }]\n    balance: consistent_hash\n";
        let s = refusal(text);
        assert!(s.contains("t.yaml:3:"), "{s}");
        assert!(
            s.contains("upstreams.u.targets[0].weight: weight must be at most 1000, got 134217728"),
            "{s}"
        );
    }

    #[test]
    fn an_upstream_on_the_gateways_own_listeners_is_refused() {
        let text = "server:\n  listen: [\"0.0.0.0:8080\"]\n  admin: { listen: \"127.0.0.1:9090\" }\nupstreams:\n  a: { targets: [{ addr: \"127.0.0.1:9090\" }] }\n  b: { targets: [{ addr: \"127.0.0.1:8080\" }, { addr: \"127.0.0.1:8081\" }] }\n";
        let s = refusal(text);
        assert!(
            s.contains(
                "upstreams.a.targets[0].addr: `127.0.0.1:9090` is this gateway's admin listener"
            ),
            "{s}"
        );
        assert!(
            s.contains("upstreams.b.targets[0].addr: `127.0.0.1:8080` is one of this gateway's own listeners"),
            "{s}"
        );
        assert!(!s.contains("targets[1]"), "{s}");

        // The other spellings of this host's admin listener are refused too.
        for alias in [
            "localhost:9090",
            "0.0.0.0:9090",
            "[::ffff:127.0.0.1]:9090",
            "127.0.0.2:9090",
            "[::1]:9090",
        ] {
            let text = format!("server:\n  listen: [\"0.0.0.0:8080\"]\n  admin: {{ listen: \"127.0.0.1:9090\" }}\nupstreams:\n  a: {{ targets: [{{ addr: \"{alias}\" }}] }}\n");
            let l = load_str("t.yaml", &text, &|_| None).unwrap();
            let s = Snapshot::from_loaded(&l, &Registry::builtin(), None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                s.contains("is this gateway's admin listener"),
                "{alias}: {s}"
            );
        }
        // Another host's address on the same port is not this gateway, whatever the listener.
        let text = "server:\n  listen: [\"0.0.0.0:8080\"]\n  admin: { listen: \"0.0.0.0:9090\" }\nupstreams:\n  a: { targets: [{ addr: \"10.0.0.5:8080\" }, { addr: \"10.0.0.6:9090\" }] }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: a }\n";
        let l = load_str("t.yaml", text, &|_| None).unwrap();
        assert!(Snapshot::from_loaded(&l, &Registry::builtin(), None).is_ok());
        let text = "server:\n  listen: [\"127.0.0.1:8080\"]\n  admin: { listen: \"127.0.0.1:9090\" }\nupstreams:\n  a: { targets: [{ addr: \"10.0.0.5:9090\" }, { addr: \"localhost:9091\" }] }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: a }\n";
        let l = load_str("t.yaml", text, &|_| None).unwrap();
        assert!(Snapshot::from_loaded(&l, &Registry::builtin(), None).is_ok());
    }

    #[test]
    fn shadowed_route_is_a_warning() {
        let text = format!("{UP}routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: u\n  - name: b\n    match: {{ path_prefix: /a/, methods: [GET] }}\n    upstream: u\n");
        let (_, warnings) = compile(&text).unwrap();
        let w = warnings.to_string();
        assert!(
            w.contains("warning: routes[1]: route `b` is never matched: route `a`"),
            "{w}"
        );
    }

    #[test]
    fn rewrite_and_strip() {
        let text = format!(
            "{UP}routes:\n  - name: a\n    match: {{ path: \"/v1/users/{{id}}\" }}\n    upstream: u\n    rewrite: \"/users/{{id}}/profile\"\n  - name: b\n    match: {{ path_prefix: /api }}\n    upstream: u\n    strip_prefix: /api\n"
        );
        let (snap, _) = compile(&text).unwrap();
        let h = http::HeaderMap::new();
        let p = "/v1/users/7";
        let crate::router::Found::Route(i, params) = snap.router.find(None, &Method::GET, p, &h)
        else {
            panic!()
        };
        assert_eq!(snap.routes[i].upstream_path(p, &params), "/users/7/profile");
        for (req, want) in [("/api/x", "/x"), ("/api", "/"), ("/api/", "/")] {
            let crate::router::Found::Route(i, params) =
                snap.router.find(None, &Method::GET, req, &h)
            else {
                panic!()
            };
            assert_eq!(snap.routes[i].upstream_path(req, &params), want);
        }
        let bad = format!("{UP}routes:\n  - name: a\n    match: {{ path: /x }}\n    upstream: u\n    rewrite: \"/y/{{id}}\"\n");
        assert!(compile(&bad)
            .err()
            .unwrap()
            .to_string()
            .contains("routes[0].rewrite: `{id}`: this route captures no parameters"));
    }

    /// A plugin's config is read like any section: every problem, each at its place, in one run.
    #[test]
    fn plugin_config_problems_all_at_once() {
        let text = format!(
            "{UP}routes:\n  - name: a\n    match: {{ path_prefix: /a }}\n    upstream: u\n    plugins: [{{ ip_filter: {{ allow: [nope, 10.0.0.0/8, \"10.0.0.0/99\"], deni: [] }} }}]\n"
        );
        let l = load_str("t.yaml", &text, &|_| None).unwrap();
        let s = Snapshot::from_loaded(&l, &Registry::builtin(), None)
            .err()
            .unwrap()
            .to_string();
        for want in [
            "t.yaml:8:38: error: routes[0].plugins[0].ip_filter.allow[0]: `nope` is not a CIDR like `10.0.0.0/8` or an IP",
            "t.yaml:8:56: error: routes[0].plugins[0].ip_filter.allow[2]: `10.0.0.0/99` is not a CIDR",
            "routes[0].plugins[0].ip_filter.deni: unknown field `deni`: did you mean `deny`?",
        ] {
            assert!(s.contains(want), "missing {want}\n--- got:\n{s}");
        }
        assert_eq!(s.lines().count(), 3, "{s}");
    }

    /// A plugin family owns its top-level section through the registry: compiled before the plugins
    /// (which find the result in `Providers::ext`); a key nobody owns is an unknown field.
    #[test]
    fn plugins_register_their_sections() {
        #[derive(Clone)]
        struct Tenants(Vec<String>);
        let mut r = Registry::builtin();
        r.register_section(
            "tenants",
            |v, at, out, _previous| match serde_yaml_ng::from_value::<Vec<String>>(v.clone()) {
                Ok(t) => {
                    out.ext.insert(Tenants(t));
                }
                Err(_) => at.error("a list of tenant names"),
            },
        )
        .unwrap();
        assert!(r.register_section("tenants", |_, _, _, _| {}).is_err());
        assert!(r.register_section("routes", |_, _, _, _| {}).is_err());
        let text = format!("{UP}tenants: [acme, globex]\nroutes: []\n");
        let l = load_str("t.yaml", &text, &|_| None).unwrap();
        let (snap, _) = Snapshot::from_loaded(&l, &r, None).unwrap();
        let t = snap.providers.ext.get::<Tenants>().unwrap();
        assert_eq!(t.0, ["acme", "globex"]);

        let text = format!("{UP}tenants: 3\nrate_limit: {{}}\n");
        let l = load_str("t.yaml", &text, &|_| None).unwrap();
        let s = Snapshot::from_loaded(&l, &r, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            s.contains("t.yaml:4:10: error: tenants: a list of tenant names"),
            "{s}"
        );
        assert!(
            s.contains("t.yaml:5:1: error: rate_limit: unknown field `rate_limit`: did you mean `rate_limits`?"),
            "{s}"
        );
        // Without the registration, `tenants` is not a section of this gateway.
        let l = load_str("t.yaml", "tenants: []\n", &|_| None).unwrap();
        let s = Snapshot::from_loaded(&l, &Registry::builtin(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            s.contains("tenants: unknown field `tenants`, expected one of `server`"),
            "{s}"
        );
    }
}
