//! The gateway (in process, on listeners bound before start) in front of real upstreams on loopback.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, Gateway, Mode};

fn one_backend_config(be: &Backend, extra_routes: &str) -> String {
    format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 5s }} }}
routes:
  - {{ name: catch-all, match: {{ path_prefix: / }}, upstream: be }}
{extra_routes}
"#,
        be.addr
    )
}

#[test]
fn proxies_and_routes_by_priority() {
    let be = Backend::start("be", Mode::Echo);
    let routes = r#"
  - { name: header, match: { path_prefix: /api, headers: { x-canary: "yes" } }, upstream: be }
  - { name: prefix, match: { path_prefix: /api }, upstream: be }
  - { name: longer-prefix, match: { path_prefix: /api/users }, upstream: be }
  - { name: regex, match: { path_regex: "/api/users/v[0-9]+/.*" }, upstream: be }
  - { name: template, match: { path: "/api/users/{id}" }, upstream: be }
  - { name: exact, match: { path: /api/users/me }, upstream: be }
  - { name: host, match: { host: "*.example.com", path_prefix: /api }, upstream: be }
"#;
    let gw = Gateway::in_process(&one_backend_config(&be, routes));
    let cases = [
        ("/api/users/me", "test.local", "", "exact"),
        ("/api/users/42", "test.local", "", "template"),
        ("/api/users/v2/x", "test.local", "", "regex"),
        ("/api/users/42/orders", "test.local", "", "longer-prefix"),
        ("/api/products", "test.local", "", "prefix"),
        ("/apix", "test.local", "", "catch-all"),
        ("/api/products", "shop.example.com", "", "host"),
        ("/api/products", "test.local", "x-canary: yes\r\n", "header"),
    ];
    for (i, (path, host, extra, want)) in cases.iter().enumerate() {
        let rid = format!("case-{i}");
        let r = gw.send(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Request-Id: {rid}\r\n{extra}Connection: close\r\n\r\n"));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["path"], *path);
        assert_eq!(r.header("connection"), Some("close"), "the client asked");
        let line = gw.wait_log(|l| l["request_id"] == rid.as_str());
        assert_eq!(line["route"], *want, "{path} on {host}");
    }
}

#[test]
fn strip_prefix_and_rewrite() {
    let be = Backend::start("be", Mode::Echo);
    let routes = r#"
  - { name: strip, match: { path_prefix: /api/users }, upstream: be, strip_prefix: /api }
  - { name: rewrite, match: { path: "/v1/orders/{id}/items/{item}" }, upstream: be, rewrite: "/orders/{id}?item={item}" }
  - { name: regex-rewrite, match: { path_regex: "/legacy/(?P<rest>.*)" }, upstream: be, rewrite: "/modern/{rest}" }
"#;
    let gw = Gateway::in_process(&one_backend_config(&be, routes));
    assert_eq!(gw.get("/api/users/7?x=1").json()["path"], "/users/7?x=1");
    assert_eq!(gw.get("/api/users").json()["path"], "/users");
    assert_eq!(
        gw.get("/v1/orders/9/items/3").json()["path"],
        "/orders/9?item=3"
    );
    assert_eq!(gw.get("/legacy/a/b").json()["path"], "/modern/a/b");
}

#[test]
fn round_robin_weighted_and_consistent_hash_spread() {
    let bes: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&format!("b{i}"), Mode::Echo))
        .collect();
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  rr: {{ targets: [{{ addr: "{a}" }}, {{ addr: "{b}" }}, {{ addr: "{c}" }}] }}
  w:  {{ balance: weighted, targets: [{{ addr: "{a}", weight: 1 }}, {{ addr: "{b}", weight: 2 }}, {{ addr: "{c}", weight: 3 }}] }}
  ch: {{ balance: consistent_hash, hash_on: "header:x-user", targets: [{{ addr: "{a}" }}, {{ addr: "{b}" }}, {{ addr: "{c}" }}] }}
routes:
  - {{ name: rr, match: {{ path_prefix: /rr }}, upstream: rr }}
  - {{ name: w, match: {{ path_prefix: /w }}, upstream: w }}
  - {{ name: ch, match: {{ path_prefix: /ch }}, upstream: ch }}
"#,
        a = bes[0].addr,
        b = bes[1].addr,
        c = bes[2].addr
    );
    let gw = Gateway::in_process(&cfg);
    let count = |path: &str, n: usize, extra: &str| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            let r = gw.send(&format!(
                "GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n"
            ));
            *m.entry(r.header("x-backend").unwrap().to_string())
                .or_default() += 1;
        }
        m
    };
    let rr = count("/rr", 30, "");
    assert_eq!((rr["b0"], rr["b1"], rr["b2"]), (10, 10, 10), "{rr:?}");
    let w = count("/w", 60, "");
    assert_eq!((w["b0"], w["b1"], w["b2"]), (10, 20, 30), "{w:?}");
    // The same key always lands on the same target; different keys spread.
    let mut seen = std::collections::HashSet::new();
    for u in 0..20 {
        let m = count("/ch", 5, &format!("x-user: user-{u}\r\n"));
        assert_eq!(m.len(), 1, "key user-{u} went to {m:?}");
        seen.insert(m.keys().next().unwrap().clone());
    }
    assert!(seen.len() >= 2, "20 keys all hashed to {seen:?}");
}

#[test]
fn health_checks_eject_and_restore_targets() {
    let good = Backend::start("good", Mode::Echo);
    let flaky = Backend::start("flaky", Mode::Echo);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2 }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}
"#,
        good.addr, flaky.addr
    );
    let gw = Gateway::in_process(&cfg);
    let spread = |n: usize| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            *m.entry(gw.get("/x").header("x-backend").unwrap().to_string())
                .or_default() += 1;
        }
        m
    };
    assert_eq!(spread(10).len(), 2, "both targets serve while healthy");
    flaky
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = spread(10);
        if !m.contains_key("flaky") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flaky target never ejected: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stays out.
    assert_eq!(spread(20).get("flaky"), None);
    flaky
        .healthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if spread(10).contains_key("flaky") {
            break;
        }
        assert!(Instant::now() < deadline, "flaky target never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    // All targets unhealthy → 503 JSON.
    good.healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    flaky
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.get("/x");
        if r.status == 503 {
            assert_eq!(r.error_code(), "no_healthy_upstream");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never 503 with every target down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_ejected_target_stays_out_across_a_reload() {
    let good = Backend::start("good", Mode::Echo);
    let flaky = Backend::start("flaky", Mode::Echo);
    // A slow check interval: after a reload that forgot health, the dead target would serve for seconds.
    let cfg = |extra: &str| {
        format!(
            r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  u:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    health_check: {{ path: /healthz, interval: 2s, timeout: 500ms, healthy: 1, unhealthy: 1 }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}
{extra}"#,
            good.addr, flaky.addr
        )
    };
    flaky
        .healthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let gw = Gateway::in_process(&cfg(""));
    let served_by_flaky = |n: usize| {
        (0..n)
            .filter(|_| gw.get("/x").header("x-backend") == Some("flaky"))
            .count()
    };
    // The first check (at start) takes it out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_by_flaky(10) > 0 {
        assert!(Instant::now() < deadline, "flaky target never ejected");
        std::thread::sleep(Duration::from_millis(50));
    }
    gw.reload(|text| {
        format!("{text}  - {{ name: extra, match: {{ path: /extra }}, upstream: u }}\n")
    });
    assert_eq!(
        served_by_flaky(20),
        0,
        "the dead target stays out after the reload"
    );
    assert_eq!(gw.get("/extra").status, 200, "the new route is live");
}

#[test]
fn a_target_given_by_name_is_every_address_of_the_name_and_its_host() {
    use std::net::ToSocketAddrs;
    let be = Backend::start("be", Mode::Echo);
    let name = format!("localhost:{}", be.addr.port());
    // Whatever this machine's resolver says `localhost` is (127.0.0.1, and ::1 on many).
    let want: std::collections::BTreeSet<String> = name
        .to_socket_addrs()
        .unwrap()
        .map(|a| a.to_string())
        .collect();
    let token = "a-token-for-the-admin-api";
    let gw = Gateway::in_process(&format!(
        r#"
server: {{ listen: ["{{listen}}"], admin: {{ listen: "{{admin}}", token: "{token}" }} }}
upstreams:
  u:
    targets: [{{ addr: "{name}" }}]
    dns_refresh: 1s
    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, healthy: 1, unhealthy: 1 }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}
"#
    ));
    let auth = format!("Authorization: Bearer {token}");
    let ups = gw.admin_request("GET", "/admin/upstreams", &[&auth]).json();
    let got: std::collections::BTreeSet<String> = ups["u"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["addr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    // An address where the backend does not listen (::1 here) is taken out by the health check.
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..4).any(|_| gw.get("/x").status != 200) {
        assert!(Instant::now() < deadline, "never served through {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = gw.get("/x");
    assert_eq!(r.upstream_header("host").as_deref(), Some(name.as_str()));
    // Refreshes (every second here) find the same addresses and change nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(gw.get("/x").status, 200);
}

/// Names are looked up while the gateway runs: one that does not resolve does not stop it from
/// starting, its requests get the no-healthy-target 503, and a reload to a name that resolves serves
/// once the new snapshot's background lookup has answered.
#[test]
fn a_name_that_does_not_resolve_is_a_503_not_a_refusal_to_start() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  named: {{ targets: [{{ addr: "no-such-host.invalid:80" }}], dns_refresh: 1s }}
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: named, match: {{ path_prefix: /named }}, upstream: named }}
  - {{ name: be, match: {{ path_prefix: / }}, upstream: be }}
"#,
        be.addr
    ));
    let r = gw.get("/named/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_healthy_upstream");
    assert_eq!(gw.get("/x").status, 200, "the other upstreams serve");
    assert!(
        gw.stderr_text()
            .contains("upstreams.named.targets[0].addr: cannot resolve `no-such-host.invalid:80`"),
        "{}",
        gw.stderr_text()
    );
    let name = format!("localhost:{}", be.addr.port());
    gw.reload(|text| text.replace("no-such-host.invalid:80", &name));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.get("/named/x");
        if r.status == 200 {
            assert_eq!(r.upstream_header("host").as_deref(), Some(name.as_str()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served through {name}: {}",
            r.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn closed_port_is_502_and_hanging_upstream_is_504() {
    let hang = Backend::start("hang", Mode::Hang);
    let closed = common::free_port();
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  closed: {{ targets: [{{ addr: "127.0.0.1:{closed}" }}], timeouts: {{ connect: 1s }} }}
  hang: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 1s }} }}
routes:
  - {{ name: closed, match: {{ path_prefix: /closed }}, upstream: closed }}
  - {{ name: hang, match: {{ path_prefix: /hang }}, upstream: hang }}
"#,
        hang.addr
    );
    let gw = Gateway::in_process(&cfg);
    let r = gw.get("/closed");
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unavailable");
    assert_eq!(r.header("content-type"), Some("application/json"));

    let t = Instant::now();
    let r = gw.get("/hang");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "upstream_timeout");
    // Bounded by the configured read timeout (1s), not by the upstream (60s).
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    let line = gw.wait_log(|l| l["route"] == "hang");
    assert_eq!(line["status"], 504);
    assert_eq!(line["error"], "upstream_timeout");
}

#[test]
fn path_normalization_vectors() {
    let be = Backend::start("be", Mode::Echo);
    let routes = r#"
  - { name: public, match: { path_prefix: /public }, upstream: be }
  - { name: admin, match: { path_prefix: /admin, methods: [DELETE] }, upstream: be }
"#;
    let gw = Gateway::in_process(&one_backend_config(&be, routes));
    // (request path, what the upstream must receive, route that must be chosen)
    let ok = [
        ("/public/a/../b", "/public/b", "public"),
        ("/public/%2e%2e/admin", "/admin", "catch-all"),
        ("/public/%2E%2e/admin", "/admin", "catch-all"),
        ("//public//x", "/public/x", "public"),
        ("/public/./x/.", "/public/x/", "public"),
        ("/%70ublic/x", "/public/x", "public"),
        ("/public/a%20b", "/public/a%20b", "public"),
        ("/../../public", "/public", "public"),
        ("/public/x?q=/../y", "/public/x?q=/../y", "public"),
    ];
    for (i, (path, want, route)) in ok.iter().enumerate() {
        let rid = format!("norm-{i}");
        let r = gw.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["path"], *want, "{path}");
        assert_eq!(
            gw.wait_log(|l| l["request_id"] == rid.as_str())["route"],
            *route,
            "{path}"
        );
    }
    // Every spelling of a path is routed exactly as its normal form: DELETE reaches `admin`,
    // GET falls through to the catch-all, and the upstream always sees `/admin/x`.
    for (i, p) in [
        "/admin/x",
        "//admin/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/ADMIN/../admin/x",
        "/%61dmin/x",
    ]
    .iter()
    .enumerate()
    {
        for method in ["GET", "DELETE"] {
            let rid = format!("spell-{i}-{method}");
            let r = gw.send(&format!("{method} {p} HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\nConnection: close\r\n\r\n"));
            assert_eq!(r.status, 200, "{method} {p}");
            assert_eq!(r.json()["path"], "/admin/x", "{method} {p}");
            let want = if method == "DELETE" {
                "admin"
            } else {
                "catch-all"
            };
            assert_eq!(
                gw.wait_log(|l| l["request_id"] == rid.as_str())["route"],
                want,
                "{method} {p}"
            );
        }
    }
    for p in [
        "/public/a%2fb",
        "/public/a%2Fb",
        "/public/%00",
        "/public/a%5cb",
        "/public/a\\b",
        "/public/%zz",
    ] {
        let r = gw.send(&format!(
            "GET {p} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        assert_eq!(r.status, 400, "{p}");
        assert_eq!(r.error_code(), "invalid_path", "{p}");
    }
}

#[test]
fn forwarded_headers_trust_only_configured_proxies() {
    let be = Backend::start("be", Mode::Echo);
    let untrusted = Gateway::in_process(&one_backend_config(&be, ""));
    let spoof = "GET /x HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\nX-Request-Id: xff-1\r\nConnection: close\r\n\r\n";
    let r = untrusted.send(spoof);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("shop.test")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        untrusted.wait_log(|l| l["request_id"] == "xff-1")["client_ip"],
        "127.0.0.1"
    );

    let trusted_cfg = one_backend_config(&be, "")
        .replace("threads: 1", "threads: 1, trusted_proxies: [127.0.0.1/32]");
    let trusted = Gateway::in_process(&trusted_cfg);
    let r = trusted.send(spoof);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("evil")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        trusted.wait_log(|l| l["request_id"] == "xff-1")["client_ip"],
        "6.6.6.6"
    );
    // A chain over several lines is kept in order, the peer last.
    let r = trusted.send("GET /x HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7, 8.8.8.8\r\nX-Request-Id: xff-2\r\nConnection: close\r\n\r\n");
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1")
    );
    assert_eq!(
        trusted.wait_log(|l| l["request_id"] == "xff-2")["client_ip"],
        "8.8.8.8"
    );
}

#[test]
fn connection_cannot_take_away_framing_or_host() {
    // `Connection` may name any header for removal (RFC 9110 §7.6.1), never those the proxy needs.
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&one_backend_config(&be, ""));
    let r = gw.send("POST /x HTTP/1.1\r\nHost: shop.test\r\nConnection: close, Transfer-Encoding, X-A\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["body"], "hello");
    assert_eq!(r.upstream_header("content-length").as_deref(), Some("5"));
    assert_eq!(r.upstream_header("x-a"), None, "named by Connection");
    assert_eq!(r.upstream_header("connection"), None);
    assert_eq!(r.upstream_header("x-b").as_deref(), Some("2"));
    // Naming `Host` (or `X-Forwarded-*`), a pseudo-header, something that is not a token, or a tenth
    // option is refused before routing, as Pingora's default policy refuses it (pingora-proxy 0.9.1
    // `proxy_common.rs`, `ConnectionNominations`), and never forwarded.
    let hits = be.hits.load(std::sync::atomic::Ordering::Relaxed);
    for c in [
        "close, Host",
        "X-Forwarded-For",
        "close, x-forwarded-proto",
        ":authority",
        "\"X-Forwarded-For\"",
        "close, a, b, c, d, e, f, g, h, i",
    ] {
        let r = gw.send(&format!(
            "GET /x HTTP/1.1\r\nHost: shop.test\r\nConnection: {c}\r\n\r\n"
        ));
        assert_eq!(r.status, 400, "{c}");
        assert_eq!(r.error_code(), "invalid_connection", "{c}");
    }
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), hits);
    // Nine options are fine.
    let r = gw.send(
        "GET /x HTTP/1.1\r\nHost: shop.test\r\nConnection: close, a, b, c, d, e, f, g, h\r\n\r\n",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn an_upgrade_that_is_not_passed_on_keeps_the_read_timeout() {
    // Only a WebSocket upgrade waits for its `101` (and its tunnel) up to the tunnel idle timeout;
    // an `h2c` one goes up as a plain request, and times out as one.
    let be = Backend::start("be", Mode::Delay(3000));
    let gw = Gateway::in_process(&format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 1s }} }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: be, retry: {{ attempts: 1 }} }}
"#,
        be.addr
    ));
    let r =
        gw.send("GET /x HTTP/1.1\r\nHost: t\r\nConnection: close, Upgrade\r\nUpgrade: h2c\r\n\r\n");
    assert_eq!(r.status, 504, "{}", r.json());
    assert_eq!(r.error_code(), "upstream_timeout");
}

#[test]
fn no_hop_by_hop_header_reaches_the_upstream_and_only_a_websocket_upgrade_does() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&one_backend_config(&be, ""));
    // An h2c upgrade (passed on, a known way around a proxy's routing and checks: the upstream
    // would switch the connection to HTTP/2 for whatever comes next) and the other hop-by-hop
    // headers: the upstream sees none of them.
    let r = gw.send("GET /x HTTP/1.1\r\nHost: t\r\nConnection: close, Upgrade, HTTP2-Settings, X-Named\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\nX-Named: 1\r\nX-Kept: yes\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.json());
    for h in [
        "connection",
        "upgrade",
        "http2-settings",
        "proxy-connection",
        "proxy-authenticate",
        "trailer",
        "x-named",
    ] {
        assert_eq!(r.upstream_header(h), None, "{h} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
    // A chunked upload: the client's `Transfer-Encoding` is not passed on as sent; Pingora frames
    // the body it forwards again (chunked: there is no `Content-Length`).
    // (`Chunked` as sent: a copy passed on would keep its capital.)
    let r = gw.send("POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["body"], "hello world");
    assert_eq!(
        r.upstream_header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(r.upstream_header("content-length"), None);
    // A WebSocket upgrade goes up with Pingora's own two headers, whatever else `Connection` said
    // (this upstream answers 200: no tunnel, the answer is proxied as any other).
    let r = gw.send("GET /ws HTTP/1.1\r\nHost: t\r\nConnection: close, Upgrade, X-A\r\nUpgrade: websocket\r\nX-A: 1\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.upstream_header("connection").as_deref(), Some("Upgrade"));
    assert_eq!(r.upstream_header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(r.upstream_header("x-a"), None);
    assert_eq!(
        r.upstream_header("sec-websocket-version").as_deref(),
        Some("13")
    );
    // Not over HTTP/1.0, where there is no upgrade.
    let r =
        gw.send("GET /ws HTTP/1.0\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.upstream_header("connection"), None);
    assert_eq!(r.upstream_header("upgrade"), None);
}

#[test]
fn hop_by_hop_headers_are_stripped_and_request_id_kept_or_made() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&one_backend_config(&be, ""));
    let r = gw.send("GET /x HTTP/1.1\r\nHost: t\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\nX-Kept: yes\r\nX-Request-Id: my-id.1\r\n\r\n");
    assert_eq!(r.status, 200);
    for h in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(r.upstream_header(h), None, "{h} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("my-id.1")
    );
    assert_eq!(r.header("x-request-id"), Some("my-id.1"));
    // The upstream's own hop-by-hop response headers do not reach the client.
    assert_eq!(r.header("keep-alive"), None);

    let r = gw.send("GET /x HTTP/1.1\r\nHost: t\r\nX-Request-Id: bad id with spaces\r\nConnection: close\r\n\r\n");
    let made = r.header("x-request-id").unwrap().to_string();
    assert_eq!(made.len(), 32);
    assert_eq!(r.upstream_header("x-request-id"), Some(made.clone()));
    let line = gw.wait_log(|l| l["request_id"] == made.as_str());
    for field in [
        "time",
        "client_ip",
        "method",
        "path",
        "route",
        "upstream",
        "target",
        "status",
        "duration_ms",
        "upstream_ms",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(!line[field].is_null(), "access log lacks {field}: {line}");
    }
    // Errors made by the gateway carry the id too.
    let r =
        gw.send("GET /%2f HTTP/1.1\r\nHost: t\r\nX-Request-Id: err-1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.json()["error"]["request_id"], "err-1");
}

#[test]
fn header_and_uri_limits() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&one_backend_config(&be, ""));
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = gw.send(&format!(
        "GET /x HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "too_many_headers");

    let big = "a".repeat(61 * 1024);
    let r = gw.send(&format!(
        "GET /x HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 431);
    assert_eq!(r.error_code(), "headers_too_large");

    let long = "b".repeat(9 * 1024);
    let r = gw.send(&format!(
        "GET /x/{long} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 414);
    assert_eq!(r.error_code(), "uri_too_long");

    // Just under the limits is fine.
    let r = gw.send(&format!(
        "GET /x/{} HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(7 * 1024),
        "a".repeat(50 * 1024)
    ));
    assert_eq!(r.status, 200);

    // Limits are configurable.
    let tight = one_backend_config(&be, "").replace(
        "threads: 1",
        "threads: 1, limits: { max_headers: 5, max_uri_bytes: 64 }",
    );
    let gw = Gateway::in_process(&tight);
    let r = gw.send("GET /x HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 431);
    let r = gw.get(&format!("/{}", "c".repeat(80)));
    assert_eq!(r.status, 414);
}

#[test]
fn not_found_and_head_and_malformed() {
    let be = Backend::start("be", Mode::Echo);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: only, match: {{ path: /only, methods: [GET] }}, upstream: be }}
"#,
        be.addr
    );
    let gw = Gateway::in_process(&cfg);
    let r = gw.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "route_not_found");
    let r = gw.send("HEAD /only HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    // Garbage on the wire gets a 4xx, never a hang or a crash.
    let r = common::send(gw.addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert!((400..500).contains(&r.status), "{}", r.status);
    assert_eq!(gw.get("/only").status, 200, "still serving");
}

#[test]
fn slow_request_heads_are_cut_off_but_idle_keepalive_is_not() {
    use std::io::{Read, Write};
    let be = Backend::start("be", Mode::Echo);
    let cfg = one_backend_config(&be, "").replace(
        "threads: 1",
        "threads: 1, limits: { header_read_timeout: 1s }",
    );
    let gw = Gateway::in_process(&cfg);

    // Slowloris: a byte at a time, each well within Pingora's per-read timeout, never finishing.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let start = Instant::now();
    let mut cut = false;
    for b in
        b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
    {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(cut || !buf.is_empty(), "connection was never cut");
    if !buf.is_empty() {
        let r = common::parse_response(&buf);
        assert_eq!(r.status, 408);
        assert_eq!(r.json()["error"]["code"], "request_timeout");
    }
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "cut after {:?}",
        start.elapsed()
    );

    // Keep-alive: an idle gap longer than the head deadline between two requests is fine.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /two HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let r = common::parse_response(&rest);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/two");
}

/// An upstream whose answers to `/stream` send their body a chunk every 400 ms for 2.4 s (`0\n` ..
/// `5\n`); other paths get `ok` at once. Keeps its connections alive.
fn slow_chunked_upstream() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = up.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in up.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let slow = line.contains("/stream");
                    while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    if !slow {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        continue;
                    }
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
                    );
                    for i in 0..6 {
                        std::thread::sleep(Duration::from_millis(400));
                        let _ = s.write_all(format!("2\r\n{i}\n\r\n").as_bytes());
                    }
                    let _ = s.write_all(b"0\r\n\r\n");
                }
            });
        }
    });
    addr
}

fn assert_streamed_whole(text: &str) {
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for i in 0..6 {
        assert!(
            text.contains(&format!("{i}\n")),
            "chunk {i} missing: {text}"
        );
    }
    assert!(text.ends_with("0\r\n\r\n"), "the answer was cut: {text}");
}

#[test]
fn an_answer_streamed_for_longer_than_the_keepalive_timeout_is_not_cut() {
    use std::io::{Read, Write};
    // The keep-alive timeout (1 s) is for idle connections, not for an answer still on its way
    // (2.4 s), whether the connection is to close after it or to stay.
    let up_addr = slow_chunked_upstream();
    let cfg = format!(
        "server: {{ listen: [\"{{listen}}\"], threads: 1, limits: {{ keepalive_timeout: 1s }} }}
upstreams:
  slow: {{ targets: [{{ addr: \"{up_addr}\" }}] }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: slow }}
"
    );
    let gw = Gateway::in_process(&cfg);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_streamed_whole(&String::from_utf8_lossy(&raw));

    // Kept alive: Pingora reads the client while it writes the body (to see it go away); that wait
    // is not the idle one. The whole answer arrives, and the connection serves the next request.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("Connection: keep-alive"), "{text}");
    assert_streamed_whole(&text);
    s.write_all(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let n = s.read(&mut buf).unwrap();
    let next = String::from_utf8_lossy(&buf[..n]);
    assert!(
        next.starts_with("HTTP/1.1 200") && next.ends_with("ok"),
        "{next}"
    );
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout() {
    use std::io::{Read, Write};
    let be = Backend::start("be", Mode::Echo);
    // The connection wrapper times the idle wait (`conn::KeepAlive`) to the millisecond: Pingora's
    // own timeout counts whole seconds (1.9s was cut to 1s once, and 600ms meant no timeout at all).
    let cfg = one_backend_config(&be, "").replace(
        "threads: 1",
        "threads: 1, limits: { keepalive_timeout: 1900ms }",
    );
    let gw = Gateway::in_process(&cfg);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    // Requests closer together than the timeout keep the connection, for longer than the timeout.
    let mut sent = Instant::now();
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1200));
        }
        // Before the request goes out: the gateway's wait starts after it, whatever the scheduling.
        sent = Instant::now();
        s.write_all(format!("GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "request {i}"
        );
    }
    // Then idle: closed by the gateway, without a byte, soon after the timeout (counted from the
    // last answer: not before 1.9 s, which a whole-second timer would have cut to 1 s).
    let n = s.read(&mut buf).unwrap();
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
}
