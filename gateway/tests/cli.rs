//! The command line: `validate`, `routes`, `run` with a broken file, `--version`.
#![allow(clippy::unwrap_used)]

use crate::common;

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
    targets: [{ addr: "127.0.0.1:8083", weight: 5000 }]
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
        format!("{f}:8:49: error: upstreams.orders.targets[0].weight: weight must be at most 1000, got 5000 (weights are relative: 1 against 1000 already splits traffic 1:1000)"),
        format!("{f}:9:5: error: upstreams.orders.balanse: unknown field `balanse`: did you mean `balance`?"),
        format!("{f}:12:54: error: routes[0].match.methods[1]: `BAD METHOD` is not an HTTP method"),
        format!("{f}:13:15: error: routes[0].upstream: unknown upstream `userz` (defined: orders, users)"),
        format!("{f}:14:11: error: routes[1].name: duplicate route name `users` (first used at {f}:11:11)"),
        format!("{f}:15:26: error: routes[1].match.path_regex: invalid regex: error: unclosed group"),
        format!("{f}:20:5: error: routes[2].retries: unknown field `retries`, expected one of `name`, `match`, `upstream`, `compose`, `strip_prefix`, `rewrite`, `preserve_host`, `retry`, `compression`, `plugins`"),
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
        let cases = p.to_string_lossy().ends_with(".cases.yaml");
        if p.extension().is_some_and(|e| e == "yaml") && !cases {
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
  here: { targets: [{ addr: "localhost:8082" }, { addr: "127.0.0.1:8081" }] }
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

/// Run the binary from the repository root, with the demo config's `${VAR:-default}`s at their
/// defaults, so the outputs are the same on every machine.
fn in_root(args: &[&str]) -> (i32, String, String) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args).current_dir(root);
    for v in [
        "TOLLGATE_LISTEN",
        "TOLLGATE_ADMIN_LISTEN",
        "TOLLGATE_ADMIN_TOKEN",
        "TOLLGATE_JWT_SECRET",
        "USERS_ADDR",
        "PRODUCTS_ADDR",
        "ORDERS_ADDR",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd.output().expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compare `got` with the golden file `tests/fixtures/authors/NAME`; `TOLLGATE_BLESS=1` writes it
/// instead (then read the diff before committing it).
fn golden(name: &str, got: &str) {
    let path = format!(
        "{}/tests/fixtures/authors/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("TOLLGATE_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got, want,
        "golden {name} differs (TOLLGATE_BLESS=1 rewrites it)"
    );
}

fn explain_demo(name: &str, args: &[&str]) -> String {
    let mut all = vec!["explain", "-c", "config/tollgate.yaml"];
    all.extend_from_slice(args);
    let (code, out, err) = in_root(&all);
    assert_eq!(code, 0, "{out}{err}");
    golden(name, &out);
    out
}

#[test]
fn explain_a_protected_route_without_a_token() {
    let out = explain_demo("explain-orders-no-token.txt", &["GET", "/api/orders"]);
    assert!(out.contains("jwt              → 401"), "{out}");
    assert!(out.contains("answer:   401 by jwt"), "{out}");
}

#[test]
fn explain_a_405_lists_the_routes_that_matched_the_path() {
    let out = explain_demo("explain-me-405.txt", &["DELETE", "/api/me"]);
    assert!(
        out.contains("near:     me not taken (method): it allows only GET"),
        "{out}"
    );
    assert!(out.contains("answer:   405"), "{out}");
}

#[test]
fn explain_a_shadowed_route() {
    let out = explain_demo(
        "explain-details-shadows-orders.txt",
        &[
            "GET",
            "/api/orders/5/details",
            "--token-claims",
            r#"{"sub":"7","scope":"orders"}"#,
        ],
    );
    assert!(out.contains("route:    order-details"), "{out}");
    assert!(
        out.contains("near:     orders not taken (shadowed)"),
        "{out}"
    );
}

#[test]
fn explain_a_rewrite_with_parameters() {
    let out = explain_demo(
        "explain-v1-rewrite.txt",
        &["GET", "/api/v1/products/a%20b?page=2"],
    );
    assert!(out.contains("params:   id=a%20b"), "{out}");
    assert!(
        out.contains("sent as:  GET /products/a%20b?from=v1&page=2"),
        "{out}"
    );
}

#[test]
fn explain_a_rate_limited_route_names_its_policies_and_keys() {
    let out = explain_demo(
        "explain-orders-rate-limited.txt",
        &[
            "POST",
            "/api/orders",
            "-H",
            "X-User-Id: 1",
            "--token-claims",
            r#"{"sub":"7","scope":"orders"}"#,
            "--client-ip",
            "203.0.113.9",
        ],
    );
    assert!(
        out.contains("orders_per_user (30 per 60s, local) by key"),
        "{out}"
    );
    assert!(out.contains("header:   x-user-id: 7"), "{out}");
}

#[test]
fn explain_verifies_a_real_token_and_prints_json() {
    let (code, token, err) = in_root(&[
        "token",
        "-c",
        "config/tollgate.yaml",
        "--sub",
        "7",
        "--scope",
        "orders",
    ]);
    assert_eq!(code, 0, "{err}");
    let auth = format!("Authorization: Bearer {}", token.trim());
    let (code, out, err) = in_root(&[
        "explain",
        "-c",
        "config/tollgate.yaml",
        "GET",
        "/api/orders",
        "-H",
        &auth,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["route"], "orders");
    assert_eq!(j["status"], serde_json::Value::Null);
    assert_eq!(j["upstream"]["name"], "orders");
    assert_eq!(j["upstream"]["target"], "/orders");
    assert_eq!(j["upstream_headers"][0][1], "7");
    // A tampered token is refused the way the proxy refuses it.
    let bad = format!("{auth}x");
    let (_, out, _) = in_root(&[
        "explain",
        "-c",
        "config/tollgate.yaml",
        "GET",
        "/api/orders",
        "-H",
        &bad,
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], 401);
    // A request that cannot be written is the caller's mistake: exit 2.
    let (code, _, err) = in_root(&["explain", "GET", "/x", "-H", "no colon"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn explain_refusals_before_routing() {
    let (_, out, _) = in_root(&["explain", "GET", "/api/products/a%2Fb"]);
    assert!(
        out.contains("answer:   400: an encoded slash (%2F)"),
        "{out}"
    );
    let (_, out, _) = in_root(&["explain", "GET", "/api/products/../users/7"]);
    assert!(out.contains("path:     /api/users/7"), "{out}");
    assert!(out.contains("route:    users"), "{out}");
    let (_, out, _) = in_root(&[
        "explain",
        "OPTIONS",
        "/api/orders",
        "-H",
        "Origin: http://localhost:3000",
        "-H",
        "Access-Control-Request-Method: POST",
    ]);
    assert!(out.contains("answer:   204 by cors"), "{out}");
    let (_, out, _) = in_root(&[
        "explain",
        "GET",
        "/api/users/7",
        "-H",
        "Connection: close, X-Forwarded-For",
    ]);
    assert!(
        out.contains(
            "answer:   400: the request's Connection header names Host or an X-Forwarded-* header"
        ),
        "{out}"
    );
}

#[test]
fn test_runs_the_shipped_cases() {
    let (code, out, err) = in_root(&[
        "test",
        "config/tollgate.cases.yaml",
        "-c",
        "config/tollgate.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with("cases passed against config/tollgate.yaml\n"),
        "{out}"
    );
}

#[test]
fn test_reports_each_failing_case_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "cases.yaml",
        r#"cases:
  - name: passes
    request: { url: /api/products }
    expect: { route: products-read }
  - name: wrong route and status
    request: { url: /api/orders }
    expect: { route: users, status: 403 }
  - request: { method: GET, url: /api/products }
    expect: { status: 404, upstream: users }
"#,
    );
    let (code, out, _) = in_root(&["test", &f]);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "{f}:5: FAIL wrong route and status: route: expected users, got orders; status: expected 403, got 401 (provider demo: no token → 401)\n\
         {f}:8: FAIL GET /api/products: status: expected 404, but the request is proxied to products; upstream: expected users, got products\n\
         {f}: 1 of 3 cases passed against config/tollgate.yaml\n"
    );
    assert_eq!(out, want);
    // A file that is not a cases file: exit 2, at its place.
    let bad = write(
        &dir,
        "bad.yaml",
        "cases:\n  - request: { url: /x }\n    expect: { stauts: 200 }\n",
    );
    let (code, out, _) = in_root(&["test", &bad]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with(&format!("{bad}:3:")) && out.contains("unknown field `stauts`"),
        "{out}"
    );
}

#[test]
fn diff_says_what_a_reload_would_change() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let old = std::fs::read_to_string(format!("{root}/config/tollgate.yaml")).unwrap();
    let new = old
        .replace(
            "per_client: { requests: 600, per: 1m, burst: 100 }",
            "per_client: { requests: 300, per: 1m, burst: 50 }",
        )
        .replace(
            "targets: [{ addr: \"${ORDERS_ADDR:-127.0.0.1:8083}\" }]",
            "targets: [{ addr: \"${ORDERS_ADDR:-127.0.0.1:8083}\" }, { addr: \"127.0.0.1:8093\" }]",
        )
        .replace("      - rate_limit: orders_per_user\n", "")
        .replace("  - name: products-v1\n", "  - name: products-legacy\n")
        .replace("${TOLLGATE_LISTEN:-127.0.0.1:8080}", "127.0.0.1:8088");
    let dir = tempfile::tempdir().unwrap();
    let n = write(&dir, "new.yaml", &new);
    let (code, out, err) = in_root(&["diff", "config/tollgate.yaml", &n]);
    assert_eq!(code, 0, "{out}{err}");
    golden("diff-demo.txt", &out);
    assert!(
        out.contains("  - products-v1\n") && out.contains("  + products-legacy\n"),
        "{out}"
    );
    assert!(out.contains("~ orders: plugins jwt,rate_limit → jwt") || out.contains("plugins cors,body_limit,rate_limit,jwt,rate_limit → cors,body_limit,rate_limit,jwt"), "{out}");
    assert!(out.contains("target + 127.0.0.1:8093"), "{out}");
    assert!(out.contains("server.listen changed"), "{out}");
    let (code, out, _) = in_root(&["diff", "config/tollgate.yaml", "config/tollgate.yaml"]);
    assert_eq!((code, out.as_str()), (0, "no changes\n"));
    let (code, out, _) = in_root(&["diff", "config/tollgate.yaml", &n, "--json"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["needs_upgrade"].as_array().unwrap().len(), 1);
    // A NEW that would be refused is said to be, with its errors.
    let broken = write(
        &dir,
        "broken.yaml",
        &old.replace("upstream: products\n", "upstream: prodcts\n"),
    );
    let (code, out, _) = in_root(&["diff", "config/tollgate.yaml", &broken]);
    assert_eq!(code, 1);
    assert!(out.contains("would be refused"), "{out}");
}
