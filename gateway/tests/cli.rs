//! The command line: `validate`, `routes`, `run` with a broken file, `--version`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, tollgate};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn validate_reports_every_problem_with_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "broken.yaml",
        r#"server:
  listen: ["127.0.0.1:8080"]
  limits: { max_headers: 0, header_read_timeout: 10 }
upstreams:
  users:
    targets: [{ addr: "127.0.0.1:8081", weight: 0 }]
  orders:
    targets: [{ addr: "127.0.0.1:8083" }]
    balanse: round_robin
routes:
  - name: users
    match: { path_prefix: /api/users, methods: [GET, "BAD METHOD"] }
    upstream: userz
  - name: users
    match: { path_regex: "/v(" }
    upstream: users
  - name: orders
    match: { path_prefix: /api/orders }
    upstream: orders
    retries: 3
"#,
    );
    let (code, out, _) = tollgate(&["validate", &f]);
    assert_eq!(code, 1);
    let want = [
        format!("{f}:3:50: error: server.limits.header_read_timeout: duration `10` needs a unit: write `10s` or `10ms`"),
        format!("{f}:6:49: error: upstreams.users.targets[0].weight: weight must be at least 1, got 0"),
        format!("{f}:9:5: error: upstreams.orders.balanse: unknown field `balanse`: did you mean `balance`?"),
        format!("{f}:12:54: error: routes[0].match.methods[1]: `BAD METHOD` is not an HTTP method"),
        format!("{f}:13:15: error: routes[0].upstream: unknown upstream `userz` (defined: orders, users)"),
        format!("{f}:14:11: error: routes[1].name: duplicate route name `users` (first used by routes[0])"),
        format!("{f}:15:26: error: routes[1].match.path_regex: invalid regex: error: unclosed group"),
        format!("{f}:20:5: error: routes[2].retries: unknown field `retries`, expected one of `name`, `match`, `upstream`, `compose`, `strip_prefix`, `rewrite`, `preserve_host`, `plugins`"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    for w in &want {
        assert!(
            lines.contains(&w.as_str()),
            "missing line:\n{w}\n--- got:\n{out}"
        );
    }
}

#[test]
fn validate_syntax_and_env_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "syntax.yaml",
        "routes:\n  - name: a\n    match: { path: /x\n",
    );
    let (code, out, _) = tollgate(&["validate", &f]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with(&format!("{f}:4:1: error: YAML syntax error")),
        "{out}"
    );

    let g = write(
        &dir,
        "env.yaml",
        "upstreams:\n  u:\n    targets: [{ addr: \"${TOLLGATE_TEST_UNSET_VAR}\" }]\n",
    );
    let (code, out, _) = tollgate(&["validate", &g]);
    assert_eq!(code, 1);
    assert_eq!(
        out.lines().filter(|l| !l.contains(": warning: ")).count(),
        1,
        "one problem, reported once: {out}"
    );
    assert!(
        out.contains(&format!("{g}:3:23: error: upstreams.u.targets[0].addr: environment variable `TOLLGATE_TEST_UNSET_VAR` is not set")),
        "{out}"
    );
    let (code, _, _) = tollgate(&["validate", "/nonexistent/file.yaml"]);
    assert_eq!(code, 1);
}

#[test]
fn validate_accepts_shipped_configs_and_warns_on_shadowing() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    for entry in std::fs::read_dir(root).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let (code, out, err) = tollgate(&["validate", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "shadow.yaml",
        "upstreams:\n  u: { targets: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: u }\n  - { name: b, match: { path_prefix: /a, methods: [GET] }, upstream: u }\n",
    );
    let (code, _, err) = tollgate(&["validate", &f]);
    assert_eq!(code, 0);
    assert!(
        err.contains(&format!(
            "{f}:5:7: warning: routes[1]: route `b` is never matched: route `a` (routes[0])"
        )),
        "{err}"
    );
}

#[test]
fn routes_prints_match_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "r.yaml",
        r#"upstreams:
  u: { targets: [{ addr: "127.0.0.1:1" }] }
routes:
  - { name: root, match: { path_prefix: / }, upstream: u }
  - { name: api, match: { path_prefix: /api }, upstream: u }
  - { name: user, match: { path: "/api/users/{id}", methods: [GET] }, upstream: u }
  - { name: me, match: { path: /api/users/me }, upstream: u }
  - { name: host, match: { host: api.example.com, path_prefix: / }, upstream: u }
"#,
    );
    let (code, out, _) = tollgate(&["routes", &f]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(names, ["host", "me", "user", "api", "root"], "{out}");
}

#[test]
fn run_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "bad.yaml",
        "server:\n  listen: [\"127.0.0.1:1\"]\n  bogus: 1\n",
    );
    let (code, _, err) = tollgate(&["run", "-c", &f]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{f}:3:3: error: server.bogus: unknown field `bogus`"
        )),
        "{err}"
    );
}

#[test]
fn version_and_help() {
    let (code, out, _) = tollgate(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("tollgate "), "{out}");
    let (code, out, _) = tollgate(&["--help"]);
    assert_eq!(code, 0);
    for sub in ["run", "validate", "routes"] {
        assert!(out.contains(sub));
    }
}

/// The README shows what `validate` says when `upstream` is misspelled in the shipped config: it must
/// stay true.
#[test]
fn readme_broken_config_example_is_what_validate_prints() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let claim = readme
        .lines()
        .find(|l| l.starts_with("config/tollgate.yaml:") && l.contains("upstreem"))
        .expect("the README shows a broken-config line");
    let config = std::fs::read_to_string(format!("{root}/config/tollgate.yaml")).unwrap();
    let broken = config.replacen("    upstream: ", "    upstreem: ", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(cfg.join("tollgate.yaml"), broken).unwrap();
    let out = std::process::Command::new(bin())
        .args(["validate", "config/tollgate.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), claim);
}

/// A listen address that is taken is a clear, immediate error, not a gateway running without it.
#[test]
fn run_refuses_a_busy_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    for (listen, admin) in [
        (format!("127.0.0.1:{port}"), "127.0.0.1:0".to_string()),
        ("127.0.0.1:0".to_string(), format!("127.0.0.1:{port}")),
    ] {
        let path = dir.path().join("busy.yaml");
        std::fs::write(
            &path,
            format!("server: {{ listen: [\"{listen}\"], admin: {{ listen: \"{admin}\" }} }}\nupstreams: {{ be: {{ targets: [{{ addr: \"127.0.0.1:1\" }}] }} }}\nroutes: [{{ name: r, match: {{ path_prefix: / }}, upstream: be }}]\n"),
        )
        .unwrap();
        let (code, _, err) = tollgate(&["run", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
            "{err}"
        );
    }
}

#[test]
fn validate_locates_the_request_path_options() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "opts.yaml",
        "server:\n  limits: { tunnel_idle_timeout: 0s }\nauth:\n  jwt:\n    hs: { algorithms: [HS256], secret: \"0123456789abcdef0123456789abcdef\" }\nupstreams:\n  u: { targets: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - name: a\n    match: { path_prefix: /a }\n    upstream: u\n    rewrite: \"/b#frag\"\n    plugins: [{ jwt: { provider: hs, forward_claims: { sub: { header: \"bad header\" } } } }]\n",
    );
    let (code, out, _) = tollgate(&["validate", &f]);
    assert_eq!(code, 1);
    for want in [
        format!("{f}:2:34: error: server.limits.tunnel_idle_timeout: must be greater than zero"),
        format!("{f}:12:14: error: routes[0].rewrite: may hold only visible ASCII"),
        format!("{f}:13:71: error: routes[0].plugins[0].jwt.forward_claims.sub.header: `bad header` is not a valid header name"),
    ] {
        assert!(out.contains(&want), "missing `{want}` in:\n{out}");
    }
}

/// Every problem of a file in one run, each on its own route: a typo in `routes[0]` hides neither that
/// route's other problems nor the next route's (which used to be reported on `routes[0]`), a broken
/// provider is reported once, and near-miss names get a suggestion.
#[test]
fn validate_places_each_problem_on_its_own_route_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "routes.yaml",
        r#"auth:
  jwt:
    idp: { algorithms: [HS256], secret: short }
upstreams:
  u: { targets: [{ addr: "127.0.0.1:1" }], balance: round_robbin }
routes:
  - name: a
    match: { path_prefix: /a }
    upstream: u
    strip_prefx: /a
    preserve_host: maybe
    plugins: [{ jwt: { provider: idp } }]
  - name: b
    match: { path_prefix: /b }
    upstream: nope
    plugins: [{ jwt: { provider: missing } }, rate_limiter]
"#,
    );
    let (code, out, _) = tollgate(&["validate", &f]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let want = [
        format!("{f}:3:41: error: auth.jwt.idp.secret: an HMAC secret must be at least 32 bytes"),
        format!("{f}:5:53: error: upstreams.u.balance: unknown value `round_robbin`: did you mean `round_robin`?"),
        format!("{f}:10:5: error: routes[0].strip_prefx: unknown field `strip_prefx`: did you mean `strip_prefix`?"),
        format!("{f}:11:20: error: routes[0].preserve_host: invalid type: string `maybe`, expected `true` or `false`"),
        format!("{f}:15:15: error: routes[1].upstream: unknown upstream `nope`"),
        format!("{f}:16:34: error: routes[1].plugins[0].jwt.provider: unknown JWT provider `missing`"),
        format!("{f}:16:47: error: routes[1].plugins[1]: unknown plugin `rate_limiter`: did you mean `rate_limit`?"),
    ];
    for w in &want {
        assert!(
            lines.iter().any(|l| l.starts_with(w.as_str())),
            "missing line:\n{w}\nin:\n{out}"
        );
    }
    assert_eq!(lines.len(), want.len(), "one line per problem:\n{out}");
}

/// `routes` lists routes in the order the router tries them, checked against a running gateway: for
/// each request, the route that answers is the first route of the printed table that could take it.
/// The file order differs from the match order for wildcard hosts of two suffix lengths, a template
/// and its literal sibling, a prefix and a longer one, and a header match; an exact host comes before
/// every wildcard.
#[test]
fn routes_order_is_the_order_requests_match() {
    let be = common::Backend::start("be", common::Mode::Echo);
    let config = format!(
        r#"server: {{ listen: ["{{listen}}"] }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: wild-short, match: {{ host: "*.example.com", path_prefix: / }}, upstream: be, rewrite: /wild-short }}
  - {{ name: wild-long, match: {{ host: "*.api.example.com", path_prefix: / }}, upstream: be, rewrite: /wild-long }}
  - {{ name: user-orders, match: {{ path: "/users/{{id}}/orders" }}, upstream: be, rewrite: /user-orders }}
  - {{ name: me-tab, match: {{ path: "/users/me/{{tab}}" }}, upstream: be, rewrite: /me-tab }}
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: be, rewrite: /api }}
  - {{ name: canary, match: {{ path_prefix: /api/v2, headers: {{ x-canary: "1" }} }}, upstream: be, rewrite: /canary }}
  - {{ name: api-v2, match: {{ path_prefix: /api/v2 }}, upstream: be, rewrite: /api-v2 }}
  - {{ name: exact-host, match: {{ host: api.example.com, path_prefix: /x }}, upstream: be, rewrite: /exact-host }}
"#,
        be.addr
    );
    let g = common::Gateway::start(&config);
    let (code, out, err) = tollgate(&["routes", g.config_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let order: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(
        order,
        [
            "exact-host",
            "wild-long",
            "wild-short",
            "me-tab",
            "user-orders",
            "canary",
            "api-v2",
            "api"
        ],
        "{out}"
    );
    let at = out
        .lines()
        .next()
        .unwrap()
        .find(" HEADERS ")
        .expect("a HEADERS column")
        + 1;
    for (l, r) in out.lines().skip(1).zip(&rows) {
        let want = if r[1] == "canary" { "x-canary=1" } else { "-" };
        assert_eq!(
            l[at..].split_whitespace().next(),
            Some(want),
            "HEADERS of {}:\n{out}",
            r[1]
        );
    }
    // (host, path, extra header, the routes that could each take the request alone).
    let probes: [(&str, &str, &str, &[&str]); 8] = [
        ("api.example.com", "/x", "", &["exact-host", "wild-short"]),
        ("a.api.example.com", "/x", "", &["wild-long", "wild-short"]),
        (
            "a.api.example.com",
            "/api/v2/x",
            "",
            &["wild-long", "wild-short", "api-v2", "api"],
        ),
        (
            "b.example.com",
            "/api/v2",
            "",
            &["wild-short", "api-v2", "api"],
        ),
        (
            "test.local",
            "/users/me/orders",
            "",
            &["me-tab", "user-orders"],
        ),
        (
            "test.local",
            "/api/v2/x",
            "X-Canary: 1\r\n",
            &["canary", "api-v2", "api"],
        ),
        (
            "test.local",
            "/api/v2/x",
            "X-Canary: 2\r\n",
            &["api-v2", "api"],
        ),
        ("test.local", "/api/v3", "", &["api"]),
    ];
    for (host, path, extra, could) in probes {
        let first = order.iter().find(|n| could.contains(n)).unwrap();
        let r = g.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{host}{path}");
        assert_eq!(
            r.json()["path"].as_str(),
            Some(format!("/{first}").as_str()),
            "{host}{path} {extra:?}: the table says `{first}` answers\n{out}"
        );
    }
}

#[test]
fn validate_checks_how_targets_are_written_and_resolves_only_with_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "names.yaml",
        r#"upstreams:
  here: { targets: [{ addr: "localhost:8080" }, { addr: "127.0.0.1:8081" }] }
  gone: { targets: [{ addr: "no-such-host.invalid:8080" }] }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: here }
  - { name: b, match: { path_prefix: /b }, upstream: gone }
"#,
    );
    // No lookup without `--resolve`: a name that does not exist is well written, so the file is valid.
    let (code, out, err) = tollgate(&["validate", &f]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("{f}: ok\n"));
    // `localhost` resolves from the hosts file; `.invalid` never does (RFC 6761).
    let (code, out, err) = tollgate(&["validate", "--resolve", &f]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:3:29: error: upstreams.gone.targets[0].addr: cannot resolve `no-such-host.invalid:8080`"
        )),
        "{out}"
    );

    let g = write(
        &dir,
        "syntax.yaml",
        r#"upstreams:
  u: { targets: [{ addr: "users:99999" }, { addr: "http://users:80" }, { addr: "::1:80" }] }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: u }
"#,
    );
    let (code, out, _) = tollgate(&["validate", &g]);
    assert_eq!(code, 1);
    for want in [
        format!("{g}:2:26: error: upstreams.u.targets[0].addr: port `99999` of `users:99999` is not a number from 1 to 65535"),
        format!("{g}:2:51: error: upstreams.u.targets[1].addr: `http://users:80` is a URL"),
        format!("{g}:2:80: error: upstreams.u.targets[2].addr: `::1:80` is an IPv6 address without a port"),
    ] {
        assert!(out.lines().any(|l| l.starts_with(&want)), "{want}\n{out}");
    }
}

/// README's layout section names every module of the gateway's `src/` (files and folders), and every
/// `src/...` it names exists: the map a new contributor reads stays the territory.
#[test]
fn readme_layout_matches_the_source_tree() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let layout = readme
        .split("## Layout")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README has a Layout section with a code block");
    let src = std::path::Path::new(root).join("gateway/src");
    let mut missing = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let shown = if e.file_type().unwrap().is_dir() {
            format!("src/{name}/")
        } else if name == "lib.rs" {
            continue; // the library root; its modules are what is listed
        } else {
            format!("src/{name}")
        };
        if !layout.contains(&shown) {
            missing.push(shown);
        }
    }
    assert!(
        missing.is_empty(),
        "README layout lacks {missing:?}:\n{layout}"
    );
    let named = layout
        .split(|c: char| c.is_whitespace() || c == ';' || c == ',')
        .filter_map(|w| w.strip_prefix("src/"))
        .map(|w| w.trim_end_matches(['.', ')']));
    for w in named {
        assert!(
            src.join(w).exists(),
            "README layout names src/{w}, which does not exist"
        );
    }
}

/// The library's top-level modules depend on each other one way only: no cycle (e.g. config → plugin →
/// config, snapshot ⇄ tls), so each layer can be read, tested and replaced from the bottom up. A module
/// depends on another when its non-test code names `crate::other`.
#[test]
fn modules_have_no_dependency_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().to_string_lossy().into_owned();
            let top = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" || !rel.ends_with(".rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            for line in code.lines() {
                let line = line.split("//").next().unwrap();
                for part in line.split("crate::").skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        deps.entry(top.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    assert!(deps.contains_key("compile") && deps["compile"].contains("snapshot"));
    // Depth-first search; a module met again while on the stack closes a cycle.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("module cycle: {} -> {m}", path[i..].join(" -> "));
        }
        if !done.insert(m.to_string()) {
            return;
        }
        path.push(m.to_string());
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        visit(m, &deps, &mut Vec::new(), &mut done);
    }
}
