//! A config per team (`include:`): files merged into one config, checked as one (names defined twice,
//! paths a team may not route, FILE:LINE:COL in the right file), reloaded when any of them changes,
//! never replaced by a bad one, and rolled back from the texts the gateway kept.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "an-admin-token-for-tests";

/// The platform team's file: listeners, admin, one route of its own, and the teams' files.
fn main_config(teams: &Path) -> String {
    format!(
        "server:
  listen: [\"{{listen}}\"]
  admin: {{ listen: \"{{admin}}\", token: \"{TOKEN}\" }}
  reload: {{ watch: true, interval: 100ms }}
upstreams:
  platform: {{ targets: [{{ addr: \"127.0.0.1:9\" }}] }}
routes:
  - name: platform
    match: {{ path: /platform }}
    upstream: platform
include:
  - {dir}/conf.d
  - files: {dir}/teams/orders-*.yaml
    paths: [/api/orders]
    upstreams: [users]       # the users team's, by name: the orders team may route to it
    targets: [127.0.0.1]     # where the orders team's own upstreams may connect
",
        dir = teams.display()
    )
}

fn users_file(be: &Backend) -> String {
    format!(
        "upstreams:
  users: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: users
",
        be.addr
    )
}

fn orders_file(be: &Backend, extra: &str) -> String {
    format!(
        "upstreams:
  orders: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    upstream: orders
{extra}",
        be.addr
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn backend_of(g: &Gateway, path: &str) -> Option<String> {
    let r = g.get(path);
    r.header("x-backend").map(str::to_string)
}

/// Poll until `done` holds (the watcher polls every 100 ms), at most 10 s.
fn wait_until(what: &str, g: &Gateway, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", g.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn admin_json(g: &Gateway, method: &str, path: &str) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = g.admin_request(method, path, &[&auth]);
    assert!(r.status < 500, "{method} {path}: {}", r.status);
    r.json()
}

#[test]
fn team_files_are_merged_watched_kept_when_bad_and_rolled_back() {
    let users = Backend::start("users", Mode::Echo);
    let orders = Backend::start("orders", Mode::Echo);
    let teams = tempfile::tempdir().unwrap();
    let t = teams.path();
    write(&t.join("conf.d/users.yaml"), &users_file(&users));
    // Not YAML by name: never included from the folder.
    write(&t.join("conf.d/README.md"), "routes: [oops\n");
    let orders_path = t.join("teams/orders-1.yaml");
    write(&orders_path, &orders_file(&orders, ""));
    let g = Gateway::in_process(&main_config(t));

    // One config: each team's routes go to its own upstream.
    assert_eq!(backend_of(&g, "/api/users/1").as_deref(), Some("users"));
    assert_eq!(backend_of(&g, "/api/orders/7").as_deref(), Some("orders"));
    assert_eq!(g.get("/nope").status, 404);
    let cfg = admin_json(&g, "GET", "/admin/config");
    let included: Vec<&str> = cfg["included"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(included.len(), 2, "{cfg}");
    assert!(included[0].ends_with("conf.d/users.yaml"), "{included:?}");
    assert!(included[1].ends_with("teams/orders-1.yaml"), "{included:?}");
    assert_eq!(
        cfg["included"][1]["config"]["routes"][0]["name"], "orders",
        "{cfg}"
    );

    // The orders team edits only its file: the watcher sees it.
    write(
        &orders_path,
        &orders_file(
            &orders,
            "  - name: orders-special
    match: { path: /api/orders/special }
    upstream: users
",
        ),
    );
    wait_until("the edit of an included file was not reloaded", &g, || {
        backend_of(&g, "/api/orders/special").as_deref() == Some("users")
    });

    // A new file in the folder is seen too.
    write(
        &t.join("conf.d/extra.yaml"),
        "routes:\n  - name: extra\n    match: { path: /api/extra }\n    upstream: users\n",
    );
    wait_until("a file added to the folder was not reloaded", &g, || {
        backend_of(&g, "/api/extra").as_deref() == Some("users")
    });

    // A bad edit: refused with the place in the team's own file (its routes[1], not the merged
    // list's), and the running config stays.
    let before = admin_json(&g, "GET", "/admin/config/versions")["current"].clone();
    write(
        &orders_path,
        &orders_file(
            &orders,
            "  - name: orders-bad
    match: { path: /api/orders/bad }
    upstream: nowhere
",
        ),
    );
    wait_until("the bad edit was not tried", &g, || {
        !admin_json(&g, "GET", "/admin/reload")["ok"]
            .as_bool()
            .unwrap()
    });
    let status = admin_json(&g, "GET", "/admin/reload");
    let err = status["errors"][0].as_str().unwrap().to_string();
    let expected = format!("{}:9:15: error: routes[1].upstream:", orders_path.display());
    assert!(err.starts_with(&expected), "{err}\nwanted {expected}");
    assert!(err.contains("nowhere"), "{err}");
    assert_eq!(
        admin_json(&g, "GET", "/admin/config/versions")["current"],
        before
    );
    assert_eq!(
        backend_of(&g, "/api/orders/special").as_deref(),
        Some("users")
    );
    assert_eq!(backend_of(&g, "/api/extra").as_deref(), Some("users"));

    // Back to the first version: compiled from the texts kept with it, not the files (which hold
    // the bad edit), so `orders-special` and `extra` are gone.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = g.admin_request(
        "POST",
        "/admin/config/rollback?version=1",
        &[&auth, "Content-Length: 0"],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        backend_of(&g, "/api/orders/special").as_deref(),
        Some("orders")
    );
    assert_eq!(g.get("/api/extra").status, 404);
    let versions = admin_json(&g, "GET", "/admin/config/versions");
    let first = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .unwrap()
        .clone();
    assert_eq!(first["files"].as_array().unwrap().len(), 2, "{first}");
}

/// Run `tollgate validate` on `main` in `dir`; returns (exit code, what it printed: errors on
/// stdout, warnings on stderr).
fn validate(dir: &Path, main: &str) -> (i32, String) {
    write(&dir.join("tollgate.yaml"), main);
    let path = dir.join("tollgate.yaml");
    let (code, out, err) = tollgate(&["validate", path.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[test]
fn problems_across_files_name_every_place() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let main = "server:
  listen: [\"127.0.0.1:0\"]
upstreams:
  shared: { targets: [{ addr: \"127.0.0.1:9\" }] }
routes:
  - name: home
    match: { path: / }
    upstream: shared
include:
  - conf.d/*.yaml
  - files: teams/orders.yaml
    paths: [/api/orders]
  - conf.d/missing.yaml
";
    write(
        &dir.join("conf.d/a.yaml"),
        "upstreams:
  users: { targets: [{ addr: \"127.0.0.1:9\" }] }
routes:
  - name: users
    match: { path_prefix: /api/users }
    upstream: users
",
    );
    write(
        &dir.join("conf.d/b.yaml"),
        "upstreams:
  shared: { targets: [{ addr: \"127.0.0.1:9\" }] }
routes:
  - name: home
    match: { path: /b }
    upstream: users
  - name: b2
    match: { path: /b2 }
    upstream: users
    strip_prefix: ${SECRET}
server:
  listen: [\"0.0.0.0:80\"]
",
    );
    write(
        &dir.join("teams/orders.yaml"),
        "routes:
  - name: orders
    match: { path_prefix: /api/orders }
    upstream: users
  - name: grab
    match: { path_prefix: /api/users/admin }
    upstream: users
  - name: everything
    match: { path_regex: \"/.*\" }
    upstream: users
",
    );
    let (code, err) = validate(dir, main);
    assert_eq!(code, 1, "{err}");
    let b = dir.join("conf.d/b.yaml").display().to_string();
    let o = dir.join("teams/orders.yaml").display().to_string();
    let m = dir.join("tollgate.yaml").display().to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(": error: ")).collect();
    let want = [
        format!("{m}:13:5: error: include[2]: cannot read `{}`", dir.join("conf.d/missing.yaml").display()),
        format!("{b}:2:3: error: upstreams.shared: upstream `shared` is defined twice: here and at {m}:4:3"),
        format!("{b}:4:11: error: routes[0].name: duplicate route name `home` (first used at {m}:6:11)"),
        format!("{b}:10:19: error: routes[1].strip_prefix: `${{VAR}}` is expanded in the main config file only"),
        format!("{b}:11:1: error: server: an included file defines only `routes` and `upstreams`; `server` belongs in the main file"),
        format!("{o}:6:27: error: routes[1].match.path_prefix: `/api/users/admin` is outside what the files of include[1] may route (`/api/orders`)"),
        format!("{o}:9:26: error: routes[2].match.path_regex: the files of include[1] may route only under `/api/orders`"),
        // `users` is another team's upstream (conf.d/a.yaml's): not for this entry's routes.
        format!("{o}:4:15: error: routes[0].upstream: `users` is not an upstream of the files of include[1]"),
        format!("{o}:7:15: error: routes[1].upstream: `users` is not an upstream of the files of include[1]"),
        format!("{o}:10:15: error: routes[2].upstream: `users` is not an upstream of the files of include[1]"),
    ];
    for w in &want {
        assert!(
            lines.iter().any(|l| l.starts_with(w.as_str())),
            "missing: {w}\nin:\n{err}"
        );
    }
    assert_eq!(lines.len(), want.len(), "{err}");
    // The main file's problems first, then each included file's in order.
    assert!(lines[0].starts_with(&m), "{err}");

    // Fixed, the set validates and `routes` shows every file's routes.
    let fixed_b = "routes:\n  - name: b\n    match: { path: /b }\n    upstream: users\n";
    write(&dir.join("conf.d/b.yaml"), fixed_b);
    write(
        &dir.join("teams/orders.yaml"),
        "routes:\n  - name: orders\n    match: { path_prefix: /api/orders }\n    upstream: users\n",
    );
    // ... once the entry may use it by name.
    let main = main.replace("  - conf.d/missing.yaml\n", "").replace(
        "    paths: [/api/orders]\n",
        "    paths: [/api/orders]\n    upstreams: [users]\n",
    );
    let (code, err) = validate(dir, &main);
    assert_eq!(code, 0, "{err}");
    let path = dir.join("tollgate.yaml");
    let (code, out, err) = tollgate(&["routes", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for name in ["home", "users", "b", "orders"] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} missing from:\n{out}"
        );
    }
    // `explain` follows the includes too.
    let (code, out, err) = tollgate(&[
        "explain",
        "-c",
        path.to_str().unwrap(),
        "GET",
        "http://x/api/orders/1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("orders"), "{out}");
}

#[test]
fn a_team_file_cannot_read_the_environment_through_a_merge_key() {
    // Routes brought in by a YAML merge key (`<<`) have no place of their own in the team's file:
    // the check is made on the tree, not on where a value was written.
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(
        &dir.join("conf.d/leak.yaml"),
        "upstreams:
  cee: { targets: [{ addr: \"127.0.0.1:9\" }] }
<<:
  routes:
    - name: leak
      match: { path_prefix: /leak }
      upstream: cee
      rewrite: \"/x/${HOME}\"
",
    );
    let main = "server:\n  listen: [\"127.0.0.1:0\"]\nroutes: []\ninclude:\n  - files: conf.d\n    paths: [/leak]\n";
    let (code, err) = validate(dir, main);
    assert_eq!(code, 1, "{err}");
    let leak = dir.join("conf.d/leak.yaml").display().to_string();
    assert!(
        err.lines().any(|l| l.starts_with(&leak)
            && l.contains(
                "error: routes[0].rewrite: `${VAR}` is expanded in the main config file only"
            )),
        "{err}"
    );
    let home = std::env::var("HOME").unwrap();
    assert!(!err.contains(&format!("/x/{home}")), "{err}");

    // An upstream named by a number or a tagged key would escape the checks made by name.
    write(
        &dir.join("conf.d/leak.yaml"),
        "upstreams:
  123: { targets: [{ addr: \"169.254.169.254:80\" }] }
  !t x: { targets: [{ addr: \"169.254.169.254:80\" }] }
",
    );
    let main = "server:\n  listen: [\"127.0.0.1:0\"]\nroutes: []\ninclude:\n  - files: conf.d\n    paths: [/leak]\n    targets: [10.0.0.0/8]\n";
    let (code, err) = validate(dir, main);
    assert_eq!(code, 1, "{err}");
    for name in ["`123`", "`!t x`"] {
        assert!(
            err.lines().any(|l| l.starts_with(&leak)
                && l.contains(&format!("an upstream's name is a plain string, not {name}"))),
            "{name}: {err}"
        );
    }
}

#[test]
fn an_empty_or_unreadable_included_file_is_an_error_not_an_empty_team() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    write(&dir.join("conf.d/empty.yaml"), "   \n");
    write(&dir.join("conf.d/nested.yaml"), "include: [other.yaml]\n");
    let main = "server:\n  listen: [\"127.0.0.1:0\"]\nroutes: []\ninclude: [conf.d, \"*/x/*.yaml\", tollgate.yaml]\n";
    let (code, err) = validate(dir, main);
    assert_eq!(code, 1, "{err}");
    let e = dir.join("conf.d/empty.yaml").display().to_string();
    let n = dir.join("conf.d/nested.yaml").display().to_string();
    let m = dir.join("tollgate.yaml").display().to_string();
    for w in [
        format!("{e}:1:1: error: the included file is empty"),
        format!("{n}:1:1: error: include: an included file cannot include others"),
        format!(
            "{m}:4:19: error: include[1]: `*/x/*.yaml`: a wildcard may only be in the last part"
        ),
        format!(
            "{m}:4:33: error: include[2]: `{}` is the main file itself",
            dir.join("tollgate.yaml").display()
        ),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&w)),
            "missing: {w}\nin:\n{err}"
        );
    }
}
