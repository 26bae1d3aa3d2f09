//! The demo stack as a user runs it: three services as real processes, each with its own database,
//! orders calling users and products over HTTP, and the `tollgate` binary in front with the shipped
//! `config/tollgate.yaml`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_kit::testing::{bin_path, client, client_as, free_addr, DbKind, Listening, Stack};

/// 50 concurrent orders for a product with stock 10: exactly 10 succeed, stock ends at 0, no 5xx.
fn fifty_orders_for_ten_in_stock(kind: DbKind) {
    let s = Stack::start(kind, &[]);
    let ada = s.user("Ada", "ada@example.com");
    let hot = s.product("Hot item", 500, 10);
    let url = s.orders.url("/orders");
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                client()
                    .post(url)
                    .json(&json!({"user_id": ada, "items": [{"product_id": hot, "qty": 1}]}))
                    .send()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 201).count(), 10, "{codes:?}");
    assert!(codes.iter().all(|&c| c == 201 || c == 409), "{codes:?}");
    assert_eq!(s.stock(hot), 0);
    let confirmed: Value = client()
        .get(s.orders.url("/orders?status=confirmed"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(confirmed["total"], 10);
}

#[test]
fn concurrent_orders_never_oversell_on_sqlite() {
    fifty_orders_for_ten_in_stock(DbKind::Sqlite);
}

#[test]
fn concurrent_orders_never_oversell_on_postgres() {
    fifty_orders_for_ten_in_stock(DbKind::Postgres);
}

/// `kill -9` the orders service in the middle of a write loop, start it again: every order that was
/// acknowledged with 201 is there, confirmed, and the stock agrees with the confirmed orders once the
/// orders that were in flight have been settled.
#[test]
fn orders_survive_kill_9() {
    const STOCK: i64 = 100_000;
    let mut s = Stack::start(DbKind::Sqlite, &["--pending-timeout", "2s"]);
    let ada = s.user("Ada", "ada@example.com");
    let item = s.product("Widget", 250, STOCK);
    let url = s.orders.url("/orders");
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded: at most 3,000 requests and 60 s, whichever comes first; writers stop at the first error.
    let deadline = Instant::now() + Duration::from_secs(60);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, acked, sent, stop) = (url.clone(), acked.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed)
                    && sent.fetch_add(1, Ordering::Relaxed) < 3000
                    && Instant::now() < deadline
                {
                    n += 1;
                    let qty = 1 + (w + n) % 3;
                    let r = c
                        .post(&url)
                        .json(&json!({"user_id": ada, "items": [{"product_id": item, "qty": qty}]}))
                        .send();
                    match r {
                        Ok(r) if r.status() == 201 => {
                            let v: Value = match r.json() {
                                Ok(v) => v,
                                Err(_) => return, // cut off mid-body: not acknowledged
                            };
                            acked
                                .lock()
                                .unwrap()
                                .push((v["id"].as_str().unwrap().to_string(), qty as i64));
                        }
                        Ok(r) => panic!("unexpected status {} before the kill", r.status()),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Kill once a good number of orders are through (or the loop is nearly done).
    while acked.lock().unwrap().len() < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    s.orders.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 40,
        "only {} orders before the kill",
        acked.len()
    );

    s.restart_orders();
    let c = client();
    // Every acknowledged order is there, confirmed, with what was ordered.
    for (id, qty) in &acked {
        let o: Value = c
            .get(s.orders.url(&format!("/orders/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(o["status"], "confirmed", "{o}");
        assert_eq!(o["items"][0]["qty"], *qty);
    }
    // Orders caught in flight are failed after their lease and their stock given back: then the
    // stock is exactly what the confirmed orders took.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let mut confirmed_qty = 0;
        let mut offset = 0;
        let pending: Value = c
            .get(s.orders.url("/orders?status=pending"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        loop {
            let page: Value = c
                .get(s.orders.url(&format!(
                    "/orders?status=confirmed&limit=100&offset={offset}"
                )))
                .send()
                .unwrap()
                .json()
                .unwrap();
            for o in page["items"].as_array().unwrap() {
                confirmed_qty += o["items"][0]["qty"].as_i64().unwrap();
            }
            match page["next_offset"].as_i64() {
                Some(n) => offset = n,
                None => break,
            }
        }
        let stock = s.stock(item);
        if pending["total"] == 0 && stock == STOCK - confirmed_qty {
            break;
        }
        assert!(
            Instant::now() < settle,
            "not settled: stock {stock}, confirmed {confirmed_qty}, pending {}",
            pending["total"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tollgate run` with the shipped demo config, pointed at `s` through the config's variables.
fn gateway(s: &Stack) -> Listening {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let addr = free_addr();
    let vars: BTreeMap<&str, String> = BTreeMap::from([
        ("TOLLGATE_LISTEN", addr.to_string()),
        ("TOLLGATE_ADMIN_LISTEN", free_addr().to_string()),
        ("USERS_ADDR", s.users.addr.to_string()),
        ("PRODUCTS_ADDR", s.products.addr.to_string()),
        ("ORDERS_ADDR", s.orders.addr.to_string()),
    ]);
    Listening::spawn(
        Command::new(bin_path("tollgate"))
            .args(["run", "-c", "config/tollgate.yaml"])
            .current_dir(&root)
            .envs(&vars)
            .env("RUST_LOG", "warn"),
        addr,
    )
}

/// `tollgate token` with the demo config, as the README tells a user to mint one.
fn token(sub: &str, scopes: &[&str]) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = vec!["token", "-c", "config/tollgate.yaml", "--sub", sub];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out = Command::new(bin_path("tollgate"))
        .args(&args)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn end_to_end_through_the_gateway() {
    let s = Stack::start(DbKind::Sqlite, &[]);
    let g = gateway(&s);
    let c = client_as(None);
    let api = |p: &str| format!("http://{}/api{p}", g.addr);
    let admin = format!("Bearer {}", token("0", &["admin"]));

    // Users need a token; a missing one is a 401 with the Bearer challenge.
    let r = c
        .post(api("/users"))
        .json(&json!({"name": "Grace", "email": "grace@example.com"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    let r = c
        .post(api("/users"))
        .header("authorization", &admin)
        .json(&json!({"name": "Grace", "email": "grace@example.com"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let user = r.json::<Value>().unwrap()["id"].as_i64().unwrap();
    let grace = format!("Bearer {}", token(&user.to_string(), &["orders"]));

    // Product writes need scope `admin`; reads are public.
    let product_body = json!({"name": "Compiler", "price_cents": 4200, "stock": 3});
    let r = c
        .post(api("/products"))
        .header("authorization", &grace)
        .json(&product_body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let r = c
        .post(api("/products"))
        .header("authorization", &admin)
        .json(&product_body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let product = r.json::<Value>().unwrap()["id"].as_i64().unwrap();

    // Orders need scope `orders`, and the service is told who the caller is.
    let r = c
        .post(api("/orders"))
        .header("authorization", &admin)
        .json(&json!({"user_id": user, "items": [{"product_id": product, "qty": 2}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "an admin token without scope `orders`");
    let r = c
        .post(api("/orders"))
        .header("authorization", &grace)
        .header("x-user-id", "1") // a spoofed identity header never reaches the service
        .json(&json!({"user_id": user, "items": [{"product_id": product, "qty": 2}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: Value = r.json().unwrap();
    assert_eq!(order["total_cents"], 8400);
    let r = c
        .post(api("/orders"))
        .header("authorization", &grace)
        .json(&json!({"user_id": user + 1, "items": [{"product_id": product, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "ordering for someone else");
    let got: Value = c
        .get(api(&format!("/orders/{}", order["id"].as_str().unwrap())))
        .header("authorization", &grace)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got, order);
    let other = format!("Bearer {}", token(&(user + 1).to_string(), &["orders"]));
    let r = c
        .get(api(&format!("/orders/{}", order["id"].as_str().unwrap())))
        .header("authorization", &other)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "another user's order is not found");
    let p: Value = c
        .get(api(&format!("/products/{product}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(p["stock"], 1);
    // A service's own error comes through in the same envelope as the gateway's.
    let r = c
        .get(api("/users/999999"))
        .header("authorization", &admin)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().unwrap()["error"]["status"], 404);
    let r = c.get(format!("http://{}/nowhere", g.addr)).send().unwrap();
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "route_not_found"
    );
}

/// The demo's composition routes against the real services: an order with its customer and products,
/// the caller's own record with their orders, and a partial answer when the products service is down.
#[test]
fn composed_routes_merge_the_services_and_degrade_when_one_is_down() {
    let mut s = Stack::start(DbKind::Sqlite, &[]);
    let g = gateway(&s);
    let c = client_as(None);
    let api = |p: &str| format!("http://{}/api{p}", g.addr);
    let ada = s.user("Ada", "ada@example.com");
    let pen = s.product("Pen", 150, 10);
    let ink = s.product("Ink", 300, 10);
    let ada_token = format!("Bearer {}", token(&ada.to_string(), &["orders"]));
    let r = c
        .post(api("/orders"))
        .header("authorization", &ada_token)
        .json(&json!({"user_id": ada, "items": [{"product_id": pen, "qty": 2}, {"product_id": ink, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: Value = r.json().unwrap();
    let id = order["id"].as_str().unwrap().to_string();

    // No token: the chain refuses before any call.
    let r = c.get(api(&format!("/orders/{id}/details"))).send().unwrap();
    assert_eq!(r.status(), 401);

    let r = c
        .get(api(&format!("/orders/{id}/details")))
        .header("authorization", &ada_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("tollgate-partial").is_none());
    let v: Value = r.json().unwrap();
    assert_eq!(v["order"]["id"], id.as_str());
    assert_eq!(v["customer"]["name"], "Ada");
    assert_eq!(v["products"][0]["name"], "Pen");
    assert_eq!(v["products"][1]["name"], "Ink");

    // Another user cannot see Ada's order through the composition either: the orders service says 404.
    let other = format!("Bearer {}", token(&(ada + 1).to_string(), &["orders"]));
    let r = c
        .get(api(&format!("/orders/{id}/details")))
        .header("authorization", &other)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().unwrap()["error"]["call"], "order");

    let r = c
        .get(api("/me?limit=1"))
        .header("authorization", &ada_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = r.json().unwrap();
    assert_eq!(me["user"]["email"], "ada@example.com");
    assert_eq!(me["orders"]["items"][0]["id"], id.as_str(), "{me}");

    // Products down: the answer is partial, not an error.
    s.products.kill9();
    let r = c
        .get(api(&format!("/orders/{id}/details")))
        .header("authorization", &ada_token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["tollgate-partial"], "products");
    let v: Value = r.json().unwrap();
    assert_eq!(v["customer"]["name"], "Ada");
    assert_eq!(v["products"], json!([null, null]));
    assert_eq!(v["errors"][0]["call"], "products");
    let code = v["errors"][0]["code"].as_str().unwrap();
    // Refused connections, or (once the health check has noticed) no healthy target.
    assert!(
        code == "upstream_unavailable" || code == "no_healthy_upstream",
        "{v}"
    );
}

/// Every service checks its caller itself: the forbidden calls, through the gateway and around it.
#[test]
fn each_service_checks_the_caller_itself() {
    let s = Stack::start(DbKind::Sqlite, &[]);
    let g = gateway(&s);
    let anon = client_as(None);
    let api = |p: &str| format!("http://{}/api{p}", g.addr);
    let ada = s.user("Ada", "ada@example.com");
    let bob = s.user("Bob", "bob@example.com");
    let product = s.product("Widget", 500, 10);
    let bob_t = format!("Bearer {}", token(&bob.to_string(), &["orders"]));
    let ada_t = format!("Bearer {}", token(&ada.to_string(), &["orders"]));
    let send = |m: reqwest::Method, url: String, auth: &str| {
        anon.request(m, url)
            .header("authorization", auth)
            .json(&json!({"name": "Mallory"}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    use reqwest::Method as M;

    // Through the gateway: a user reads and changes only their own record.
    assert_eq!(send(M::GET, api(&format!("/users/{ada}")), &bob_t), 403);
    assert_eq!(send(M::PATCH, api(&format!("/users/{ada}")), &bob_t), 403);
    assert_eq!(send(M::DELETE, api(&format!("/users/{ada}")), &bob_t), 403);
    assert_eq!(
        send(M::GET, api("/users"), &bob_t),
        403,
        "listing users needs admin"
    );
    assert_eq!(send(M::GET, api(&format!("/users/{bob}")), &bob_t), 200);
    assert_eq!(send(M::PATCH, api(&format!("/users/{bob}")), &bob_t), 200);
    let ada_now: Value = client()
        .get(s.users.url(&format!("/users/{ada}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ada_now["name"], "Ada", "nothing of Ada's changed");

    // Around the gateway: no credential is no caller, and an identity header is not one.
    for (url, what) in [
        (s.users.url(&format!("/users/{ada}")), "users"),
        (s.orders.url("/orders"), "orders"),
    ] {
        let r = anon
            .get(&url)
            .header("x-user-id", ada.to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{what} without a token");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    // A forged token (another key) is refused by the service itself.
    let forged = {
        let claims = json!({"sub": ada.to_string(), "scope": "admin", "exp": 4_000_000_000u64,
                            "iss": "tollgate-demo", "aud": "tollgate-api"});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"not-the-deployment-secret-0123456789"),
        )
        .unwrap()
    };
    let r = anon
        .get(s.users.url("/users"))
        .bearer_auth(&forged)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Only services reserve stock: a user's token, or none, cannot.
    let reserve = json!({"id": "r-1", "items": [{"product_id": product, "qty": 1}]});
    let r = anon
        .post(s.products.url("/reservations"))
        .json(&reserve)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .post(s.products.url("/reservations"))
        .header("authorization", &bob_t)
        .json(&reserve)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.stock(product), 10, "nothing was reserved");

    // Orders: Ada's order is Ada's. Bob can neither list, read nor cancel it.
    let r = anon
        .post(api("/orders"))
        .header("authorization", &ada_t)
        .header("idempotency-key", "checkout-1")
        .json(&json!({"user_id": ada, "items": [{"product_id": product, "qty": 2}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let order: Value = r.json().unwrap();
    let id = order["id"].as_str().unwrap();
    let listed: Value = anon
        .get(api("/orders"))
        .header("authorization", &bob_t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
    assert_eq!(
        send(M::POST, api(&format!("/orders/{id}/cancel")), &bob_t),
        404
    );
    // The same Idempotency-Key from Bob is Bob's own key: a new order, not Ada's replayed, nor a 422.
    let r = anon
        .post(api("/orders"))
        .header("authorization", &bob_t)
        .header("idempotency-key", "checkout-1")
        .json(&json!({"user_id": bob, "items": [{"product_id": product, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let bobs: Value = r.json().unwrap();
    assert_ne!(bobs["id"], order["id"]);
    assert_eq!(bobs["user_id"], bob);
    assert_eq!(s.stock(product), 7);
}

/// A reservation whose total does not fit in 64 bits is refused, never wrapped.
#[test]
fn an_overflowing_total_is_a_422() {
    let s = Stack::start(DbKind::Sqlite, &[]);
    let product = s.product("Yacht", 1_000_000_000_000, 1_000_000_000);
    let r = client()
        .post(s.products.url("/reservations"))
        .json(&json!({"id": "huge", "items": [{"product_id": product, "qty": 1_000_000_000}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "total_too_large"
    );
    assert_eq!(s.stock(product), 1_000_000_000, "rolled back");
}
