//! The in-process layer itself (`tollgate::server::spawn_in_process`, `Gateway::in_process`): it serves
//! on the listeners bound before start, several gateways in one process keep apart what is theirs
//! (metrics, access log, log lines), the admin API reloads in process, and stopping releases the ports
//! and the threads.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "an-admin-token-for-tests";

fn config(be: &Backend, extra: &str) -> String {
    format!(
        "server: {{ listen: [\"{{listen}}\"], threads: 1 }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
{extra}routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: be }}
",
        be.addr
    )
}

/// The value of `tollgate_requests_total` for route `all`, GET, 200.
fn served(g: &Gateway) -> f64 {
    let m = g.admin_request("GET", "/metrics", &[]);
    String::from_utf8_lossy(&m.body)
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{"))
        .filter(|l| l.contains("route=\"all\"") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `spawn_in_process` straight, without the harness: `config(be)` with `server_extra` added to
/// `server` (and the access log in a file: stdout is the test's), then `edit`ed, on `listeners`. The
/// config's own address (`127.0.0.1:1`) is not bound: the listeners stand for it.
fn spawn(
    be: &Backend,
    server_extra: &str,
    edit: impl FnOnce(String) -> String,
    listeners: tollgate::server::Listeners,
) -> Result<(tollgate::server::Running, tempfile::TempDir), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.yaml");
    let log = dir.path().join("access.log");
    let text = config(be, "").replace("{listen}", "127.0.0.1:1").replace(
        "threads: 1 }",
        &format!(
            "threads: 1{server_extra}, access_log: {{ path: \"{}\" }} }}",
            log.display()
        ),
    );
    std::fs::write(&path, edit(text)).unwrap();
    let registry = Arc::new(tollgate::plugin::Registry::builtin());
    tollgate::server::spawn_in_process(path.to_str().unwrap(), registry, listeners)
        .map(|running| (running, dir))
}

fn get_x(addr: std::net::SocketAddr) -> Response {
    send(
        addr,
        b"GET /x HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    )
}

#[test]
fn the_gateway_serves_on_the_listeners_bound_before_it_started() {
    let be = Backend::start("be", Mode::Echo);
    let listeners = tollgate::server::Listeners::loopback(true, false).unwrap();
    let addr = listeners.proxy.local_addr().unwrap();
    let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
    let (running, _dir) = spawn(&be, "", |t| t, listeners).unwrap();
    assert_eq!((running.addr, running.admin), (addr, Some(admin)));
    // No wait: the sockets listen since `bind`, so a connection made now is served once Pingora runs.
    let r = get_x(addr);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "be");
    assert_eq!(
        request(admin, "GET", "/healthz", &[], None).status,
        200,
        "the admin listener too"
    );
    running.stop();
}

#[test]
fn a_listener_for_what_the_config_does_not_have_is_closed() {
    let be = Backend::start("be", Mode::Echo);
    let listeners = tollgate::server::Listeners::loopback(true, true).unwrap();
    let addr = listeners.proxy.local_addr().unwrap();
    let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
    let tls = listeners.tls.as_ref().unwrap().local_addr().unwrap();
    // No `server.tls`, and the admin listener switched off.
    let (running, _dir) = spawn(&be, ", admin: { enabled: false }", |t| t, listeners).unwrap();
    assert_eq!((running.admin, running.tls), (None, None));
    // Closed before `spawn_in_process` returned: nothing listens there.
    for unused in [admin, tls] {
        assert!(TcpStream::connect(unused).is_err(), "{unused} listens");
    }
    assert_eq!(get_x(addr).status, 200);
    running.stop();
}

#[test]
fn a_config_that_does_not_load_is_an_error_not_an_exit() {
    let be = Backend::start("be", Mode::Echo);
    let listeners = tollgate::server::Listeners::loopback(false, false).unwrap();
    // A route without `match`: the problem with its place, returned; the test process lives on.
    let no_match = |t: String| t.replace("match: { path_prefix: / }, ", "");
    let e = spawn(&be, "", no_match, listeners)
        .err()
        .expect("an invalid config does not start");
    assert!(e.contains("tollgate.yaml:5:"), "{e}");
}

#[test]
fn two_gateways_in_one_process_keep_their_metrics_logs_and_access_logs_apart() {
    let one = Backend::start("one", Mode::Echo);
    let two = Backend::start("two", Mode::Echo);
    // A name that does not resolve: a warning in the log of the gateway that has it, only.
    let broken = "  named: { targets: [{ addr: \"no-such-host.invalid:80\" }] }\n";
    let g1 = Gateway::in_process(&config(&one, ""));
    let g2 = Gateway::in_process(
        &config(&two, "").replace("upstreams:\n", &format!("upstreams:\n{broken}")),
    );
    for _ in 0..3 {
        assert_eq!(g1.get("/a").json()["backend"], "one");
    }
    assert_eq!(g2.get("/b").json()["backend"], "two");
    assert_eq!(
        (served(&g1), served(&g2)),
        (3.0, 1.0),
        "metrics per gateway"
    );
    let paths = |g: &Gateway, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = g.access_log();
            if log.len() >= n {
                return log
                    .iter()
                    .map(|l| l["path"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>();
            }
            assert!(Instant::now() < deadline, "{log:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(paths(&g1, 3), ["/a", "/a", "/a"], "access log per gateway");
    assert_eq!(paths(&g2, 1), ["/b"]);
    assert!(
        g2.stderr_text()
            .contains("cannot resolve `no-such-host.invalid:80`"),
        "{}",
        g2.stderr_text()
    );
    assert!(
        !g1.stderr_text().contains("no-such-host"),
        "log lines per gateway: {}",
        g1.stderr_text()
    );
    assert_eq!(g1.handle().tag, g1.addr.to_string());
}

#[test]
fn the_admin_api_reloads_in_process() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&config(&be, "").replace(
        "threads: 1 }",
        &format!("threads: 1, admin: {{ listen: \"{{admin}}\", token: \"{TOKEN}\" }} }}"),
    ));
    assert_eq!(g.get("/x").status, 200);
    let text = std::fs::read_to_string(g.config_path()).unwrap();
    std::fs::write(
        g.config_path(),
        text.replace("path_prefix: / }", "path_prefix: /only }"),
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = g.admin_request("POST", "/admin/reload", &[&auth]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["ok"], true, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(g.get("/x").status, 404, "the reloaded config serves");
    assert_eq!(g.get("/only/x").status, 200);
    let status = g.admin_request("GET", "/admin/reload", &[&auth]).json();
    assert_eq!(status["trigger"], "admin");
}

#[test]
fn stopping_closes_the_listeners_and_the_port_can_be_bound_again() {
    let be = Backend::start("be", Mode::Echo);
    let mut g = Gateway::in_process(&config(&be, ""));
    assert_eq!(g.get("/x").status, 200);
    let hits = be.hits.load(Ordering::Relaxed);
    g.stop();
    // `stop` returns once Pingora's runtimes are shut down; the kernel closes the sockets as the
    // runtimes drop their tasks. Bounded wait for that, then the port is free for anyone.
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in [g.addr, g.admin] {
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < deadline, "{addr} still accepts");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    TcpListener::bind(g.addr).expect("the proxy's port is released");
    TcpListener::bind(g.admin).expect("the admin port is released");
    assert_eq!(be.hits.load(Ordering::Relaxed), hits);
    // What was served before the stop is in the access log: the stop writes it out.
    assert_eq!(g.access_log().len(), 1);
}

/// Threads of this process now (`Threads:` in /proc/self/status).
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `stop` joins what the gateway started: its runtimes, the reload's runtime, the access-log writer.
#[test]
fn a_stopped_gateway_leaves_no_thread_behind() {
    let be = Backend::start("be", Mode::Echo);
    // One gateway first: what stays for the process's lifetime (Pingora's timer thread, the logger)
    // is started by then.
    let mut g = Gateway::in_process(&config(&be, ""));
    assert_eq!(g.get("/x").status, 200);
    g.stop();
    let before = threads();
    for _ in 0..5 {
        let mut g = Gateway::in_process(&config(&be, ""));
        assert_eq!(g.get("/x").status, 200);
        g.reload(|t| t);
        g.stop();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads() > before {
        assert!(
            Instant::now() < deadline,
            "{} threads, {before} before",
            threads()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
