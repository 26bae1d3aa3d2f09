//! Composition routes: one client request, several upstream calls, one JSON answer. Real upstreams on
//! loopback (small JSON services whose answers, delays and failures each test decides), the gateway
//! as the binary or in process.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Gateway;
use serde_json::{json, Value};

/// What a service answers: status, JSON body, and how long it waits first.
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

fn ok(v: Value) -> Answer {
    Answer {
        status: 200,
        body: v.to_string(),
        delay: Duration::ZERO,
    }
}

fn slow(v: Value, ms: u64) -> Answer {
    Answer {
        delay: Duration::from_millis(ms),
        ..ok(v)
    }
}

type Handler = dyn Fn(&str) -> Answer + Send + Sync;
/// Requests a service received: path and headers (lower-case names), in arrival order.
type Seen = Mutex<Vec<(String, Vec<(String, String)>)>>;

/// A JSON service on 127.0.0.1: answers by `handler(path)`, records each request (path and headers),
/// and counts requests whose client went away while it was still waiting to answer.
struct Api {
    addr: SocketAddr,
    seen: Arc<Seen>,
    cancelled: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Api {
    fn start(handler: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Api {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cancelled = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s2, c2, st2) = (seen.clone(), cancelled.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (h, s, c) = (handler.clone(), s2.clone(), c2.clone());
                std::thread::spawn(move || serve(conn, &*h, &s, &c));
            }
        });
        Api {
            addr,
            seen,
            cancelled,
            stop,
        }
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn header(&self, i: usize, name: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        let (_, headers) = seen.get(i)?;
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, handler: &Handler, seen: &Seen, cancelled: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        seen.lock().unwrap().push((path.clone(), headers));
        let answer = handler(&path);
        if !answer.delay.is_zero() {
            // Wait, watching for the client to go away (a read of 0 bytes).
            let end = Instant::now() + answer.delay;
            conn.set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            let mut probe = [0u8; 1];
            while Instant::now() < end {
                match conn.peek(&mut probe) {
                    Ok(0) => {
                        cancelled.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            conn.set_read_timeout(None).unwrap();
        }
        let resp = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            answer.status,
            answer.body.len(),
            answer.body
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Orders, users and products services as the demo has them.
fn shop(delay_ms: u64) -> (Api, Api, Api) {
    let orders = Api::start(move |p| match p {
        "/orders/7" => slow(
            json!({"id": 7, "user_id": 42, "items": [{"product_id": 1, "qty": 2}, {"product_id": 2, "qty": 1}]}),
            delay_ms,
        ),
        p if p.starts_with("/orders?user_id=42") => slow(json!([{"id": 7}, {"id": 9}]), delay_ms),
        _ => Answer {
            status: 404,
            body: "{}".into(),
            delay: Duration::ZERO,
        },
    });
    let users = Api::start(move |p| match p {
        "/users/42" => slow(
            json!({"id": 42, "name": "Ada", "email": "ada@example.com"}),
            delay_ms,
        ),
        _ => Answer {
            status: 404,
            body: "{}".into(),
            delay: Duration::ZERO,
        },
    });
    let products = Api::start(move |p| {
        let id: u64 = p.trim_start_matches("/products/").parse().unwrap_or(0);
        slow(json!({"id": id, "name": format!("product {id}")}), delay_ms)
    });
    (orders, users, products)
}

fn upstreams(orders: &Api, users: &Api, products: &Api) -> String {
    format!(
        r#"upstreams:
  orders: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 5s }} }}
  users: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 5s }} }}
  products: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 5s }} }}
"#,
        orders.addr, users.addr, products.addr
    )
}

#[test]
fn independent_calls_run_in_parallel_and_dependent_ones_as_soon_as_they_can() {
    let (orders, users, products) = shop(300);
    // Three independent calls of 300 ms each: about 300 ms together, not 900.
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"] }}
{}
routes:
  - name: parallel
    match: {{ path: "/api/dash/{{id}}" }}
    compose:
      calls:
        order:   {{ upstream: orders, path: "/orders/{{id}}" }}
        user:    {{ upstream: users, path: "/users/42" }}
        product: {{ upstream: products, path: "/products/1" }}
  - name: details
    match: {{ path: "/api/orders/{{id}}/details", methods: [GET] }}
    compose:
      calls:
        order:    {{ upstream: orders, path: "/orders/{{id}}" }}
        customer: {{ upstream: users, path: "/users/{{order.user_id}}" }}
        products: {{ upstream: products, path: "/products/{{order.items[].product_id}}" }}
      response:
        id: "{{order.id}}"
        customer: {{ name: "{{customer.name}}", email: "{{customer.email}}" }}
        lines: "{{order.items}}"
        products: "{{products}}"
        names: "{{products[].name}}"
        summary: "order {{order.id}} for {{customer.name}}"
"#,
        upstreams(&orders, &users, &products)
    );
    // The real binary, as deployed.
    let gw = Gateway::start(&cfg);
    let t = Instant::now();
    let r = gw.get("/api/dash/7");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["order"]["id"], 7);
    assert_eq!(v["user"]["name"], "Ada");
    assert_eq!(v["product"]["id"], 1);
    assert!(v.get("errors").is_none(), "{v}");
    assert!(
        took < Duration::from_millis(750),
        "three 300 ms calls in parallel took {took:?}"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));

    // A chain: the order first (300 ms), then its customer and its two products together (300 ms).
    let t = Instant::now();
    let r = gw.get("/api/orders/7/details");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        took >= Duration::from_millis(600),
        "dependent calls waited: {took:?}"
    );
    assert!(
        took < Duration::from_millis(1100),
        "the second wave ran in parallel: {took:?}"
    );
    let v = r.json();
    assert_eq!(v["id"], 7);
    assert_eq!(
        v["customer"],
        json!({"name": "Ada", "email": "ada@example.com"})
    );
    assert_eq!(v["lines"][1]["product_id"], 2);
    assert_eq!(v["products"][0]["name"], "product 1");
    assert_eq!(v["products"][1]["name"], "product 2");
    assert_eq!(v["names"], json!(["product 1", "product 2"]));
    assert_eq!(v["summary"], "order 7 for Ada");
    let mut p = products.paths();
    p.sort();
    assert_eq!(p, ["/products/1", "/products/1", "/products/2"]);
    assert!(users.paths().iter().all(|p| p == "/users/42"));

    // Every call carries the request id, X-Forwarded-* and a traceparent of the same trace.
    let r = gw.send("GET /api/orders/7/details HTTP/1.1\r\nHost: shop.test\r\nX-Request-Id: rid-1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let last = users.seen.lock().unwrap().len() - 1;
    assert_eq!(users.header(last, "x-request-id").as_deref(), Some("rid-1"));
    assert_eq!(
        users.header(last, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        users.header(last, "x-forwarded-host").as_deref(),
        Some("shop.test")
    );
    assert_eq!(
        users.header(last, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    let tp = users.header(last, "traceparent").unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(!tp.contains("b7ad6b7169203331"), "a span of its own: {tp}");
    // The access log lists the calls.
    let line = gw.wait_log(|l| l["request_id"] == "rid-1");
    assert_eq!(line["route"], "details");
    let calls = line["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4, "{line}");
    assert!(calls.iter().all(|c| c["status"] == 200), "{line}");
    assert!(calls
        .iter()
        .any(|c| c["call"] == "products" && c["index"] == 1));
    // Per-call metrics.
    let m = gw.admin_request("GET", "/metrics", &[]);
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(
            r#"tollgate_aggregate_call_duration_seconds_count{call="customer",route="details"}"#
        ),
        "{text}"
    );
}

fn compose_gateway(routes: &str, orders: &Api, users: &Api, products: &Api) -> Gateway {
    Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}\n{}routes:\n{routes}",
        upstreams(orders, users, products)
    ))
}

#[test]
fn fan_out_is_capped_in_calls_and_in_concurrency() {
    let (orders, users, _) = shop(0);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, pk) = (in_flight.clone(), peak.clone());
    let products = Api::start(move |p| {
        let now = f.fetch_add(1, Ordering::SeqCst) + 1;
        pk.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        f.fetch_sub(1, Ordering::SeqCst);
        ok(json!({"path": p}))
    });
    let many = Api::start(|_| ok(json!({"ids": (1..=10).collect::<Vec<_>>()})));
    let gw = Gateway::in_process(&format!(
        r#"server: {{ listen: ["{{listen}}"] }}
{}  many: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: capped
    match: {{ path: /capped }}
    compose:
      calls:
        list:  {{ upstream: many, path: /list }}
        items: {{ upstream: products, path: "/products/{{list.ids[]}}", max_calls: 5 }}
  - name: throttled
    match: {{ path: /throttled }}
    compose:
      concurrency: 3
      calls:
        list:  {{ upstream: many, path: /list }}
        items: {{ upstream: products, path: "/products/{{list.ids[]}}" }}
"#,
        upstreams(&orders, &users, &products),
        many.addr
    ));
    // Ten elements, five allowed: the call fails before any request, and it is required.
    let r = gw.get("/capped");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error"]["code"], "too_many_calls");
    assert_eq!(v["error"]["call"], "items");
    assert!(products.paths().is_empty(), "no call was made past the cap");
    // Ten calls, three at a time.
    let r = gw.get("/throttled");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 10);
    assert_eq!(products.paths().len(), 10);
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(peak.load(Ordering::SeqCst) >= 2, "they did overlap");
}

#[test]
fn an_optional_call_down_gives_a_partial_answer_and_a_required_one_fails_it() {
    let (orders, users, products) = shop(0);
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hang = Api::start(|_| slow(json!({}), 3_000));
    let gw = Gateway::in_process(&format!(
        r#"server: {{ listen: ["{{listen}}"] }}
{}  dead: {{ targets: [{{ addr: "{dead}" }}] }}
  hang: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: partial
    match: {{ path: "/orders/{{id}}/partial" }}
    compose:
      calls:
        order: {{ upstream: orders, path: "/orders/{{id}}" }}
        reviews: {{ upstream: dead, path: "/reviews/{{order.id}}", required: false }}
        recs: {{ upstream: dead, path: "/recs/{{reviews.id}}", required: false }}
  - name: required-down
    match: {{ path: /required-down }}
    compose:
      calls:
        order: {{ upstream: orders, path: /orders/7 }}
        reviews: {{ upstream: dead, path: /reviews }}
  - name: required-slow
    match: {{ path: /required-slow }}
    compose:
      calls:
        order: {{ upstream: orders, path: /orders/7 }}
        slow: {{ upstream: hang, path: /slow, timeout: 200ms }}
  - name: deadline
    match: {{ path: /deadline }}
    compose:
      timeout: 300ms
      calls:
        order: {{ upstream: orders, path: /orders/7 }}
        slow: {{ upstream: hang, path: /slow, required: false }}
  - name: not-found
    match: {{ path: "/orders/{{id}}/nf" }}
    compose:
      calls:
        order: {{ upstream: orders, path: "/orders/{{id}}" }}
"#,
        upstreams(&orders, &users, &products),
        hang.addr
    ));
    let r = gw.get("/orders/7/partial");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["order"]["id"], 7);
    assert_eq!(v["reviews"], Value::Null);
    assert_eq!(v["recs"], Value::Null);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["call"], "reviews");
    assert_eq!(errors[0]["code"], "upstream_unavailable");
    assert_eq!(errors[1]["call"], "recs");
    assert_eq!(errors[1]["code"], "dependency_failed");
    assert_eq!(r.header("tollgate-partial"), Some("reviews, recs"));

    let r = gw.get("/required-down");
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v["error"]["call"], "reviews");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`reviews`"));

    let t = Instant::now();
    let r = gw.get("/required-slow");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "call_timeout");
    assert_eq!(r.json()["error"]["call"], "slow");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "bounded by the call's timeout"
    );

    // The composition's deadline: what is done is answered, the optional call left is an error.
    let t = Instant::now();
    let r = gw.get("/deadline");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(2));
    let v = r.json();
    assert_eq!(v["order"]["id"], 7);
    assert_eq!(v["errors"][0]["code"], "compose_timeout");

    // A required call's 404 is the client's answer: the order does not exist.
    let r = gw.get("/orders/8/nf");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["call"], "order");
    // Failed calls are counted by reason.
    let m = gw.admin_request("GET", "/metrics", &[]);
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains(
        r#"tollgate_aggregate_call_errors_total{call="reviews",reason="upstream_unavailable",route="partial"} 1"#
    ), "{text}");
}

#[test]
fn a_client_that_goes_away_cancels_the_calls_in_flight() {
    let slow_api = Api::start(|_| slow(json!({"ok": true}), 3_000));
    let gw = Gateway::in_process(&format!(
        r#"server: {{ listen: ["{{listen}}"] }}
upstreams:
  slow: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: slow
    match: {{ path: /slow }}
    compose:
      calls:
        a: {{ upstream: slow, path: /a }}
        b: {{ upstream: slow, path: /b }}
"#,
        slow_api.addr
    ));
    let mut c = TcpStream::connect(gw.addr).unwrap();
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while slow_api.paths().len() < 2 {
        assert!(Instant::now() < deadline, "the calls were made");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(2);
    while slow_api.cancelled.load(Ordering::Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "both calls were cancelled, not left to run out: {}",
            slow_api.cancelled.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let line = gw.wait_log(|l| l["route"] == "slow");
    assert_eq!(line["status"], 499, "{line}");
}

#[test]
fn the_chain_runs_once_before_any_call_and_identity_reaches_every_call() {
    let (orders, users, products) = shop(0);
    let secret = "compose-test-secret-0123456789abcdef";
    let gw = Gateway::in_process(&format!(
        r#"server: {{ listen: ["{{listen}}"] }}
auth:
  jwt:
    demo: {{ algorithms: [HS256], secret: "{secret}", issuer: t, audience: api }}
{}routes:
  - name: me
    match: {{ path: /api/me }}
    plugins: [{{ jwt: {{ provider: demo, forward_claims: {{ sub: X-User-Id }} }} }}]
    compose:
      calls:
        user:   {{ upstream: users, path: "/users/{{claims.sub}}" }}
        who:    {{ upstream: users, path: "/users/{{header.x-user-id}}", required: false }}
        orders: {{ upstream: orders, path: "/orders?user_id={{claims.sub}}&limit={{query.limit|5}}", headers: {{ accept-language: "{{header.accept-language|en}}" }} }}
"#,
        upstreams(&orders, &users, &products)
    ));
    // No token: 401 from the chain, and no service saw anything.
    let r = gw.get("/api/me");
    assert_eq!(r.status, 401);
    assert!(users.paths().is_empty() && orders.paths().is_empty());
    // A POST is not composed: 405 with Allow.
    let r = common::request(gw.addr, "POST", "/api/me", &[], Some("{}"));
    assert_eq!(r.status, 405);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "42", "iss": "t", "aud": "api", "exp": jsonwebtoken::get_current_timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let r = common::request(
        gw.addr,
        "GET",
        "/api/me?limit=2",
        &[&auth, "X-User-Id: 1"],
        None,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["user"]["name"], "Ada");
    assert_eq!(v["orders"], json!([{"id": 7}, {"id": 9}]));
    assert_eq!(orders.paths(), ["/orders?user_id=42&limit=2"]);
    // `{header.x-user-id}` is the chain's identity header, not the client's forged `X-User-Id: 1`.
    assert_eq!(v["who"]["name"], "Ada", "{v}");
    assert!(
        users.paths().iter().all(|p| p == "/users/42"),
        "{:?}",
        users.paths()
    );
    // The chain's identity header, never the client's copy; the template's header with its default.
    assert_eq!(users.header(0, "x-user-id").as_deref(), Some("42"));
    assert_eq!(orders.header(0, "x-user-id").as_deref(), Some("42"));
    assert_eq!(orders.header(0, "accept-language").as_deref(), Some("en"));
    assert!(
        users.header(0, "authorization").is_none(),
        "only what the call says is sent"
    );
}

#[test]
fn values_from_data_cannot_climb_the_path_or_add_parameters() {
    let orders = Api::start(|_| {
        ok(json!({"user_id": "../admin", "other": "1/2?x=y", "dot": ".", "pct": "%2e%2e"}))
    });
    let users = Api::start(|p| ok(json!({ "path": p })));
    let products = Api::start(|_| ok(json!({})));
    let gw = compose_gateway(
        r#"  - name: climb
    match: { path: /climb }
    compose:
      calls:
        order: { upstream: orders, path: /o }
        user: { upstream: users, path: "/users/{order.user_id}/x", required: false }
        pct: { upstream: users, path: "/users/{order.pct}", required: false }
        side: { upstream: users, path: "/users/.{order.dot}", required: false }
        inq: { upstream: users, path: "/users/q?v={order.other}" }
"#,
        &orders,
        &users,
        &products,
    );
    let r = gw.get("/climb");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    // In a query value, encoded whole: it cannot add a parameter.
    assert_eq!(v["inq"]["path"], "/users/q?v=1%2F2%3Fx%3Dy");
    // In the path, `../admin`, an escape, and a dot segment made of two pieces are refused.
    for call in ["user", "pct", "side"] {
        assert_eq!(v[call], Value::Null, "{call}: {v}");
        let e = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["call"] == call)
            .unwrap();
        assert_eq!(e["code"], "missing_value", "{e}");
    }
    assert_eq!(
        users.paths(),
        ["/users/q?v=1%2F2%3Fx%3Dy"],
        "nothing else reached the service"
    );
}

#[test]
fn a_reload_changes_a_composition_live() {
    let (orders, users, products) = shop(0);
    let gw = compose_gateway(
        r#"  - name: c
    match: { path: /c }
    compose:
      calls:
        user: { upstream: users, path: /users/42 }
"#,
        &orders,
        &users,
        &products,
    );
    let r = gw.get("/c");
    assert_eq!(r.json()["user"]["id"], 42);
    assert!(r.json().get("order").is_none());
    gw.reload(|t| t.replace("user: { upstream: users, path: /users/42 }", "user: { upstream: users, path: /users/42 }\n        order: { upstream: orders, path: /orders/7 }"));
    let r = gw.get("/c");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["order"]["id"], 7);
}

#[test]
fn what_cannot_work_is_refused_at_load_time_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        r#"server: { listen: ["127.0.0.1:1"] }
upstreams:
  u: { targets: [{ addr: "127.0.0.1:2" }] }
routes:
  - name: r
    match: { path: "/r/{id}", methods: [GET, POST] }
    compose:
      calls:
        a: { upstream: u, path: "/a/{b.x}" }
        b: { upstream: u, path: "/b/{a.y}" }
        c: { upstream: nope, path: "/c/{ordr.id}" }
        d: { upstream: u, path: "/d/{f.x}" }
        f: { upstream: u, path: "/f/{id}/{a.list[]}" }
        g: { upstream: u, path: "/g", method: POST }
        h: { upstream: u, path: "/h/{claims.sub}" }
        i: { upstream: u, path: "/i", headers: { transfer-encoding: chunked, expect: 100-continue } }
"#,
    )
    .unwrap();
    let (code, out, _) = common::tollgate(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let f = f.display();
    for want in [
        format!("{f}:6:40: error: routes[0].match.methods: `POST`: a composition route answers GET and HEAD only"),
        format!("{f}:11:24: error: routes[0].compose.calls.c.upstream: unknown upstream `nope` (defined: u)"),
        format!("{f}:11:36: error: routes[0].compose.calls.c.path: `{{ordr.id}}`: `ordr` is not a call (defined: a, b, c, d, f, g, h, i)"),
        format!("{f}:12:33: error: routes[0].compose.calls.d.path: `{{f.x}}`: call `f` fans out"),
        format!("{f}:14:47: error: routes[0].compose.calls.g.method: `POST`: composed calls are GET or HEAD only"),
        format!("{f}:15:33: error: routes[0].compose.calls.h.path: `{{claims.sub}}`: this route's chain has no `jwt` plugin"),
        format!("{f}:16:69: error: routes[0].compose.calls.i.headers.transfer-encoding: `transfer-encoding` is the gateway's to set"),
        format!("{f}:16:86: error: routes[0].compose.calls.i.headers.expect: `expect` is the gateway's to set"),
    ] {
        assert!(out.lines().any(|l| l.starts_with(&want)), "missing {want}\n{out}");
    }
    // The cycle, once the rest is right.
    let g = dir.path().join("g.yaml");
    std::fs::write(
        &g,
        r#"server: { listen: ["127.0.0.1:1"] }
upstreams:
  u: { targets: [{ addr: "127.0.0.1:2" }] }
routes:
  - name: r
    match: { path: "/r" }
    compose:
      calls:
        a: { upstream: u, path: "/a/{b.x}" }
        b: { upstream: u, path: "/b/{a.y}" }
"#,
    )
    .unwrap();
    let (code, out, _) = common::tollgate(&["validate", g.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{}:9:14: error: routes[0].compose.calls.a: calls depend on each other in a cycle: a → b → a", g.display())),
        "{out}"
    );
}

#[test]
fn each_call_is_a_child_span_of_the_request_in_the_otlp_export() {
    let (orders, users, products) = shop(0);
    let collector = common::StaticServer::start(200, "{}");
    let gw = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}\ntracing: {{ otlp_endpoint: \"http://{}/v1/traces\" }}\n{}routes:\n{}",
        collector.addr,
        upstreams(&orders, &users, &products),
        r#"  - name: details
    match: { path: "/o/{id}" }
    compose:
      calls:
        order: { upstream: orders, path: "/orders/{id}" }
        customer: { upstream: users, path: "/users/{order.user_id}" }
"#
    ));
    let r = gw.send("GET /o/7 HTTP/1.1\r\nHost: t\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans: Vec<Value> = collector
            .bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                let v: Value = serde_json::from_str(b).unwrap();
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if spans.len() >= 3 {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans never arrived: {spans:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
    let calls: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!(calls.len(), 2, "{spans:?}");
    for c in &calls {
        assert_eq!(c["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c["parentSpanId"], server["spanId"]);
    }
    // The span id the customer service was sent is its span's.
    let tp = users.header(0, "traceparent").unwrap();
    let sent = tp.split('-').nth(2).unwrap();
    let customer = calls
        .iter()
        .find(|c| c["name"] == "GET details customer")
        .unwrap();
    assert_eq!(customer["spanId"], sent);
}

#[test]
fn non_json_and_oversized_answers_are_errors_of_their_call() {
    let (orders, users, products) = shop(0);
    let odd = Api::start(|p| match p {
        "/text" => Answer {
            status: 200,
            body: "<html>not json</html>".into(),
            delay: Duration::ZERO,
        },
        _ => ok(json!({"pad": "x".repeat(4096)})),
    });
    let gw = Gateway::in_process(&format!(
        r#"server: {{ listen: ["{{listen}}"] }}
{}  odd: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: odd
    match: {{ path: /odd }}
    compose:
      calls:
        order: {{ upstream: orders, path: /orders/7 }}
        text: {{ upstream: odd, path: /text, required: false }}
        big: {{ upstream: odd, path: /big, max_body: 1KiB, required: false }}
  - name: odd-required
    match: {{ path: /odd-required }}
    compose:
      calls:
        big: {{ upstream: odd, path: /big, max_body: 1KiB }}
"#,
        upstreams(&orders, &users, &products),
        odd.addr
    ));
    let r = gw.get("/odd");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["order"]["id"], 7);
    assert_eq!(
        (v["text"].clone(), v["big"].clone()),
        (Value::Null, Value::Null)
    );
    let codes: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"invalid_json") && codes.contains(&"response_too_large"),
        "{v}"
    );
    let r = gw.get("/odd-required");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "response_too_large");
}
