//! The plugin phases that only a custom plugin uses today, through the custom plugin example's binary
//! (gateway/examples/custom_plugin.rs) in front of real upstreams: the upstream-selection phase picking
//! a target, and the async upstream-response phase replacing an upstream's answer, with a body and
//! without one.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

fn example() -> std::path::PathBuf {
    let exe = std::path::Path::new(bin()).with_file_name("examples/custom_plugin");
    assert!(
        exe.exists(),
        "cargo build --all-targets builds the examples"
    );
    exe
}

/// Read one response with a `Content-Length` body off a kept-alive connection.
fn read_one(r: &mut BufReader<TcpStream>) -> Response {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut resp = parse_response(&head);
    let len: usize = resp.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    resp.body = body;
    resp
}

#[test]
fn a_plugin_picks_the_target_and_replaces_answers() {
    let shared = Backend::start("shared", Mode::Echo);
    let own = Backend::start("own", Mode::Echo);
    let failing = StaticServer::start(500, "{\"trace\": \"NullPointerException at Db.java:42\"}");
    let failing_empty = StaticServer::start(500, "");
    let plugin = format!(
        "{{ tenant_header: {{ allow: [acme, globex], pin: {{ globex: \"{}\" }}, hide_errors: true }} }}",
        own.addr
    );
    let g = Gateway::start_program(
        &example(),
        &["run", "-c"],
        &format!(
            "server: {{ listen: [\"{{listen}}\"] }}
upstreams:
  shared: {{ targets: [{{ addr: \"{}\" }}] }}
  failing: {{ targets: [{{ addr: \"{}\" }}] }}
  failing_empty: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: shared, plugins: [{plugin}] }}
  - {{ name: failing, match: {{ path_prefix: /failing }}, upstream: failing, plugins: [{plugin}] }}
  - {{ name: empty, match: {{ path_prefix: /empty }}, upstream: failing_empty, plugins: [{plugin}] }}
",
            shared.addr, failing.addr, failing_empty.addr
        ),
    );
    let get = |path: &str, tenant: &str| {
        request(g.addr, "GET", path, &[&format!("X-Tenant: {tenant}")], None)
    };

    // Upstream selection: globex goes to its own backend, which the route's upstream does not list;
    // acme is left to the balancer.
    let r = get("/api/x", "acme");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "shared");
    let before = shared.hits.load(Ordering::Relaxed);
    let r = get("/api/x", "globex");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "own");
    assert_eq!(
        r.upstream_header("x-tenant-verified").as_deref(),
        Some("globex")
    );
    assert_eq!(
        shared.hits.load(Ordering::Relaxed),
        before,
        "not the balancer's pick"
    );
    assert_eq!(own.hits.load(Ordering::Relaxed), 1);

    // Replacement: the upstream was asked, its 500 and error page never reach the client.
    let r = get("/failing/x", "acme");
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_failed");
    assert_eq!(
        r.json()["error"]["message"],
        "the service failed for tenant acme; try again"
    );
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(!body.contains("NullPointer"), "{body}");
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(r.header("x-request-id").is_some());
    assert_eq!(failing.hits.load(Ordering::Relaxed), 1);
    // HEAD: the replacement's head, no body.
    let r = request(g.addr, "HEAD", "/failing/x", &["X-Tenant: acme"], None);
    assert_eq!(r.status, 502);
    assert!(r.body.is_empty());

    // An upstream answer without a body (`Content-Length: 0`) is replaced just the same.
    let r = get("/empty/x", "acme");
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_failed");
    assert_eq!(
        r.json()["error"]["message"],
        "the service failed for tenant acme; try again"
    );
    assert_eq!(failing_empty.hits.load(Ordering::Relaxed), 1);
    // That one is answered from the error path, but it is not an error of the gateway's.
    let log = g.stderr_text();
    assert!(!log.contains("Fail to proxy"), "{log}");

    // The replaced body is framed right: the connection carries the next request.
    let s = TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(b"GET /failing/x HTTP/1.1\r\nHost: t\r\nX-Tenant: acme\r\n\r\n")
        .unwrap();
    let first = read_one(&mut r);
    assert_eq!(first.status, 502);
    assert_eq!(first.error_code(), "upstream_failed");
    w.write_all(b"GET /api/y HTTP/1.1\r\nHost: t\r\nX-Tenant: acme\r\n\r\n")
        .unwrap();
    let second = read_one(&mut r);
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["path"], "/api/y");
}

/// A preflight is offered to the early phase of the route it asks about; when nothing there answers it,
/// it goes where an `OPTIONS` request goes.
#[test]
fn a_preflight_nobody_answers_is_an_options_request() {
    let be = Backend::start("be", Mode::Echo);
    let g = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: get_only, match: {{ path_prefix: /get, methods: [GET] }}, upstream: be }}
  - name: guarded
    match: {{ path_prefix: /guarded }}
    upstream: be
    plugins: [{{ ip_filter: {{ allow: [127.0.0.1/32] }} }}]
  - name: denied
    match: {{ path_prefix: /denied }}
    upstream: be
    plugins: [{{ ip_filter: {{ deny: [127.0.0.0/8] }} }}]
",
        be.addr
    ));
    let preflight = |path: &str| {
        request(
            g.addr,
            "OPTIONS",
            path,
            &[
                "Origin: https://app.example.com",
                "Access-Control-Request-Method: GET",
            ],
            None,
        )
    };
    // No early phase on the route: not offered; OPTIONS is a method it does not take.
    let r = preflight("/get/x");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // Offered, let through by `ip_filter`, answered by nobody: proxied as the OPTIONS it is.
    let r = preflight("/guarded/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "OPTIONS");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Offered and refused in the early phase.
    let r = preflight("/denied/x");
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "ip_forbidden");
}
