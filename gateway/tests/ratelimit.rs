//! Rate limits through the gateway in process: the local store (pingora-limits) and the shared one
//! on a real `redis-server`, standard headers, concurrency, two instances sharing one limit,
//! several policies on a route, Redis dying and coming back, and attempts to dodge a limit.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

fn gateway(be: &Backend, redis: Option<&Redis>, policies: &str, routes: &str) -> Gateway {
    gateway_with_timeout(be, redis, "50ms", policies, routes)
}

/// `timeout`: the Redis deadline. The default 50 ms is what production wants; tests about exact
/// counting under a burst of 200 on a loaded 2-core machine give Redis more room, so that what they
/// measure is the counting and not the machine.
fn gateway_with_timeout(
    be: &Backend,
    redis: Option<&Redis>,
    timeout: &str,
    policies: &str,
    routes: &str,
) -> Gateway {
    let redis = redis
        .map(|r| {
            format!(
                "redis: {{ url: \"{}\", timeout: {timeout}, retry_interval: 300ms }}\n",
                r.url()
            )
        })
        .unwrap_or_default();
    Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}
{redis}rate_limits:
{policies}upstreams:
  be: {{ targets: [{{ addr: \"{}\" }}] }}
routes:
{routes}",
        be.addr
    ))
}

fn route(name: &str, prefix: &str, plugin: &str) -> String {
    format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: be\n    plugins: [{{ rate_limit: {plugin} }}]\n")
}

fn six_then_429(g: &Gateway, path: &str, policy: &str) {
    for left in (0..6).rev() {
        let r = g.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("ratelimit-policy"),
            Some(format!("\"{policy}\";q=6;w=60").as_str())
        );
        let rl = r.header("ratelimit").unwrap();
        assert!(rl.starts_with(&format!("\"{policy}\";r={left};t=")), "{rl}");
        let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
        assert!((1..=60).contains(&t), "{rl}");
    }
    let r = g.get(path);
    assert_eq!(r.status, 429, "{path}");
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"{policy}\";r=0").as_str())
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn six_then_429_with_headers_counting_down_local_and_redis() {
    let be = Backend::start("be", Mode::Echo);
    let redis = Redis::start();
    let g = gateway(
        &be,
        Some(&redis),
        "  local6: { requests: 6, per: 1m }\n  shared6: { requests: 6, per: 1m, store: redis, on_error: fail_closed }\n  legacy6: { requests: 6, per: 1m }\n",
        &(route("local", "/local", "local6")
            + &route("shared", "/shared", "shared6")
            + &route("legacy", "/legacy", "{ policies: [legacy6], legacy_headers: true }")),
    );
    six_then_429(&g, "/local", "local6");
    six_then_429(&g, "/shared", "shared6");
    let r = g.get("/legacy");
    assert_eq!(r.header("x-ratelimit-limit"), Some("6"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("5"));
    assert!(r.header("x-ratelimit-reset").is_some());
    let m = String::from_utf8(g.admin_request("GET", "/metrics", &[]).body).unwrap();
    assert!(
        m.contains("tollgate_ratelimit_rejections_total{policy=\"local6\"} 1"),
        "{m}"
    );
    assert!(m.contains("tollgate_ratelimit_rejections_total{policy=\"shared6\"} 1"));
}

/// `n` requests at once against `addrs` (round robin); returns how many got 200, and every status.
fn burst(addrs: &[std::net::SocketAddr], path: &'static str, n: usize) -> (usize, Vec<u16>) {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (addr, barrier) = (addrs[i % addrs.len()], barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                request(addr, "GET", path, &[], None).status
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (codes.iter().filter(|&&c| c == 200).count(), codes)
}

#[test]
fn two_hundred_concurrent_requests_admit_n_locally_and_across_two_instances() {
    let be = Backend::start("be", Mode::Echo);
    let redis = Redis::start();
    let policies = "  local20: { requests: 20, per: 1h }\n  shared20: { requests: 20, per: 1h, store: redis, on_error: fail_closed }\n";
    let routes = route("local", "/local", "local20") + &route("shared", "/shared", "shared20");
    let a = gateway_with_timeout(&be, Some(&redis), "5s", policies, &routes);
    let (ok, codes) = burst(&[a.addr], "/local", 200);
    assert!(ok <= 20, "{ok} admitted by a local limit of 20");
    assert_eq!(ok, 20, "one key, one counter: exactly the limit");
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");

    let b = gateway_with_timeout(&be, Some(&redis), "5s", policies, &routes);
    let (ok, codes) = burst(&[a.addr, b.addr], "/shared", 200);
    assert_eq!(
        ok, 20,
        "two instances, one Redis: exactly the limit ({codes:?})"
    );
    assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");
}

#[test]
fn a_refusal_by_one_policy_takes_nothing_from_the_others() {
    let be = Backend::start("be", Mode::Echo);
    let redis = Redis::start();
    let g = gateway(
        &be,
        Some(&redis),
        "  per_tenant: { requests: 2, per: 1h, key: \"header:X-Tenant\" }
  per_route: { requests: 5, per: 1h, key: route }
  per_tenant_r: { requests: 2, per: 1h, key: \"header:X-Tenant\", store: redis, on_error: fail_closed }
  per_route_r: { requests: 5, per: 1h, key: route, store: redis, on_error: fail_closed }
",
        &(route("local-local", "/ll", "[per_tenant, per_route]")
            + &route("redis-local", "/rl", "[per_tenant_r, per_route]")
            + &route("local-redis", "/lr", "[per_tenant, per_route_r]")),
    );
    for path in ["/ll", "/rl", "/lr"] {
        let get = |tenant: &str| {
            request(
                g.addr,
                "GET",
                path,
                &[&format!("X-Tenant: {tenant}-{path}")],
                None,
            )
            .status
        };
        // Tenant a: two fit, the rest are refused by the tenant policy...
        assert_eq!(
            [get("a"), get("a"), get("a"), get("a")],
            [200, 200, 429, 429],
            "{path}"
        );
        // ...without using up the route's 5: b gets 2, c gets the fifth, d none.
        assert_eq!([get("b"), get("b"), get("c")], [200, 200, 200], "{path}");
        assert_eq!(get("d"), 429, "{path}: the route's 5 are used up now");
    }
}

#[test]
fn redis_dying_fails_open_or_closed_in_bounded_time_and_limits_come_back() {
    let be = Backend::start("be", Mode::Echo);
    let mut redis = Redis::start();
    let g = gateway(
        &be,
        Some(&redis),
        "  open: { requests: 1000, per: 1h, store: redis, on_error: fail_open }
  closed: { requests: 1000, per: 1h, store: redis, on_error: fail_closed }
  tight: { requests: 2, per: 1h, store: redis, on_error: fail_open }
",
        &(route("open", "/open", "open")
            + &route("closed", "/closed", "closed")
            + &route("tight", "/tight", "tight")),
    );
    assert_eq!(g.get("/open").status, 200);
    assert_eq!(g.get("/closed").status, 200);
    assert_eq!(
        [
            g.get("/tight").status,
            g.get("/tight").status,
            g.get("/tight").status
        ],
        [200, 200, 429]
    );

    redis.kill();
    // Bounded, not benchmarked: each answer comes well within the client's patience, never a hang.
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(g.get("/open").status, 200, "fail_open proxies");
        let r = g.get("/closed");
        assert_eq!(r.status, 503, "fail_closed refuses");
        assert_eq!(r.error_code(), "ratelimit_unavailable");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }
    // With Redis gone, the tight limit (fail_open) lets requests through.
    assert_eq!(g.get("/tight").status, 200);
    let m = String::from_utf8(g.admin_request("GET", "/metrics", &[]).body).unwrap();
    assert!(
        m.contains("tollgate_ratelimit_store_errors_total{policy=\"closed\"}"),
        "{m}"
    );

    // Redis returns (empty: its counts are gone): limits resume by themselves.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while g.get("/closed").status != 200 {
        assert!(Instant::now() < deadline, "never recovered from the outage");
        std::thread::sleep(Duration::from_millis(100));
    }
    let codes: Vec<u16> = (0..3).map(|_| g.get("/tight").status).collect();
    assert_eq!(codes, [200, 200, 429], "the limit holds again");
}

#[test]
fn spoofed_forwarded_for_and_path_variants_share_one_bucket() {
    let be = Backend::start("be", Mode::Echo);
    let g = gateway(
        &be,
        None,
        "  per_ip: { requests: 3, per: 1h }\n",
        &route("orders", "/orders", "per_ip"),
    );
    let statuses: Vec<u16> = [
        ("/orders", "1.1.1.1"),
        ("/orders/", "2.2.2.2"),
        ("//orders", "3.3.3.3"),
        ("/x/../orders", "4.4.4.4"),
        ("/%6frders", "5.5.5.5"),
    ]
    .iter()
    .map(|(p, ip)| request(g.addr, "GET", p, &[&format!("X-Forwarded-For: {ip}")], None).status)
    .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(be.hits.load(Ordering::Relaxed), 3);
}

#[test]
fn concurrency_caps_requests_in_flight() {
    let be = Backend::start("slow", Mode::Delay(500));
    let g = gateway(
        &be,
        None,
        "  two_at_a_time: { concurrency: 2, key: route }\n",
        &route("slow", "/slow", "two_at_a_time"),
    );
    let (ok, codes) = burst(&[g.addr], "/slow", 6);
    assert_eq!(ok, 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 4);
    // The slots come back when the requests end.
    assert_eq!(g.get("/slow").status, 200);
}

#[test]
fn config_errors_for_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "rate_limits:
  a: { requests: 5, per: 1m, store: redis }
  b: { requests: 0, per: 10ms }
  c: { requests: 5, per: 1m, key: \"cookie:x\" }
upstreams:
  be: { targets: [{ addr: \"127.0.0.1:1\" }] }
routes:
  - name: r
    match: { path: /r }
    upstream: be
    plugins: [{ rate_limit: [a, nope] }]
",
    )
    .unwrap();
    let (code, out, _) = tollgate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    for want in [
        "rate_limits.a.on_error: say what happens when Redis fails",
        "rate_limits.a.store: `store: redis` needs a top-level `redis: { url: ... }`",
        ":3:18: error: rate_limits.b.requests: must be at least 1",
        "rate_limits.b.per: must be at least 1s",
        ":4:35: error: rate_limits.c.key: `cookie:x` is not a key",
        ":11:29: error: routes[0].plugins[0].rate_limit: unknown rate-limit policy `nope`",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    // `a` is broken where it is defined; the route that names it does not say so a second time.
    assert!(!out.contains("policy `a`"), "{out}");
}

#[test]
fn a_reload_keeps_counts_and_applies_a_new_limit_to_them() {
    let be = Backend::start("be", Mode::Echo);
    let g = gateway(
        &be,
        None,
        "  few: { requests: 3, per: 1h }\n",
        &route("few", "/few", "few"),
    );
    let statuses = |n: usize| (0..n).map(|_| g.get("/few").status).collect::<Vec<_>>();
    assert_eq!(statuses(4), [200, 200, 200, 429]);
    // An unrelated change: the quota already used stays used.
    g.reload(|t| format!("{t}  - {{ name: other, match: {{ path: /other }}, upstream: be }}\n"));
    assert_eq!(statuses(1), [429], "a reload hands out no fresh quota");
    // A higher limit applies to the requests counted so far.
    g.reload(|t| t.replace("requests: 3", "requests: 5"));
    assert_eq!(statuses(3), [200, 200, 429]);
    // Counting by something else starts afresh.
    g.reload(|t| t.replace("requests: 5, per: 1h", "requests: 5, per: 1h, key: route"));
    assert_eq!(statuses(6), [200, 200, 200, 200, 200, 429]);
}

#[test]
fn a_reload_keeps_the_slots_of_requests_in_flight() {
    let be = Backend::start("slow", Mode::Delay(1500));
    let g = gateway(
        &be,
        None,
        "  one: { concurrency: 1, key: route }\n",
        &route("one", "/one", "one"),
    );
    let addr = g.addr;
    let first = std::thread::spawn(move || request(addr, "GET", "/one", &[], None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&g.admin_request("GET", "/metrics", &[]).body)
        .contains("tollgate_requests_in_flight 1")
    {
        assert!(Instant::now() < deadline, "the first request never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    g.reload(|t| format!("{t}  - {{ name: other, match: {{ path: /other }}, upstream: be }}\n"));
    assert_eq!(
        g.get("/one").status,
        429,
        "the request in flight still holds its slot"
    );
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(g.get("/one").status, 200, "and gives it back when done");
}

#[test]
fn long_header_values_are_counted_apart_under_bounded_keys() {
    let be = Backend::start("be", Mode::Echo);
    let redis = Redis::start();
    let g = gateway(
        &be,
        Some(&redis),
        "  shared: { requests: 2, per: 1h, key: \"header:X-Tenant\", store: redis, on_error: fail_closed }
  local: { requests: 2, per: 1h, key: \"header:X-Tenant\" }
",
        &(route("shared", "/shared", "shared") + &route("local", "/local", "local")),
    );
    // Two 10 KiB values that differ only in their last byte.
    let a = format!("{}a", "x".repeat(10 * 1024));
    let b = format!("{}b", "x".repeat(10 * 1024));
    for path in ["/shared", "/local"] {
        let get = |v: &str| request(g.addr, "GET", path, &[&format!("X-Tenant: {v}")], None).status;
        assert_eq!([get(&a), get(&a), get(&a)], [200, 200, 429], "{path}");
        assert_eq!(
            [get(&b), get(&b), get(&b)],
            [200, 200, 429],
            "{path}: another long value is another client"
        );
        assert_eq!([get("acme"), get("acme"), get("acme")], [200, 200, 429]);
    }
    // Redis holds the short value as it is and the long ones by their hash: no key anywhere near the
    // size of a value the client chose.
    let keys = redis.keys();
    // On failure, each key's length and start (a 10 KiB key in full helps nobody).
    let shown: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{} bytes: {}",
                k.len(),
                k.chars().take(60).collect::<String>()
            )
        })
        .collect();
    let longest = keys.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 200, "a key of {longest} bytes in {shown:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("tollgate:rl:shared:header:acme:")),
        "{shown:?}"
    );
    assert!(
        keys.iter()
            .filter(|k| k.starts_with("tollgate:rl:shared:header-sha256:"))
            .count()
            >= 2,
        "{shown:?}"
    );
}

#[test]
fn an_invalid_ipv6_prefix_is_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "rate_limits:
  wide: { requests: 5, per: 1m, ipv6_prefix: 129 }
  zero: { requests: 5, per: 1m, ipv6_prefix: 0 }
  fine: { requests: 5, per: 1m, ipv6_prefix: 56 }
upstreams:
  be: { targets: [{ addr: \"127.0.0.1:1\" }] }
routes:
  - name: r
    match: { path: /r }
    upstream: be
    plugins: [{ rate_limit: fine }]
",
    )
    .unwrap();
    let (code, out, _) = tollgate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = path.to_str().unwrap();
    for want in [
        format!(
            "{f}:2:46: error: rate_limits.wide.ipv6_prefix: must be a prefix length from 1 to 128"
        ),
        format!(
            "{f}:3:46: error: rate_limits.zero.ipv6_prefix: must be a prefix length from 1 to 128"
        ),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&want)),
            "missing `{want}` in:\n{out}"
        );
    }
    assert!(!out.contains("rate_limits.fine"), "{out}");
}
