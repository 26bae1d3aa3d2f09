//! Day two: through the real binary what is about the process (hot reload by SIGHUP under load, and
//! refused reloads; graceful shutdown; zero-downtime upgrade; the upgrade socket's directory), in
//! process the rest (metrics, the admin API and its auth, trace context, span export).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "an-admin-token-for-tests";
const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn config(be: &Backend, extra_routes: &str) -> String {
    format!(
        "server:
  listen: [\"{{listen}}\"]
  admin: {{ listen: \"{{admin}}\", token: \"{TOKEN}\" }}
  reload: {{ watch: true, interval: 200ms }}
  upgrade_sock: \"{{dir}}/upgrade.sock\"
  shutdown: {{ timeout: 10s }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: \"{SECRET}\" }}
rate_limits:
  one: {{ requests: 1, per: 1h }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}], health_check: {{ interval: 200ms }} }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: be
    plugins: [{{ rate_limit: one }}]
  - name: open
    match: {{ path_prefix: /open }}
    upstream: be
  - name: secure
    match: {{ path_prefix: /secure }}
    upstream: be
    plugins: [{{ jwt: {{ provider: hs }} }}]
{extra_routes}",
        be.addr
    )
}

fn metrics_text(g: &Gateway) -> String {
    let r = g.admin_request("GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

#[test]
fn metrics_after_a_known_sequence() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&config(&be, ""));
    for _ in 0..3 {
        assert_eq!(g.get("/open/x").status, 200);
    }
    assert_eq!(
        request(g.addr, "POST", "/open/x", &[], Some("hi")).status,
        200
    );
    assert_eq!(g.get("/nowhere").status, 404);
    assert_eq!(g.get("/secure/x").status, 401);
    assert_eq!(
        request(
            g.addr,
            "GET",
            "/secure/x",
            &["Authorization: Bearer junk"],
            None
        )
        .status,
        401
    );
    let m = metrics_text(&g);
    let req = |route, method, status| {
        sample(
            &m,
            "tollgate_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(req("open", "GET", "200"), Some(3.0), "{m}");
    assert_eq!(req("open", "POST", "200"), Some(1.0));
    assert_eq!(req("", "GET", "404"), Some(1.0));
    assert_eq!(req("secure", "GET", "401"), Some(2.0));
    assert_eq!(
        sample(
            &m,
            "tollgate_request_duration_seconds_count",
            &[("route", "open")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_duration_seconds_count",
            &[("upstream", "be")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_auth_failures_total",
            &[("plugin", "jwt"), ("reason", "unauthenticated")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_auth_failures_total",
            &[("plugin", "jwt"), ("reason", "invalid_token")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, "tollgate_requests_in_flight", &[]), Some(0.0));
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_target_healthy",
            &[("upstream", "be"), ("target", &be.addr.to_string())]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            "tollgate_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(sample(&m, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    // Bounded labels: no raw path anywhere.
    assert!(!m.contains("/open/x") && !m.contains("/nowhere"));

    // Health goes to 0 when the target fails its checks.
    be.healthy.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_text(&g);
        let h = sample(
            &m,
            "tollgate_upstream_target_healthy",
            &[("upstream", "be")],
        );
        if h == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "target never marked unhealthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = g.admin_request("GET", "/readyz", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["upstreams"][0]["healthy"], false);
}

#[test]
fn admin_needs_its_token_and_is_never_on_the_public_port() {
    let be = Backend::start("be", Mode::Echo);
    // Last in the file, first in match order: an exact path is tried before any prefix.
    let exact = "  - name: exact
    match: { path: /open/exact, headers: { x-canary: \"1\" } }
    upstream: be
";
    let g = Gateway::in_process(&config(&be, exact));
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(g.admin_request("GET", "/healthz", &[]).status, 200);
    assert_eq!(g.admin_request("GET", "/readyz", &[]).status, 200);
    for path in [
        "/admin/routes",
        "/admin/upstreams",
        "/admin/config",
        "/admin/reload",
    ] {
        let r = g.admin_request("GET", path, &[]);
        assert_eq!(r.status, 401, "{path}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        let r = g.admin_request(
            "GET",
            path,
            &["Authorization: Bearer an-admin-token-for-testz"],
        );
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(g.admin_request("GET", path, &[&auth]).status, 200, "{path}");
    }
    assert_eq!(g.admin_request("POST", "/admin/reload", &[]).status, 401);
    // A body over the admin's 4 KiB: refused, as a JSON error that is never sniffed.
    let big = "x".repeat(5000);
    let r = request(
        g.admin,
        "POST",
        "/admin/config/rollback",
        &[&auth, "Content-Type: application/json"],
        Some(&big),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    let routes = g.admin_request("GET", "/admin/routes", &[&auth]).json();
    let names: Vec<&str> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["exact", "limited", "open", "secure"]);
    assert_eq!(routes[0]["index"], 3);
    assert_eq!(routes[0]["headers"][0], "x-canary=1");
    assert_eq!(routes[0]["path"], "= /open/exact");
    assert_eq!(routes[3]["plugins"][0], "jwt");
    let ups = g.admin_request("GET", "/admin/upstreams", &[&auth]).json();
    assert_eq!(ups["be"]["targets"][0]["healthy"], true);
    let cfg = g.admin_request("GET", "/admin/config", &[&auth]);
    let text = String::from_utf8_lossy(&cfg.body);
    assert!(
        !text.contains(SECRET) && !text.contains(TOKEN),
        "secrets leak: {text}"
    );
    assert_eq!(
        cfg.json()["config"]["auth"]["jwt"]["hs"]["secret"],
        "<redacted>"
    );

    // Nothing admin answers on the public listener.
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/admin/routes",
        "/admin/reload",
    ] {
        let r = request(g.addr, "GET", path, &[&auth], None);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "route_not_found");
    }
    let r = request(g.addr, "POST", "/admin/reload", &[&auth], None);
    assert_eq!(r.status, 404);

    // Without a configured token, /admin/* is off; health and metrics stay.
    let g2 = Gateway::in_process(&config(&be, "").replace(&format!(", token: \"{TOKEN}\""), ""));
    assert_eq!(
        g2.admin_request("GET", "/admin/routes", &[&auth]).status,
        403
    );
    assert_eq!(g2.admin_request("GET", "/metrics", &[]).status, 200);
}

/// Bounded load: `threads` clients, each a new connection per request, until `stop` or the caps.
fn load(
    addr: std::net::SocketAddr,
    path: &'static str,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Vec<std::thread::JoinHandle<Vec<String>>>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let handles = (0..threads)
        .map(|_| {
            let (ok, stop) = (ok.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 50_000 && Instant::now() < deadline {
                    n += 1;
                    let r = std::panic::catch_unwind(|| request(addr, "GET", path, &[], None));
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("status {}", r.status)),
                        Err(_) => failures.push("connection failed".into()),
                    }
                }
                failures
            })
        })
        .collect();
    (ok, handles)
}

fn wait_ok(ok: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "load made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn finish(stop: &AtomicBool, handles: Vec<std::thread::JoinHandle<Vec<String>>>) -> Vec<String> {
    stop.store(true, Ordering::Relaxed);
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn reload_under_load_drops_nothing_and_bad_files_never_replace_good_ones() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::start(&config(&be, ""));
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(g.get("/added").status, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, handles) = load(g.addr, "/open/x", 4, stop.clone());
    wait_ok(&ok, 50);
    // 1. A new route through the admin API while requests flow.
    let added = config(
        &be,
        "  - name: added\n    match: { path_prefix: /added }\n    upstream: be\n",
    )
    .replace("{listen}", &g.addr.to_string())
    .replace("{admin}", &g.admin.to_string())
    .replace("{dir}", &g.dir.path().display().to_string());
    std::fs::write(g.config_path(), &added).unwrap();
    let r = g.admin_request("POST", "/admin/reload", &[&auth]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["ok"], true);
    let before = ok.load(Ordering::Relaxed);
    wait_ok(&ok, before + 50);
    // 2. A second change picked up from the file alone, still under load.
    let second = added.replace("path_prefix: /added", "path_prefix: /added2");
    std::fs::write(g.config_path(), &second).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.get("/added2").status != 200 {
        assert!(Instant::now() < deadline, "file change not picked up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let failures = finish(&stop, handles);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(
        g.get("/added").status,
        404,
        "the old route went with the old file"
    );

    // 3. A broken file: the admin API says where, the old config keeps serving.
    let broken = second.replace(
        "upstream: be\n  - name: secure",
        "upstreem: be\n  - name: secure",
    );
    std::fs::write(g.config_path(), &broken).unwrap();
    let r = g.admin_request("POST", "/admin/reload", &[&auth]);
    assert_eq!(r.status, 422);
    let errors = r.json()["errors"].clone();
    let first = errors[0].as_str().unwrap();
    assert!(
        first.contains("tollgate.yaml:21:5: error: routes[1].upstreem: unknown field `upstreem`"),
        "{errors}"
    );
    assert_eq!(g.get("/open/x").status, 200);
    assert_eq!(g.get("/added2").status, 200);
    // The file watch and SIGHUP refuse it too, and the process stays up.
    g.signal("HUP");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(g.get("/added2").status, 200);
    let status = g.admin_request("GET", "/admin/reload", &[&auth]).json();
    assert_eq!(status["ok"], false);
    let m = metrics_text(&g);
    assert!(
        sample(
            &m,
            "tollgate_config_reloads_total",
            &[("result", "failure")]
        )
        .unwrap()
            >= 2.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "tollgate_config_reloads_total",
            &[("result", "success")]
        )
        .unwrap()
            >= 3.0
    );
    // An empty file (a truncated write) is refused the same way: every route stays.
    std::fs::write(g.config_path(), "").unwrap();
    let r = g.admin_request("POST", "/admin/reload", &[&auth]);
    assert_eq!(r.status, 422);
    assert!(
        r.json()["errors"][0]
            .as_str()
            .unwrap()
            .contains("tollgate.yaml:1:1: error: the config file is empty"),
        "{}",
        r.json()
    );
    assert_eq!(g.get("/added2").status, 200);
    // Fixed again: SIGHUP applies it.
    std::fs::write(g.config_path(), &added).unwrap();
    g.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.get("/added").status != 200 {
        assert!(Instant::now() < deadline, "SIGHUP reload not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_a_slow_request_finish() {
    let be = Backend::start("slow", Mode::Delay(1500));
    let mut g = Gateway::start(&config(&be, ""));
    let addr = g.addr;
    let slow = std::thread::spawn(move || request(addr, "GET", "/open/slow", &[], None));
    std::thread::sleep(Duration::from_millis(300));
    g.signal("TERM");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the in-flight request completed");
    assert_eq!(r.json()["backend"], "slow");
    assert_eq!(
        g.wait_exit(Duration::from_secs(15)),
        Some(0),
        "exits cleanly"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
}

/// Read one response with a `content-length` body from a keep-alive connection.
fn read_one_response(s: &mut std::net::TcpStream) -> Response {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                return parse_response(&buf);
            }
        }
    }
}

#[test]
fn shutdown_serves_connections_accepted_before_it_and_closes_idle_keepalive() {
    use std::io::{Read, Write};
    let be = Backend::start("be", Mode::Echo);
    let mut g = Gateway::start(&config(&be, ""));
    // A client that connected but has not sent its request yet when the signal comes.
    let mut fresh = std::net::TcpStream::connect(g.addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // A keep-alive client that is idle between requests.
    let mut idle = std::net::TcpStream::connect(g.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    idle.write_all(b"GET /open/1 HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    assert_eq!(read_one_response(&mut idle).status, 200);
    std::thread::sleep(Duration::from_millis(300));

    g.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        g.wait_exit(Duration::ZERO).is_none(),
        "still waiting for the accepted client"
    );
    fresh
        .write_all(b"GET /open/late HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    let r = read_one_response(&mut fresh);
    assert_eq!(r.status, 200, "the accepted connection is served");
    assert_eq!(r.header("connection"), Some("close"), "and told to go");
    // Once nobody is waiting to send a first request, idle keep-alive connections are closed.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "idle closed");
    assert_eq!(
        g.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        g.stderr_text()
    );
}

#[test]
fn upgrade_hands_over_the_sockets_under_load() {
    let be = Backend::start("be", Mode::Echo);
    let mut old = Gateway::start(&config(&be, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, handles) = load(old.addr, "/open/x", 4, stop.clone());
    wait_ok(&ok, 50);

    let mut new = old.start_upgrade();
    let sock = old.dir.path().join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never opened the upgrade socket: {}",
            new.stderr_text()
        );
        assert!(
            new.wait_exit(Duration::ZERO).is_none(),
            "new process died: {}",
            new.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    old.signal("QUIT");
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "old process exits after handing over: {}",
        old.stderr_text()
    );
    // Traffic goes on, now served by the new process alone.
    let before = ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::Relaxed) < before + 100 {
        assert!(
            Instant::now() < deadline,
            "no progress after the upgrade ({} ok); new process: {}",
            ok.load(Ordering::Relaxed),
            new.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let failures = finish(&stop, handles);
    assert!(
        failures.is_empty(),
        "{} requests failed across the upgrade: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        new.wait_exit(Duration::ZERO).is_none(),
        "the new process serves"
    );
    assert_eq!(new.get("/open/x").status, 200);
    assert_eq!(
        new.admin_request("GET", "/healthz", &[]).status,
        200,
        "the admin socket came along"
    );
}

/// Without `upgrade_sock`, the socket lives in a directory of the gateway's own (here
/// `$XDG_RUNTIME_DIR/tollgate`), created with mode 0700 when the gateway starts, and the upgrade goes
/// through it.
#[test]
fn the_default_upgrade_socket_is_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let be = Backend::start("be", Mode::Echo);
    let runtime = tempfile::tempdir().unwrap();
    let env = [("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())];
    let mut old = Gateway::start_with_env(
        &format!(
            "server: {{ listen: [\"{{listen}}\"] }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: open, match: {{ path_prefix: / }}, upstream: be }}
",
            be.addr
        ),
        &env,
    );
    let dir = runtime.path().join("tollgate");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700, "{}", old.stderr_text());
    assert_eq!(old.get("/x").status, 200);

    let mut new = old.start_upgrade_with_env(&env);
    let sock = dir.join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never opened {}: {}",
            sock.display(),
            new.stderr_text()
        );
        assert!(
            new.wait_exit(Duration::ZERO).is_none(),
            "new process died: {}",
            new.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    old.signal("QUIT");
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        old.stderr_text()
    );
    assert_eq!(new.get("/x").status, 200, "{}", new.stderr_text());
}

/// Run `tollgate run` on `config` until it exits (at most 10 s): its exit code and stderr.
fn run_to_exit(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, config).unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(bin())
        .args(["run", "-c", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&stderr).unwrap_or_default())
}

/// An upgrade socket in a directory that someone else could write to, or that belongs to someone
/// else, is refused at start with the reason; `validate` has nothing to say about it.
#[test]
fn an_upgrade_socket_in_a_shared_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let config = |sock: Option<&std::path::Path>| {
        let sock = sock
            .map(|p| format!(", upgrade_sock: \"{}\"", p.display()))
            .unwrap_or_default();
        format!(
            "server: {{ listen: [\"127.0.0.1:{}\"], admin: {{ enabled: false }}{sock} }}
upstreams:
  be: {{ targets: [{{ addr: \"127.0.0.1:1\" }}] }}
routes: []
",
            free_port()
        )
    };
    // Configured, in a folder like /tmp (world-writable, sticky).
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let text = config(Some(&shared.path().join("up.sock")));
    let (code, err) = run_to_exit(&text, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("server.upgrade_sock") && err.contains("group- or world-writable (mode 1777)"),
        "{err}"
    );
    let file = shared.path().join("t.yaml");
    std::fs::write(&file, &text).unwrap();
    let (code, out, _) = tollgate(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 0, "validate does not look at the machine: {out}");

    // The default, when its directory was made by someone else first, group-writable.
    let runtime = tempfile::tempdir().unwrap();
    let dir = runtime.path().join("tollgate");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let env = [("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())];
    let (code, err) = run_to_exit(&config(None), &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("mode 0770"), "{err}");

    // Another user's directory (only root can make one to try).
    if tollgate::upgrade::effective_uid().unwrap() == 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let (code, err) = run_to_exit(&config(None), &env);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("belongs to uid 65534"), "{err}");
    }
}

#[test]
fn trace_context_is_propagated_or_started() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&config(&be, ""));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(
        g.addr,
        "GET",
        "/open/x",
        &[&format!("traceparent: {incoming}"), "tracestate: vendor=1"],
        None,
    );
    let tp = r.upstream_header("traceparent").unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(tp, incoming, "the gateway is a hop of its own");
    assert_eq!(r.upstream_header("tracestate").as_deref(), Some("vendor=1"));
    let rid = r.header("x-request-id").unwrap().to_string();
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some(rid.as_str())
    );
    let line = g.wait_log(|l| l["request_id"] == rid.as_str());
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let r = g.get("/open/y");
    let tp = r.upstream_header("traceparent").unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[1].len(), parts[2].len()),
        (4, "00", 32, 16),
        "{tp}"
    );
    let r = request(g.addr, "GET", "/open/z", &["traceparent: 00-garbage"], None);
    assert_ne!(r.upstream_header("traceparent").unwrap(), "00-garbage");
}

#[test]
fn spans_are_exported_to_an_otlp_collector() {
    let be = Backend::start("be", Mode::Echo);
    let collector = StaticServer::start(200, "{}");
    let g = Gateway::in_process(&format!(
        "{}tracing: {{ otlp_endpoint: \"http://{}/v1/traces\", service_name: edge }}\n",
        config(&be, ""),
        collector.addr
    ));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(
        g.addr,
        "GET",
        "/open/x",
        &[&format!("traceparent: {incoming}")],
        None,
    );
    let ours = r.upstream_header("traceparent").unwrap();
    let our_span = ours.split('-').nth(2).unwrap().to_string();
    // Not sampled by the caller: not exported.
    let unsampled = "00-11111111111111111111111111111111-00f067aa0ba902b7-00";
    assert_eq!(
        request(
            g.addr,
            "GET",
            "/open/y",
            &[&format!("traceparent: {unsampled}")],
            None
        )
        .status,
        200
    );
    assert_eq!(g.get("/secure/x").status, 401);

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<serde_json::Value> = collector
            .bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                assert_eq!(
                    v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
                    "edge"
                );
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if spans.len() >= 2 {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans never arrived: {spans:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        spans.len(),
        2,
        "the unsampled request is not exported: {spans:?}"
    );
    let attr = |s: &serde_json::Value, k: &str| {
        s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
    };
    let open = spans.iter().find(|s| s["name"] == "GET open").unwrap();
    assert_eq!(open["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        open["parentSpanId"], "00f067aa0ba902b7",
        "the caller's span"
    );
    assert_eq!(
        open["spanId"],
        our_span.as_str(),
        "the span the upstream was told about"
    );
    assert_eq!(open["kind"], 2);
    assert_eq!(
        attr(open, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert_eq!(attr(open, "url.path").unwrap()["stringValue"], "/open/x");
    assert_eq!(
        attr(open, "tollgate.target").unwrap()["stringValue"],
        be.addr.to_string()
    );
    let start: u128 = open["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = open["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && start > 1_700_000_000_000_000_000);
    // A new trace (no traceparent) started by the gateway: no parent.
    let secure = spans.iter().find(|s| s["name"] == "GET secure").unwrap();
    assert!(secure.get("parentSpanId").is_none());
    assert_eq!(
        attr(secure, "http.response.status_code").unwrap()["intValue"],
        "401"
    );

    // A failing collector costs the spans (counted), never the requests.
    collector.set(500, "{}");
    assert_eq!(g.get("/open/z").status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&metrics_text(&g), "tollgate_trace_spans_dropped_total", &[]) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the dropped span was not counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `tollgate_*` metric the shipped Grafana dashboard queries exists in `/metrics`.
#[test]
fn the_grafana_dashboard_uses_real_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/grafana-dashboard.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&config(&be, ""));
    assert_eq!(g.get("/open/x").status, 200);
    assert_eq!(g.get("/secure/x").status, 401);
    assert_eq!(g.get("/limited").status, 200);
    assert_eq!(g.get("/limited").status, 429);
    let m = metrics_text(&g);
    let mut checked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("tollgate_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = name.trim_end_matches("_bucket");
                assert!(
                    m.contains(&format!("# TYPE {base} ")),
                    "the dashboard uses `{name}`, which /metrics lacks"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked}");
    // Provisioning from a file needs the data source as a template variable (`__inputs` only works
    // for an import through the UI), and every panel and query to use it.
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no datasource variable"
    );
    assert!(dash.get("__inputs").is_none());
    for p in dash["panels"].as_array().unwrap() {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
}

/// Background work belongs to the snapshot: a reload that removes an upstream stops its health checks,
/// and the upstream that stays keeps being checked by the new snapshot's tasks.
#[test]
fn a_reload_that_removes_an_upstream_stops_its_health_checks() {
    let kept = Backend::start("kept", Mode::Echo);
    let gone = Backend::start("gone", Mode::Echo);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  kept: {{ targets: [{{ addr: "{}" }}], health_check: {{ path: /healthz, interval: 50ms }} }}
  gone: {{ targets: [{{ addr: "{}" }}], health_check: {{ path: /healthz, interval: 50ms }} }}
routes:
  - {{ name: kept, match: {{ path_prefix: /kept }}, upstream: kept }}
  - {{ name: gone, match: {{ path_prefix: /gone }}, upstream: gone }}
"#,
        kept.addr, gone.addr
    );
    let g = Gateway::in_process(&cfg);
    let probes = |b: &Backend| b.probes.load(Ordering::Relaxed);
    // Waits for `b` to be probed `more` times (each probe is one `interval` apart, so this is a clock
    // that runs at the health checks' pace, not a sleep).
    let wait_probes = |b: &Backend, more: usize| {
        let want = probes(b) + more;
        let deadline = Instant::now() + Duration::from_secs(10);
        while probes(b) < want {
            assert!(
                Instant::now() < deadline,
                "{} got {} probes, waiting for {want}",
                b.name,
                probes(b)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_probes(&gone, 3);
    wait_probes(&kept, 3);
    g.reload(|text| {
        text.lines()
            .filter(|l| !l.contains("gone"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert_eq!(g.get("/gone").status, 404, "the reload removed the route");
    let at_reload = probes(&gone);
    // Twenty more probes of the upstream that stays: twenty intervals in which the removed one would
    // have been probed as often, had its checks kept running.
    wait_probes(&kept, 20);
    // A probe may have been on its way when the reload was applied, and one more pass may have started
    // before the old snapshot's tasks were dropped (that happens on another thread, just after).
    assert!(
        probes(&gone) <= at_reload + 2,
        "the removed upstream was still probed: {} probes after the reload, {at_reload} at it",
        probes(&gone)
    );
    assert_eq!(g.get("/kept").status, 200);
}

/// SIGTERM after N requests: the access log has N lines when the process has exited (the writer
/// writes out what it holds and stops before the exit); the drop counter is a metric.
#[test]
fn sigterm_writes_out_every_access_log_line_before_exiting() {
    let be = Backend::start("be", Mode::Echo);
    let mut g = Gateway::start(&config(&be, ""));
    let m = metrics_text(&g);
    assert!(
        m.contains("# TYPE tollgate_access_log_dropped_total counter"),
        "{m}"
    );
    assert_eq!(
        sample(&m, "tollgate_access_log_dropped_total", &[]),
        Some(0.0)
    );
    const N: usize = 300;
    for i in 0..N {
        assert_eq!(g.get(&format!("/open/{i}")).status, 200);
    }
    g.signal("TERM");
    assert_eq!(
        g.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        g.stderr_text()
    );
    let lines = g.access_log();
    let paths: std::collections::BTreeSet<String> = lines
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_string))
        .collect();
    assert_eq!(lines.len(), N, "{}", g.stderr_text());
    for i in 0..N {
        assert!(
            paths.contains(&format!("/open/{i}")),
            "no line for /open/{i}"
        );
    }
}

/// The same with a log that cannot keep up: the access log is a pipe whose reader (a stalled disk)
/// only starts reading a second after SIGTERM, when more lines are waiting than the pipe holds. The
/// process waits for the writer to hand over every line before it exits (it used to exit 250 ms
/// after the last request, with whatever was still unwritten).
#[test]
fn sigterm_waits_for_a_slow_access_log_to_take_every_line() {
    let be = Backend::start("be", Mode::Echo);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            // Opens when the gateway opens the pipe (its first line); reads once told to, until the
            // gateway's end closes (it exited).
            let mut pipe = std::fs::File::open(&fifo).unwrap();
            wait_go.recv().unwrap();
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let cfg = config(&be, "").replace(
        "  shutdown: { timeout: 10s }\n",
        &format!(
            "  shutdown: {{ timeout: 10s }}\n  access_log: {{ path: \"{}\" }}\n",
            fifo.display()
        ),
    );
    let mut g = Gateway::start(&cfg);
    // About 300 bytes a line: 400 lines are more than a pipe holds (64 KiB), so the writer is stuck.
    const N: usize = 400;
    for i in 0..N {
        assert_eq!(g.get(&format!("/open/{i}")).status, 200);
    }
    g.signal("TERM");
    // The stalled disk: nothing is read for a second (the gateway must wait for it, not for a clock).
    std::thread::sleep(Duration::from_secs(1));
    go.send(()).unwrap();
    let text = reader.join().unwrap();
    assert_eq!(
        g.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        g.stderr_text()
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), N, "{}", g.stderr_text());
    assert!(
        text.len() > 64 * 1024,
        "the test did not fill the pipe ({} bytes): make N larger",
        text.len()
    );
}

/// Three versions applied, then a rollback to the first under load: the versions are listed with what
/// each changed, `/admin/config` shows the served config (not the file), and not one request fails.
#[test]
fn a_rollback_under_load_serves_the_first_version_again_without_a_failed_request() {
    let be = Backend::start("be", Mode::Echo);
    let cfg = format!(
        "server:\n  listen: [\"{{listen}}\"]\n  admin: {{ listen: \"{{admin}}\", token: \"{TOKEN}\" }}\n  reload: {{ watch: false }}\nupstreams:\n  be: {{ targets: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: v1, match: {{ path_prefix: / }}, upstream: be }}\n",
        be.addr
    );
    let g = Gateway::in_process(&cfg);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let reload = |g: &Gateway, from: &str, to: &str| {
        let text = std::fs::read_to_string(g.config_path()).unwrap();
        std::fs::write(g.config_path(), text.replace(from, to)).unwrap();
        let r = g.admin_request("POST", "/admin/reload", &[&auth]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    let route_of = |g: &Gateway| {
        let rid = format!("probe-{}", fastrand_id());
        let r = request(
            g.addr,
            "GET",
            "/x",
            &[&format!("X-Request-Id: {rid}")],
            None,
        );
        assert_eq!(r.status, 200);
        g.wait_log(|l| l["request_id"] == rid.as_str())["route"]
            .as_str()
            .unwrap()
            .to_string()
    };
    reload(&g, "name: v1", "name: v2");
    reload(&g, "name: v2", "name: v3");
    // A broken file is refused and recorded; the file now differs from what is served.
    reload_refused(&g, &auth);
    assert_eq!(route_of(&g), "v3");
    let v = g
        .admin_request("GET", "/admin/config/versions", &[&auth])
        .json();
    assert_eq!(v["current"], 3, "{v}");
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "{v}");
    assert_eq!(versions[0]["outcome"], "refused");
    assert!(
        versions[0]["errors"][0]
            .as_str()
            .unwrap()
            .contains("tollgate.yaml"),
        "{v}"
    );
    assert_eq!(versions[1]["version"], 3);
    let routes = versions[1]["changes"]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{v}");
    assert!(
        routes.iter().any(|c| c["kind"] == "+" && c["name"] == "v3"),
        "{v}"
    );
    assert!(
        routes.iter().any(|c| c["kind"] == "-" && c["name"] == "v2"),
        "{v}"
    );
    assert_eq!(versions[3]["trigger"], "start");
    assert_ne!(versions[1]["hash"], versions[3]["hash"]);
    let served = g.admin_request("GET", "/admin/config", &[&auth]).json();
    assert_eq!(served["version"], 3);
    assert_eq!(
        served["config"]["routes"][0]["name"], "v3",
        "the served config, not the file"
    );

    // Load on keep-alive connections while rolling back to version 1.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = g.addr;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, 0u32);
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let r = request(addr, "GET", "/load", &[], None);
                    if r.status == 200 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = g.admin_request(
        "POST",
        "/admin/config/rollback",
        &[&auth, "Content-Type: application/json"],
    );
    assert_eq!(r.status, 400, "a version is required");
    let r = common::request(
        g.admin,
        "POST",
        "/admin/config/rollback",
        &[&auth],
        Some("{\"version\": 99}"),
    );
    assert_eq!(r.status, 404);
    let r = common::request(
        g.admin,
        "POST",
        "/admin/config/rollback",
        &[&auth],
        Some("{\"version\": 1}"),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.join().unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 50, "the load ran: {ok}");
    assert_eq!(failed, 0, "no request failed during the rollback");
    assert_eq!(route_of(&g), "v1");
    let v = g
        .admin_request("GET", "/admin/config/versions", &[&auth])
        .json();
    assert_eq!(v["current"], 5);
    assert_eq!(v["versions"][0]["trigger"], "rollback");
    assert_eq!(v["versions"][0]["rollback_to"], 1);
    assert_eq!(
        v["versions"][0]["hash"], v["versions"][4]["hash"],
        "the same text as version 1"
    );
    let served = g.admin_request("GET", "/admin/config", &[&auth]).json();
    assert_eq!(served["config"]["routes"][0]["name"], "v1");
}

fn reload_refused(g: &Gateway, auth: &str) {
    let text = std::fs::read_to_string(g.config_path()).unwrap();
    std::fs::write(
        g.config_path(),
        text.replace("upstream: be", "upstream: nope"),
    )
    .unwrap();
    let r = g.admin_request("POST", "/admin/reload", &[auth]);
    assert_eq!(r.status, 422);
}

fn fastrand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_user_agent_that_is_not_ascii_is_logged_as_sent() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&config(&be, ""));
    // UTF-8 (é) and a byte that is not UTF-8 (0xff): HTTP allows both in a field value (obs-text).
    // No route: the gateway answers itself (the test upstream reads heads as UTF-8 text).
    let mut raw =
        b"GET /no-such-route HTTP/1.1\r\nHost: test.local\r\nX-Request-Id: ua-1\r\nUser-Agent: caf"
            .to_vec();
    raw.extend_from_slice("é".as_bytes());
    raw.extend_from_slice(b" \xff\r\nConnection: close\r\n\r\n");
    assert_eq!(send(g.addr, &raw).status, 404);
    let line = g.wait_log(|l| l["request_id"] == "ua-1");
    assert_eq!(line["user_agent"], "café \\xff");
}

#[test]
fn counters_known_from_the_config_are_exported_at_zero_from_the_start_and_after_a_reload() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&config(&be, ""));
    let m = metrics_text(&g);
    let zero = |m: &str, name, labels: &[(&str, &str)]| {
        assert_eq!(sample(m, name, labels), Some(0.0), "{name} {labels:?}\n{m}");
    };
    zero(
        &m,
        "tollgate_ratelimit_rejections_total",
        &[("policy", "one")],
    );
    zero(
        &m,
        "tollgate_ratelimit_store_errors_total",
        &[("policy", "one")],
    );
    for reason in ["unauthenticated", "invalid_token", "insufficient_scope"] {
        zero(
            &m,
            "tollgate_auth_failures_total",
            &[("plugin", "jwt"), ("reason", reason)],
        );
    }
    // Not in the config: no series.
    assert_eq!(
        sample(
            &m,
            "tollgate_ratelimit_rejections_total",
            &[("policy", "two")]
        ),
        None
    );
    assert!(!m.contains("plugin=\"ip_filter\""), "{m}");
    // A reload adds a policy and a plugin: their series are there before any request.
    g.reload(|c| {
        c.replace(
            "rate_limits:\n",
            "rate_limits:\n  two: { requests: 5, per: 1m }\n",
        )
        .replace(
            "routes:\n",
            "routes:\n  - name: two\n    match: { path_prefix: /two }\n    upstream: be\n    plugins: [{ rate_limit: two }, { ip_filter: { deny: [\"10.0.0.0/8\"] } }]\n",
        )
    });
    let m = metrics_text(&g);
    zero(
        &m,
        "tollgate_ratelimit_rejections_total",
        &[("policy", "two")],
    );
    zero(
        &m,
        "tollgate_ratelimit_store_errors_total",
        &[("policy", "two")],
    );
    zero(
        &m,
        "tollgate_auth_failures_total",
        &[("plugin", "ip_filter"), ("reason", "ip_forbidden")],
    );
    // And a real failure counts on the same series.
    assert_eq!(g.get("/secure/x").status, 401);
    assert_eq!(
        sample(
            &metrics_text(&g),
            "tollgate_auth_failures_total",
            &[("plugin", "jwt"), ("reason", "unauthenticated")]
        ),
        Some(1.0)
    );
}

#[test]
fn the_access_log_has_host_query_span_upstream_status_and_the_principal_of_a_403() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let be = Backend::start("be", Mode::Echo);
    let teapot = StaticServer::start(418, "{}");
    let extra = "  - name: scoped
    match: { path_prefix: /scoped }
    upstream: be
    plugins: [{ jwt: { provider: hs, scopes: [admin] } }]
  - name: teapot
    match: { path_prefix: /teapot }
    upstream: tea
  - name: tokened
    match: { path_prefix: /tokened }
    upstream: be
    plugins: [{ jwt: { provider: hq } }]
";
    let cfg = config(&be, extra)
        .replace(
            "upstreams:\n",
            &format!(
                "upstreams:\n  tea: {{ targets: [{{ addr: \"{}\" }}] }}\n",
                teapot.addr
            ),
        )
        .replace(
            "  jwt:\n",
            &format!("  jwt:\n    hq: {{ algorithms: [HS256], secret: \"{SECRET}\", query: access_token }}\n"),
        );
    let g = Gateway::in_process(&cfg);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = g.send(&format!(
        "GET /open/x?a=1&b=%C3%A9 HTTP/1.1\r\nHost: API.example.com:8080\r\nX-Request-Id: log-1\r\ntraceparent: {tp}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    // The span id the gateway sent upstream is the one logged.
    let sent = r.upstream_header("traceparent").unwrap();
    let l = g.wait_log(|l| l["request_id"] == "log-1");
    assert_eq!(l["host"], "API.example.com:8080");
    assert_eq!(l["query"], "a=1&b=%C3%A9");
    assert_eq!(l["path"], "/open/x");
    assert_eq!(l["upstream_status"], 200);
    assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let span = l["span_id"].as_str().unwrap();
    assert_eq!(span.len(), 16);
    assert_ne!(
        span, "00f067aa0ba902b7",
        "the gateway's own span, not the caller's"
    );
    assert_eq!(sent.split('-').nth(2), Some(span), "{sent}");

    // No query: null; the gateway's own answer: no upstream status.
    assert_eq!(
        request(g.addr, "GET", "/nowhere", &["X-Request-Id: log-2"], None).status,
        404
    );
    let l = g.wait_log(|l| l["request_id"] == "log-2");
    assert!(
        l["query"].is_null() && l["upstream_status"].is_null(),
        "{l}"
    );
    assert_eq!(l["host"], "test.local");

    // The upstream's own status.
    assert_eq!(
        request(g.addr, "GET", "/teapot", &["X-Request-Id: log-3"], None).status,
        418
    );
    let l = g.wait_log(|l| l["request_id"] == "log-3");
    assert_eq!(
        (l["status"].clone(), l["upstream_status"].clone()),
        (418.into(), 418.into())
    );

    // A valid token without the scope: 403, and who it was is logged.
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "scope": "read", "exp": jsonwebtoken::get_current_timestamp() + 300 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let r = request(
        g.addr,
        "GET",
        "/scoped",
        &[&auth, "X-Request-Id: log-4"],
        None,
    );
    assert_eq!(r.status, 403);
    let l = g.wait_log(|l| l["request_id"] == "log-4");
    assert_eq!(l["principal"], "alice", "{l}");
    assert!(l["upstream_status"].is_null());
    // A bad token: no principal.
    let r = request(
        g.addr,
        "GET",
        "/scoped",
        &["Authorization: Bearer junk", "X-Request-Id: log-5"],
        None,
    );
    assert_eq!(r.status, 401);
    let l = g.wait_log(|l| l["request_id"] == "log-5");
    assert!(l.get("principal").is_none(), "{l}");

    // A token in the query is not written to the log: the query is logged as it went upstream.
    let r = request(
        g.addr,
        "GET",
        &format!("/tokened/x?a=1&access_token={token}&b=2"),
        &["X-Request-Id: log-6"],
        None,
    );
    assert_eq!(r.status, 200);
    let l = g.wait_log(|l| l["request_id"] == "log-6");
    assert_eq!(l["query"], "a=1&b=2", "{l}");
    // Refused too (a bad token), and a query of nothing but the token: none logged.
    let r = request(
        g.addr,
        "GET",
        "/tokened/x?access_token=not-a-token-secret",
        &["X-Request-Id: log-7"],
        None,
    );
    assert_eq!(r.status, 401);
    let l = g.wait_log(|l| l["request_id"] == "log-7");
    assert!(l["query"].is_null(), "{l}");
    let log: String = g.access_log().iter().map(|l| l.to_string()).collect();
    assert!(
        !log.contains(&token) && !log.contains("not-a-token-secret"),
        "a token reached the access log"
    );
}

#[test]
fn the_gateways_own_log_can_be_json_lines_and_rust_log_still_filters() {
    let be = Backend::start("be", Mode::Echo);
    for (env, args) in [
        (
            vec![("TOLLGATE_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
            vec!["run", "-c"],
        ),
        (
            vec![("RUST_LOG", "info")],
            vec!["run", "--log-format", "json", "-c"],
        ),
    ] {
        let mut g =
            Gateway::start_program_env(std::path::Path::new(bin()), &args, &config(&be, ""), &env);
        g.signal("TERM");
        assert_eq!(g.wait_exit(Duration::from_secs(15)), Some(0));
        let text = g.stderr_text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{text}")))
            .collect();
        assert!(lines.len() >= 2, "{text}");
        for l in &lines {
            for k in ["ts", "level", "target", "message"] {
                assert!(l[k].is_string(), "{k} in {l}");
            }
            assert!(l["ts"].as_str().unwrap().ends_with('Z'));
        }
        assert!(
            lines.iter().any(|l| l["level"] == "INFO"
                && l["target"].as_str().unwrap().starts_with("tollgate")
                && l["message"].as_str().unwrap().contains("listening on")),
            "{text}"
        );
    }
    // RUST_LOG=warn: no info line at all.
    let mut g = Gateway::start_program_env(
        std::path::Path::new(bin()),
        &["run", "-c"],
        &config(&be, ""),
        &[("TOLLGATE_LOG_FORMAT", "json"), ("RUST_LOG", "warn")],
    );
    g.signal("TERM");
    assert_eq!(g.wait_exit(Duration::from_secs(15)), Some(0));
    let text = g.stderr_text();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_ne!(v["level"], "INFO", "{text}");
    }
}

#[test]
fn sigusr1_reopens_the_access_log_after_logrotate_renamed_it() {
    let be = Backend::start("be", Mode::Echo);
    let cfg = config(&be, "").replace(
        "  shutdown: { timeout: 10s }\n",
        "  shutdown: { timeout: 10s }\n  access_log: { path: \"{dir}/access.log\" }\n",
    );
    let mut g = Gateway::start(&cfg);
    let path = g.dir.path().join("access.log");
    let rotated = g.dir.path().join("access.log.1");
    let ids = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["request_id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for i in 0..20 {
        let id = format!("X-Request-Id: old-{i}");
        assert_eq!(request(g.addr, "GET", "/open/x", &[&id], None).status, 200);
    }
    wait_for("the first lines written", &|| ids(&path).len() == 20);
    // logrotate: rename, then `postrotate kill -USR1`.
    std::fs::rename(&path, &rotated).unwrap();
    g.signal("USR1");
    wait_for("the log reopened", &|| path.exists());
    for i in 0..20 {
        let id = format!("X-Request-Id: new-{i}");
        assert_eq!(request(g.addr, "GET", "/open/x", &[&id], None).status, 200);
    }
    g.signal("TERM");
    assert_eq!(
        g.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        g.stderr_text()
    );
    let old: Vec<String> = (0..20).map(|i| format!("old-{i}")).collect();
    let new: Vec<String> = (0..20).map(|i| format!("new-{i}")).collect();
    assert_eq!(
        ids(&rotated),
        old,
        "the renamed file keeps the old lines, once"
    );
    assert_eq!(ids(&path), new, "the new file has the new lines, once");
    // The reopened file is appended to like the first one (0644 less the umask, not executable).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o133, 0, "{mode:o}");
    assert_eq!(
        mode,
        std::fs::metadata(&rotated).unwrap().permissions().mode() & 0o777
    );
}
