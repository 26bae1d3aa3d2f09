//! Resilience through the real `tollgate` binary, in front of fault upstreams on loopback that refuse,
//! reset before the head, reset mid-body, hang, answer 503 in bursts or drip their answer. Each test
//! asserts what the upstreams saw, not only what the client got.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{sample, Gateway};

/// What a fault upstream does with one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// `200` with a small JSON body naming the target.
    Ok,
    /// This status, with a small body.
    Status(u16),
    /// Close with a TCP reset before any byte of the answer.
    ResetBeforeHead,
    /// Send the head and part of the body, then reset.
    ResetMidBody,
    /// Never answer (until the test ends).
    Hang,
    /// Send the head, then the body one byte every 100 ms.
    Drip,
    /// `200` after this many milliseconds.
    Delay(u64),
}

/// One request a fault upstream saw: method and path.
type Seen = (String, String);

/// A fault upstream: `default` for every request, unless a burst queued with [`FaultServer::then`] is
/// not used up yet.
struct FaultServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<(VecDeque<Fault>, Fault)>>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    fn start(name: &str, default: Fault) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new((VecDeque::new(), default)));
        let stop = Arc::new(AtomicBool::new(false));
        let (se, sc, st, nm) = (seen.clone(), script.clone(), stop.clone(), name.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (se, sc, st, nm) = (se.clone(), sc.clone(), st.clone(), nm.clone());
                std::thread::spawn(move || serve(conn, &nm, &se, &sc, &st));
            }
        });
        FaultServer {
            addr,
            seen,
            script,
            stop,
        }
    }

    /// The next `n` requests get `fault`, then the default again.
    fn then(&self, n: usize, fault: Fault) {
        let mut s = self.script.lock().unwrap();
        s.0.extend(std::iter::repeat_n(fault, n));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|(m, _)| m == method).count()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn reset(conn: TcpStream) {
    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    drop(conn);
}

fn serve(
    conn: TcpStream,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    script: &Mutex<(VecDeque<Fault>, Fault)>,
    stop: &AtomicBool,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if path == "/healthz" {
            // Active health checks pass, and are not counted as traffic.
            if conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        seen.lock().unwrap().push((method, path));
        let fault = {
            let mut s = script.lock().unwrap();
            let default = s.1;
            s.0.pop_front().unwrap_or(default)
        };
        let json = format!("{{\"target\":\"{name}\"}}");
        let answer = |status: u16, body: &str| {
            format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-target: {name}\r\n\r\n{body}",
                body.len()
            )
        };
        match fault {
            Fault::Ok => {
                if conn.write_all(answer(200, &json).as_bytes()).is_err() {
                    return;
                }
            }
            Fault::Delay(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                if conn.write_all(answer(200, &json).as_bytes()).is_err() {
                    return;
                }
            }
            Fault::Status(s) => {
                if conn.write_all(answer(s, &json).as_bytes()).is_err() {
                    return;
                }
            }
            Fault::ResetBeforeHead => return reset(conn),
            Fault::ResetMidBody => {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\npartial",
                );
                let _ = conn.flush();
                std::thread::sleep(Duration::from_millis(50));
                return reset(conn);
            }
            Fault::Hang => {
                let until = Instant::now() + Duration::from_secs(20);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Fault::Drip => {
                let body = b"0123456789";
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                for b in body {
                    std::thread::sleep(Duration::from_millis(100));
                    if conn.write_all(&[*b]).is_err() || stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

fn metrics(g: &Gateway) -> String {
    let r = g.admin_request("GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

/// The admin API's token in these tests.
const TOKEN: &str = "a-token-for-the-admin-api";

/// `GET /admin/upstreams`.
fn upstreams(g: &Gateway) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let r = g.admin_request("GET", "/admin/upstreams", &[&auth]);
    assert_eq!(r.status, 200);
    r.json()
}

/// `upstream`'s entry for target `addr` in `GET /admin/upstreams`.
fn target(g: &Gateway, upstream: &str, addr: SocketAddr) -> serde_json::Value {
    upstreams(g)[upstream]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} is not a target of {upstream}"))
        .clone()
}

fn get(g: &Gateway, path: &str) -> common::Response {
    common::request(g.addr, "GET", path, &[], None)
}

fn post(g: &Gateway, path: &str) -> common::Response {
    common::request(g.addr, "POST", path, &[], Some("{\"n\":1}"))
}

#[test]
fn a_reset_get_is_retried_on_the_other_target_and_a_reset_post_reaches_it_once() {
    let bad = FaultServer::start("bad", Fault::ResetBeforeHead);
    let good = FaultServer::start("good", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  pair:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    retry: {{ attempts: 2, when: [connect_failure, reset], backoff: 1ms, max_backoff: 2ms }}
routes:
  - {{ name: plain, match: {{ path_prefix: /plain }}, upstream: pair }}
  - {{ name: replay, match: {{ path_prefix: /replay }}, upstream: pair, retry: {{ non_idempotent: true }} }}
"#,
        bad.addr, good.addr
    );
    let gw = Gateway::start(&cfg);
    for i in 0..10 {
        let r = get(&gw, &format!("/plain/{i}"));
        assert_eq!(
            r.status,
            200,
            "GET {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-target"), Some("good"));
    }
    // Every GET ended on the good target; those that went to the bad one first were tried again.
    let first_bad = bad.count("GET");
    assert!(first_bad >= 1, "round robin sent some to the bad target");
    assert_eq!(good.count("GET"), 10);
    let retried = gw.wait_log(|l| l["tries"] == 2 && l["status"] == 200);
    assert_eq!(retried["target"], good.addr.to_string());

    // A POST that was sent is never sent again: the ones that met the reset fail.
    let mut failed = 0;
    for i in 0..10 {
        let r = post(&gw, &format!("/plain/p{i}"));
        match r.status {
            200 => {}
            502 => {
                assert_eq!(r.error_code(), "upstream_unavailable");
                failed += 1;
            }
            s => panic!("POST {i}: {s}"),
        }
    }
    assert!(failed >= 1);
    assert_eq!(
        bad.count("POST"),
        failed,
        "each failed POST reached the bad target once"
    );
    assert_eq!(
        good.count("POST") + bad.count("POST"),
        10,
        "no POST was sent twice"
    );

    // A route that opted in replays its POSTs.
    for i in 0..6 {
        let r = post(&gw, &format!("/replay/{i}"));
        assert_eq!(r.status, 200, "POST {i}");
    }
    let m = metrics(&gw);
    let resets = sample(
        &m,
        "tollgate_upstream_retries_total",
        &[("upstream", "pair"), ("reason", "reset")],
    );
    assert!(resets.unwrap_or(0.0) >= (first_bad + 1) as f64, "{m}");
}

#[test]
fn a_refused_connection_is_retried_elsewhere_whatever_the_method() {
    let good = FaultServer::start("good", Fault::Ok);
    let closed = common::free_port();
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  pair:
    targets: [{{ addr: "127.0.0.1:{closed}" }}, {{ addr: "{}" }}]
    retry: {{ attempts: 2, when: [connect_failure], backoff: 1ms, max_backoff: 1ms }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: pair }}
"#,
        good.addr
    );
    let gw = Gateway::start(&cfg);
    for i in 0..6 {
        assert_eq!(
            post(&gw, &format!("/{i}")).status,
            200,
            "nothing was sent to a refused target"
        );
    }
    assert_eq!(good.count("POST"), 6);
}

#[test]
fn a_reset_mid_body_is_never_retried() {
    let mid = FaultServer::start("mid", Fault::ResetMidBody);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  mid:
    targets: [{{ addr: "{}" }}]
    retry: {{ attempts: 3, when: [connect_failure, reset, timeout, 502, 503, 504], backoff: 1ms }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: mid }}
"#,
        mid.addr
    );
    let gw = Gateway::start(&cfg);
    let r = get(&gw, "/x");
    // The head went out before the reset: the client gets a cut answer, never a second one.
    assert_eq!(r.status, 200);
    assert!(r.body.len() < 100);
    let line = gw.wait_log(|l| l["route"] == "r");
    assert_eq!(line["tries"], 1);
    assert_eq!(mid.seen().len(), 1, "the upstream saw the request once");
}

#[test]
fn a_503_burst_is_retried_and_ejects_the_target_until_its_time_is_up() {
    // A burst of six 503s, then healthy.
    let bad = FaultServer::start("bad", Fault::Ok);
    bad.then(6, Fault::Status(503));
    let good = FaultServer::start("good", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1, admin: {{ listen: "{{admin}}", token: "{TOKEN}" }} }}
upstreams:
  pair:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    retry: {{ attempts: 2, when: [503], backoff: 1ms, max_backoff: 1ms }}
    outlier_detection: {{ consecutive_failures: 3, base_ejection: 2s, max_ejection: 10s }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: pair }}
"#,
        bad.addr, good.addr
    );
    let gw = Gateway::start(&cfg);
    for i in 0..20 {
        let r = get(&gw, &format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    // Three 503s in a row took it out; after that it saw nothing.
    assert_eq!(bad.seen().len(), 3);
    assert_eq!(good.seen().len(), 20);

    let out = target(&gw, "pair", bad.addr);
    let why = out["ejected"]["reason"].as_str().unwrap();
    assert!(
        why.contains("3 failures in a row") && why.contains("503"),
        "{why}"
    );
    assert_eq!(out["ejected"]["times"], 1);
    let kept = target(&gw, "pair", good.addr);
    assert!(kept["ejected"].is_null());

    let m = metrics(&gw);
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_ejections_total",
            &[("upstream", "pair")]
        ),
        Some(1.0)
    );
    let bad_label = bad.addr.to_string();
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_target_ejected",
            &[("target", bad_label.as_str())]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_retries_total",
            &[("upstream", "pair"), ("reason", "503")]
        ),
        Some(3.0)
    );

    // The ejection ends by itself: the target takes traffic again, fails three more times (the rest
    // of its burst), and is out again, for twice as long.
    std::thread::sleep(Duration::from_millis(2200));
    for i in 0..10 {
        assert_eq!(get(&gw, &format!("/back/{i}")).status, 200);
    }
    assert_eq!(bad.seen().len(), 6, "back in rotation, then out again");
    let out = target(&gw, "pair", bad.addr);
    assert_eq!(out["ejected"]["times"], 2);
    assert!(out["ejected"]["for_ms"].as_u64().unwrap() > 2000, "{out}");
}

#[test]
fn a_passing_active_check_brings_an_ejected_target_back_before_its_time() {
    let bad = FaultServer::start("bad", Fault::Ok);
    bad.then(2, Fault::Status(500));
    let good = FaultServer::start("good", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1, admin: {{ listen: "{{admin}}", token: "{TOKEN}" }} }}
upstreams:
  pair:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    outlier_detection: {{ consecutive_failures: 2, base_ejection: 10m, max_ejection: 10m }}
    health_check: {{ path: /healthz, interval: 200ms, timeout: 500ms, healthy: 1, unhealthy: 1 }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: pair }}
"#,
        bad.addr, good.addr
    );
    let gw = Gateway::start(&cfg);
    let ejected = |gw: &Gateway| !target(gw, "pair", bad.addr)["ejected"].is_null();
    // Two 500s (passed through: no retry is configured) eject it for ten minutes...
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bad.seen().len() < 2 {
        assert!(Instant::now() < deadline);
        statuses.push(get(&gw, "/x").status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 2);
    let m = metrics(&gw);
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_ejections_total",
            &[("upstream", "pair")]
        ),
        Some(1.0),
        "{m}"
    );
    // ...unless its health check passes first, as it does: back within a few checks, not 10 minutes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ejected(&gw) {
        assert!(
            Instant::now() < deadline,
            "still ejected after its checks passed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..10 {
        assert_eq!(get(&gw, &format!("/back/{i}")).status, 200);
    }
    assert!(bad.seen().len() > 2, "it takes traffic again");
}

#[test]
fn the_budget_stops_retries_under_a_total_failure() {
    let a = FaultServer::start("a", Fault::Status(503));
    let b = FaultServer::start("b", Fault::Status(503));
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  down:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    retry:
      attempts: 3
      when: [503]
      backoff: 1ms
      max_backoff: 1ms
      budget: {{ percent: 20, min_per_second: 0 }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: down }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&cfg);
    let n = 50;
    for i in 0..n {
        let r = get(&gw, &format!("/{i}"));
        assert_eq!(
            r.status, 503,
            "the upstream's own answer once retries are spent"
        );
    }
    let sent = a.seen().len() + b.seen().len();
    // Without a budget: 3 tries each (150). With it: the requests, plus at most a fifth in retries.
    assert!(sent > n, "some retries were made: {sent}");
    assert!(
        sent <= n + n / 5,
        "retries stayed within the budget: {sent}"
    );
    let m = metrics(&gw);
    let exhausted = sample(
        &m,
        "tollgate_upstream_retry_budget_exhausted_total",
        &[("upstream", "down")],
    );
    assert!(exhausted.unwrap_or(0.0) >= 1.0, "{m}");
}

#[test]
fn a_timeout_is_retried_when_asked_and_the_total_timeout_bounds_the_request() {
    let hang = FaultServer::start("hang", Fault::Hang);
    let hang2 = FaultServer::start("hang2", Fault::Hang);
    let good = FaultServer::start("good", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 2 }}
upstreams:
  some:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    timeouts: {{ read: 10s }}
    retry: {{ attempts: 2, when: [timeout], per_try_timeout: 300ms, backoff: 1ms }}
  none:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    timeouts: {{ read: 10s }}
    retry: {{ attempts: 10, when: [timeout], per_try_timeout: 300ms, timeout: 700ms, backoff: 1ms }}
routes:
  - {{ name: some, match: {{ path_prefix: /some }}, upstream: some }}
  - {{ name: none, match: {{ path_prefix: /none }}, upstream: none }}
"#,
        hang.addr, good.addr, hang.addr, hang2.addr
    );
    let gw = Gateway::start(&cfg);
    for i in 0..4 {
        let r = get(&gw, &format!("/some/{i}"));
        assert_eq!(
            r.status, 200,
            "a silent target's try is cut at 300ms and tried elsewhere"
        );
    }
    assert_eq!(good.seen().len(), 4);

    let before = hang.seen().len() + hang2.seen().len();
    let r = get(&gw, "/none/x");
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    let tries = hang.seen().len() + hang2.seen().len() - before;
    // 700 ms of total time fit two or three tries of 300 ms, not the ten allowed.
    assert!((2..=3).contains(&tries), "tries: {tries}");
    let line = gw.wait_log(|l| l["route"] == "none");
    assert_eq!(line["tries"].as_u64().unwrap() as usize, tries);
}

#[test]
fn the_circuit_breaker_refuses_at_once_and_other_routes_stay_served() {
    let drip = FaultServer::start("drip", Fault::Drip);
    let good = FaultServer::start("good", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 2 }}
upstreams:
  slow:
    targets: [{{ addr: "{}" }}]
    circuit_breaker: {{ max_requests: 2 }}
  fast: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow }}
  - {{ name: fast, match: {{ path_prefix: /fast }}, upstream: fast }}
"#,
        drip.addr, good.addr
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.addr;
    let held: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                common::request(addr, "GET", &format!("/slow/{i}"), &[], None)
            })
        })
        .collect();
    // Both slots taken once the drip upstream has seen both requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    while drip.seen().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the slow requests did not arrive"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = get(&gw, "/slow/third");
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "upstream_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The other upstream is not held up by the slow one.
    for i in 0..5 {
        let r = get(&gw, &format!("/fast/{i}"));
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        drip.seen().len(),
        2,
        "the refused request never reached the slow upstream"
    );
    for h in held {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"0123456789");
    }
    // Slots are given back: the next request passes.
    assert_eq!(get(&gw, "/slow/after").status, 200);
    let m = metrics(&gw);
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_overloaded_total",
            &[("upstream", "slow")]
        ),
        Some(1.0)
    );
}

/// Hits of each target for `n` requests sent `concurrency` at a time.
fn spread(gw: &Gateway, path: &str, n: usize, concurrency: usize) {
    let addr = gw.addr;
    let per = n / concurrency;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let path = path.to_string();
            std::thread::spawn(move || {
                for i in 0..per {
                    let r = common::request(addr, "GET", &format!("{path}/{w}/{i}"), &[], None);
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn least_request_and_ewma_send_less_to_the_slow_target() {
    let slow = FaultServer::start("slow", Fault::Delay(150));
    let fast = FaultServer::start("fast", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 2, admin: {{ listen: "{{admin}}", token: "{TOKEN}" }} }}
upstreams:
  lr: {{ targets: [{{ addr: "{s}" }}, {{ addr: "{f}" }}], balance: least_request }}
  ewma: {{ targets: [{{ addr: "{s}" }}, {{ addr: "{f}" }}], balance: ewma }}
  rr: {{ targets: [{{ addr: "{s}" }}, {{ addr: "{f}" }}] }}
routes:
  - {{ name: lr, match: {{ path_prefix: /lr }}, upstream: lr }}
  - {{ name: ewma, match: {{ path_prefix: /ewma }}, upstream: ewma }}
  - {{ name: rr, match: {{ path_prefix: /rr }}, upstream: rr }}
"#,
        s = slow.addr,
        f = fast.addr
    );
    let gw = Gateway::start(&cfg);
    let hits = |srv: &FaultServer, prefix: &str| {
        srv.seen()
            .iter()
            .filter(|(_, p)| p.starts_with(prefix))
            .count()
    };
    // Round robin, the control: an even split whatever the latency.
    spread(&gw, "/rr", 40, 4);
    assert_eq!(hits(&slow, "/rr"), 20);
    // Least request: with 4 at a time, the slow target holds its requests longer and gets fewer.
    spread(&gw, "/lr", 40, 4);
    let (s, f) = (hits(&slow, "/lr"), hits(&fast, "/lr"));
    assert!(s * 2 < f, "least_request: slow {s}, fast {f}");
    // EWMA: one at a time, in-flight counts are equal; only latency tells them apart.
    spread(&gw, "/ewma", 30, 1);
    let (s, f) = (hits(&slow, "/ewma"), hits(&fast, "/ewma"));
    assert!(s <= 3, "ewma: slow {s}, fast {f}");
    let slow_ms = target(&gw, "ewma", slow.addr)["latency_ewma_ms"]
        .as_f64()
        .unwrap();
    assert!(slow_ms >= 100.0, "{slow_ms}");
}

#[test]
fn a_new_target_ramps_up_under_slow_start() {
    let old = FaultServer::start("old", Fault::Ok);
    let new = FaultServer::start("new", Fault::Ok);
    let cfg = |targets: String| {
        format!(
            r#"
server: {{ listen: ["{{listen}}"], threads: 1, admin: {{ listen: "{{admin}}", token: "{TOKEN}" }} }}
upstreams:
  u: {{ targets: [{targets}], slow_start: 4s }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}
"#
        )
    };
    let gw = Gateway::start(&cfg(format!("{{ addr: \"{}\" }}", old.addr)));
    assert_eq!(get(&gw, "/warm").status, 200);
    let both = format!("{{ addr: \"{}\" }}, {{ addr: \"{}\" }}", old.addr, new.addr);
    let (o, n) = (old.addr.to_string(), new.addr.to_string());
    gw.reload(|text| text.replace(&format!("{{ addr: \"{o}\" }}"), &both));
    // The reload is in when the admin API lists the new target.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ups = upstreams(&gw);
        if ups["u"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["addr"] == n.as_str())
        {
            break;
        }
        assert!(Instant::now() < deadline, "the reload did not take");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its first second: from a tenth to a third of its round-robin half.
    for i in 0..60 {
        assert_eq!(get(&gw, &format!("/early/{i}")).status, 200);
    }
    let early = new
        .seen()
        .iter()
        .filter(|(_, p)| p.starts_with("/early"))
        .count();
    assert!(
        early < 20,
        "slow start: the new target got {early} of 60 at first"
    );
    // After the ramp, its full share.
    std::thread::sleep(Duration::from_secs(4));
    for i in 0..60 {
        assert_eq!(get(&gw, &format!("/late/{i}")).status, 200);
    }
    let late = new
        .seen()
        .iter()
        .filter(|(_, p)| p.starts_with("/late"))
        .count();
    assert!((25..=35).contains(&late), "after the ramp: {late} of 60");
}

#[test]
fn resilience_config_errors_are_placed() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        r#"server: { listen: ["127.0.0.1:1"] }
upstreams:
  u:
    targets: [{ addr: "127.0.0.1:9" }]
    retries: 2
    retry: { attempts: 0, when: [404] }
  v:
    targets: [{ addr: "127.0.0.1:9" }]
    outlier_detection: { max_ejected_percent: 150 }
    circuit_breaker: { max_requests: 0 }
  w: { targets: [{ addr: "127.0.0.1:9" }] }
routes:
  - { name: r, match: { path_prefix: / }, upstream: w, retry: { budget: { percent: 10 } } }
"#,
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let (code, out, err) = common::tollgate(&["validate", path]);
    assert_ne!(code, 0);
    let err = format!("{out}{err}");
    for want in [
        format!("{path}:5:14: error: upstreams.u.retries: `retries` is shorthand"),
        format!("{path}:6:24: error: upstreams.u.retry.attempts: must be from 1 (no retry) to 10, got 0"),
        format!("{path}:6:34: error: upstreams.u.retry.when[0]: status 404 is not a server error"),
        format!("{path}:9:47: error: upstreams.v.outlier_detection.max_ejected_percent: must be from 0 to 100, got 150"),
        format!("{path}:10:38: error: upstreams.v.circuit_breaker.max_requests: must be at least 1, got 0"),
        format!("{path}:13:"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains("error: routes[0].retry.budget: a retry budget belongs to the upstream"),
        "{err}"
    );
}

#[test]
fn an_ejected_only_target_still_serves_and_a_retried_body_is_counted_once() {
    // One target: after two 500s it is "ejected", but passive health alone never empties an upstream.
    let only = FaultServer::start("only", Fault::Ok);
    only.then(2, Fault::Status(500));
    // A PUT whose first try meets a reset is sent again; `body_limit` must not count it twice.
    let bad = FaultServer::start("bad", Fault::ResetBeforeHead);
    let good = FaultServer::start("good", Fault::Ok);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
upstreams:
  one:
    targets: [{{ addr: "{}" }}]
    outlier_detection: {{ consecutive_failures: 2, base_ejection: 10m, max_ejection: 10m }}
  pair:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    retry: {{ attempts: 2, when: [reset], backoff: 1ms, max_backoff: 1ms }}
routes:
  - {{ name: one, match: {{ path_prefix: /one }}, upstream: one }}
  - {{ name: put, match: {{ path_prefix: /put }}, upstream: pair, plugins: [{{ body_limit: {{ max: 100B }} }}] }}
"#,
        only.addr, bad.addr, good.addr
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(get(&gw, "/one/a").status, 500);
    assert_eq!(get(&gw, "/one/b").status, 500);
    let m = metrics(&gw);
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_ejections_total",
            &[("upstream", "one")]
        ),
        Some(1.0)
    );
    for i in 0..3 {
        assert_eq!(
            get(&gw, &format!("/one/after/{i}")).status,
            200,
            "panic mode"
        );
    }
    assert_eq!(only.seen().len(), 5);

    let body = "x".repeat(60);
    for i in 0..4 {
        let r = common::request(gw.addr, "PUT", &format!("/put/{i}"), &[], Some(&body));
        assert_eq!(
            r.status,
            200,
            "PUT {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(
        bad.count("PUT") >= 1,
        "some PUTs met the reset and were sent again"
    );
    assert_eq!(good.count("PUT"), 4);
    // Over the limit is still refused, retried or not.
    let big = "x".repeat(150);
    assert_eq!(
        common::request(gw.addr, "PUT", "/put/big", &[], Some(&big)).status,
        413
    );
}
