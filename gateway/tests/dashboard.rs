//! The admin dashboard in a real browser: the `tollgate` binary with traffic through it, the page
//! loaded in headless Chromium (see `browser/`), its numbers read from what the page shows.
//!
//! Checks that without the token the page shows nothing (and the data endpoint answers 401), that the
//! figures move between refreshes, that a reload appears in the history, that an upstream target
//! whose health checks fail shows as unhealthy while the other stays healthy, and that a route name
//! made of markup is shown as text. Saves a screenshot
//! (`dashboard.png` in Cargo's test temp folder, e.g. `target/tmp/`) as the test's artifact; the
//! README's picture is a copy of it.
#![allow(clippy::unwrap_used)]

use crate::browser;
use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use browser::Browser;
use common::{request, Backend, Gateway, Mode};
use serde_json::Value;

const TOKEN: &str = "dashboard-test-token-0123456789";
/// The longest wait for something the page should show (it refreshes every second; the bound is for
/// a machine busy with the rest of the suite).
const WAIT: Duration = Duration::from_secs(30);

fn config(a: &Backend, b: &Backend) -> String {
    format!(
        r#"server:
  listen: ["{{listen}}"]
  admin: {{ listen: "{{admin}}", token: "{TOKEN}" }}
rate_limits:
  tight: {{ requests: 2, per: 1m }}
upstreams:
  api:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    health_check: {{ path: /healthz, interval: 200ms, unhealthy: 1 }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: api
  - name: limited
    match: {{ path_prefix: /limited }}
    upstream: api
    plugins: [{{ rate_limit: tight }}]
"#,
        a.addr, b.addr
    )
}

/// Requests through the gateway until dropped: mostly `/api` (two upstream targets, a few ms each),
/// some to the rate-limited route (429 after the first two) and some that match no route (404).
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: std::net::SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let path = match i % 10 {
                    0 => "/limited/x",
                    5 => "/nowhere",
                    _ => "/api/items",
                };
                let raw =
                    format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n");
                common::send(addr, raw.as_bytes());
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rows of table `id` as shown: each row's data attributes and its cells' text by class.
fn rows(b: &mut Browser, id: &str) -> Vec<Value> {
    let js = format!(
        r##"JSON.stringify([...document.querySelectorAll("#{id} tbody tr")].map(tr => {{
            const row = {{ ...tr.dataset }};
            for (const td of tr.cells) for (const c of td.classList) row["cell_" + c] = td.textContent;
            return row;
        }}))"##
    );
    let text = b.eval(&js);
    serde_json::from_str(text.as_str().unwrap()).unwrap()
}

fn refreshes(b: &mut Browser) -> u64 {
    b.eval("Number(document.body.dataset.refreshes || 0)")
        .as_u64()
        .unwrap_or(0)
}

/// The row of `route` in the routes table, once the page shows one.
fn route_row(b: &mut Browser, route: &str) -> Option<Value> {
    rows(b, "routes").into_iter().find(|r| r["route"] == route)
}

/// A shown number ("12.5", "3.20 ms", "7"); `None` for "–".
fn number(v: &Value) -> Option<f64> {
    v.as_str()?.split_whitespace().next()?.parse().ok()
}

/// Wait for the page's next refresh after the current one.
fn next_refresh(b: &mut Browser) {
    let n = refreshes(b);
    b.wait_for("a refresh", WAIT, |b| (refreshes(b) > n).then_some(()));
}

#[test]
fn the_dashboard_shows_live_figures_and_upstream_health_in_a_browser() {
    let t0 = std::time::Instant::now();
    // Progress on stderr (shown for a failing test): which step a timeout happened in.
    let step = |what: &str| eprintln!("[{:>6.2}s] {what}", t0.elapsed().as_secs_f64());
    let a = Backend::start("a", Mode::Delay(3));
    let bad = Backend::start("b", Mode::Delay(3));
    let gw = Gateway::start(&config(&a, &bad));
    let admin = gw.admin;

    // Without the token: the data is refused, whatever the page does.
    let r = request(admin, "GET", "/admin/dashboard/data", &[], None);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let r = request(
        admin,
        "GET",
        "/admin/dashboard/data",
        &["Authorization: Bearer not-the-token"],
        None,
    );
    assert_eq!(r.status, 401);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = request(admin, "GET", "/admin/dashboard/data", &[&auth], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let data = r.json();
    let names: Vec<&Value> = data["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["name"])
        .collect();
    assert!(names.contains(&&Value::from("api")), "{data}");
    // The shell is the embedded page as is (nothing of the config in it), with strict headers.
    let page = request(admin, "GET", "/admin/dashboard", &[], None);
    assert_eq!(page.status, 200);
    assert_eq!(page.body, tollgate::dashboard::PAGE_HTML.as_bytes());
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let js = request(admin, "GET", "/admin/dashboard/app.js", &[], None);
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/javascript"));

    step("gateway up, plain checks done; traffic, browser");
    let _traffic = Traffic::start(gw.addr);
    let mut b = Browser::launch(1280, 1000);
    let url = format!("http://{admin}/admin/dashboard");
    b.navigate(&url);

    step("page loaded");
    // No token yet: the page asks for it and shows no figures; its own fetch without one gets 401.
    b.wait_for("the token form", WAIT, |b| {
        (b.eval("!document.getElementById('login').hidden") == true).then_some(())
    });
    assert_eq!(b.eval("document.getElementById('board').hidden"), true);
    assert!(route_row(&mut b, "api").is_none());
    assert_eq!(
        b.eval("fetch('/admin/dashboard/data').then(r => r.status)"),
        401
    );

    // A wrong token is refused and forgotten.
    let login = |b: &mut Browser, token: &str| {
        b.eval(&format!(
            "document.getElementById('token').value = {}; \
             document.getElementById('login').requestSubmit(); true",
            serde_json::to_string(token).unwrap()
        ));
    };
    login(&mut b, "wrong-token-wrong-token");
    b.wait_for("the refusal", WAIT, |b| {
        let msg = b.eval("document.getElementById('login-error').textContent");
        msg.as_str()
            .is_some_and(|m| m.contains("refused"))
            .then_some(())
    });
    assert_eq!(b.eval("sessionStorage.length"), 0);
    assert!(route_row(&mut b, "api").is_none());

    step("wrong token refused");
    // The token: the board shows, and its figures move from one refresh to the next.
    login(&mut b, TOKEN);
    let first = b.wait_for("request rates", WAIT, |b| {
        route_row(b, "api").filter(|r| number(&r["cell_rps"]).is_some_and(|v| v > 0.0))
    });
    assert!(number(&first["cell_p50"]).is_some(), "{first}");
    assert!(number(&first["cell_p99"]).is_some(), "{first}");
    assert_eq!(first["cell_upstream"], "api");
    // The token never went into the URL.
    assert_eq!(b.eval("location.href"), Value::String(url.clone()));
    step("figures shown");
    next_refresh(&mut b);
    next_refresh(&mut b);
    let second = route_row(&mut b, "api").unwrap();
    let total = |r: &Value| number(&r["cell_total"]).unwrap();
    assert!(
        total(&second) > total(&first),
        "the total did not move: {first} then {second}"
    );
    // 4xx: the rate-limited route's 429s, and the requests that matched no route.
    b.wait_for("4xx on the limited route", WAIT, |b| {
        route_row(b, "limited").filter(|r| number(&r["cell_rps4xx"]).is_some_and(|v| v > 0.0))
    });
    b.wait_for("the unrouted row", WAIT, |b| {
        route_row(b, "").filter(|r| number(&r["cell_total"]).is_some_and(|v| v > 0.0))
    });
    let limits = b.wait_for("rate-limit rejections", WAIT, |b| {
        rows(b, "limits").into_iter().find(|r| {
            r["policy"] == "tight" && number(&r["cell_rejections"]).is_some_and(|v| v > 0.0)
        })
    });
    assert_eq!(limits["cell_policy"], "tight");

    step("4xx, unrouted and rejections shown");
    // Both targets healthy; a reload appears in the history.
    let targets = rows(&mut b, "targets");
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(
        targets.iter().all(|t| t["state"] == "healthy"),
        "{targets:?}"
    );
    gw.reload(|t| t.replace("requests: 2,", "requests: 3,"));
    let v2 = b.wait_for("version 2 in the reload history", WAIT, |b| {
        rows(b, "reloads").into_iter().find(|r| r["version"] == "2")
    });
    let shown = v2.to_string();
    assert!(
        shown.contains("applied") && shown.contains("~ rate limit tight"),
        "{shown}"
    );

    step("reload shown");
    // Target b's health checks fail: the page shows it unhealthy, a still healthy.
    bad.healthy.store(false, Ordering::Relaxed);
    let b_addr = bad.addr.to_string();
    let row = b.wait_for("target b unhealthy", WAIT, |b| {
        rows(b, "targets")
            .into_iter()
            .find(|t| t["target"] == b_addr.as_str() && t["state"] == "unhealthy")
    });
    assert_eq!(row["cell_state"], "unhealthy");
    let a_row = rows(&mut b, "targets")
        .into_iter()
        .find(|t| t["target"] == a.addr.to_string().as_str())
        .unwrap();
    assert_eq!(a_row["state"], "healthy", "{a_row}");
    // Traffic still flows (to a): the figures keep moving.
    let before = total(&route_row(&mut b, "api").unwrap());
    next_refresh(&mut b);
    next_refresh(&mut b);
    assert!(total(&route_row(&mut b, "api").unwrap()) > before);

    step("unhealthy target shown");
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());

    // A name from the config is shown as text, never run as markup.
    const HOSTILE: &str = "<img src=x onerror=document.title=1>";
    gw.reload(|t| {
        format!(
            "{t}  - name: '{HOSTILE}'\n    match: {{ path_prefix: /hostile }}\n    upstream: api\n"
        )
    });
    let row = b.wait_for("the hostile route's row", WAIT, |b| route_row(b, HOSTILE));
    assert_eq!(row["cell_name"], HOSTILE);
    assert_eq!(b.eval("document.querySelectorAll('img').length"), 0);
    assert_eq!(b.eval("document.title"), "Tollgate dashboard");
}

#[test]
fn without_an_admin_token_the_dashboard_is_off_like_the_rest_of_admin() {
    let a = Backend::start("a", Mode::Echo);
    let cfg = config(&a, &a).replace(&format!(", token: \"{TOKEN}\""), "");
    let gw = Gateway::start(&cfg);
    // `start` waits for the public listener; this waits for the admin one too.
    assert_eq!(gw.admin_request("GET", "/healthz", &[]).status, 200);
    for path in [
        "/admin/dashboard",
        "/admin/dashboard/app.js",
        "/admin/dashboard/data",
    ] {
        let r = request(gw.admin, "GET", path, &[], None);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.error_code(), "admin_disabled", "{path}");
    }
}

#[test]
fn the_dashboard_endpoints_take_only_their_methods() {
    let a = Backend::start("a", Mode::Echo);
    let gw = Gateway::start(&config(&a, &a));
    let auth = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(gw.admin_request("GET", "/healthz", &[]).status, 200);
    for path in ["/admin/dashboard", "/admin/dashboard/data"] {
        let r = request(gw.admin, "POST", path, &[&auth], Some("{}"));
        assert_eq!(r.status, 405, "{path}");
    }
    // Nothing else under the page's prefix is served (no file lookup behind it).
    let r = request(
        gw.admin,
        "GET",
        "/admin/dashboard/../config",
        &[&auth],
        None,
    );
    assert_ne!(r.status, 200);
    let r = request(
        gw.admin,
        "GET",
        "/admin/dashboard/index.html",
        &[&auth],
        None,
    );
    assert_eq!(r.status, 404);
}
