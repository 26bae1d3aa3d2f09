//! Replicas: two order-service and two product-service instances, each pair on ONE PostgreSQL
//! database, behind the `tollgate` binary (one upstream, two targets each, the shipped config with a
//! second target). One instance is killed with `kill -9` in the middle of a bounded write load through
//! the gateway; then the data is checked in the databases themselves: every acknowledged order is
//! there, confirmed; no request was processed twice; what the dead instance left pending is settled
//! by the survivor (leases); the stock is exactly the initial stock minus what the confirmed orders
//! took, and only confirmed orders hold a reservation. Every client answer is a 2xx or a JSON error.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use service_kit::testing::{
    bin_path, block_on, client, client_as, free_addr, user_token, Listening, Proc, TestDb,
};
use sqlx::{Connection, PgConnection};

const STOCK: i64 = 100_000;
/// The load: at most this many orders, and at most `LOAD_TIME`, whichever comes first.
const MAX_REQUESTS: usize = 600;
const LOAD_TIME: Duration = Duration::from_secs(60);
/// Orders acknowledged before the kill, and after it (the survivor serves the rest).
const BEFORE_KILL: usize = 60;

/// Rows of `sql` (every column text or bigint, read as JSON) from the database at `url`.
fn rows(url: &str, sql: &str) -> Vec<(String, i64)> {
    block_on(async {
        let mut c = PgConnection::connect(url).await.unwrap();
        sqlx::query_as::<_, (String, i64)>(sql)
            .fetch_all(&mut c)
            .await
            .unwrap()
    })
}

/// The shipped `config/tollgate.yaml` with two targets for products and orders, and rate limits
/// raised so that the load is not refused (they are per client IP and per user; the test is one of
/// each). Each replacement must apply: a test that silently ran one target would prove nothing.
fn replica_config(
    dir: &std::path::Path,
    products: [SocketAddr; 2],
    orders: [SocketAddr; 2],
) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut text = std::fs::read_to_string(root.join("config/tollgate.yaml")).unwrap();
    let two = |a: [SocketAddr; 2]| {
        format!(
            "targets: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}]",
            a[0], a[1]
        )
    };
    for (from, to) in [
        (
            r#"targets: [{ addr: "${PRODUCTS_ADDR:-127.0.0.1:8082}" }]"#.to_string(),
            two(products),
        ),
        (
            r#"targets: [{ addr: "${ORDERS_ADDR:-127.0.0.1:8083}" }]"#.to_string(),
            two(orders),
        ),
        (
            "{ requests: 600, per: 1m, burst: 100 }".into(),
            "{ requests: 100000, per: 1m, burst: 10000 }".into(),
        ),
        (
            "{ requests: 30, per: 1m, key:".into(),
            "{ requests: 100000, per: 1m, key:".into(),
        ),
    ] {
        assert_eq!(
            text.matches(&from).count(),
            1,
            "config/tollgate.yaml no longer has `{from}`"
        );
        text = text.replace(&from, &to);
    }
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn gateway(config: &str, users: SocketAddr) -> Listening {
    let addr = free_addr();
    Listening::spawn(
        Command::new(bin_path("tollgate"))
            .args(["run", "-c", config])
            .env("TOLLGATE_LISTEN", addr.to_string())
            .env("TOLLGATE_ADMIN_LISTEN", free_addr().to_string())
            .env("USERS_ADDR", users.to_string())
            .env("RUST_LOG", "warn"),
        addr,
    )
}

/// One client request and what came of it.
#[derive(Debug, Clone)]
struct Answer {
    key: String,
    qty: i64,
    /// The status, or 0 when no answer came at all (a transport error, a timeout).
    status: u16,
    body: Option<Value>,
    after_kill: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Victim {
    Orders,
    Products,
}

fn replica_killed_mid_load(victim: Victim) {
    let users_db = TestDb::sqlite("users");
    let products_db = TestDb::postgres("products");
    let orders_db = TestDb::postgres("orders");
    let users = Proc::spawn(
        "user-service",
        &["--listen", "127.0.0.1:0", "--database-url", users_db.url()],
    );
    let mut products: Vec<Proc> = (0..2)
        .map(|_| {
            Proc::spawn(
                "product-service",
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                    products_db.url(),
                ],
            )
        })
        .collect();
    let users_url = format!("http://{}", users.addr);
    let products_urls = format!("http://{},http://{}", products[0].addr, products[1].addr);
    let mut orders: Vec<Proc> = (0..2)
        .map(|_| {
            Proc::spawn(
                "order-service",
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                    orders_db.url(),
                    "--users-url",
                    &users_url,
                    "--products-url",
                    &products_urls,
                    "--pending-timeout",
                    "2s",
                    "--call-timeout",
                    "2s",
                ],
            )
        })
        .collect();

    let r = client()
        .post(users.url("/users"))
        .json(&json!({"name": "Ada", "email": "ada@example.com"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let ada = r.json::<Value>().unwrap()["id"].as_i64().unwrap();
    let r = client()
        .post(products[0].url("/products"))
        .json(&json!({"name": "Widget", "price_cents": 250, "stock": STOCK}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let item = r.json::<Value>().unwrap()["id"].as_i64().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = replica_config(
        dir.path(),
        [products[0].addr, products[1].addr],
        [orders[0].addr, orders[1].addr],
    );
    let g = gateway(&config, users.addr);
    let token = user_token(ada, &["orders"]);

    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + LOAD_TIME;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (answers, acked, sent, killed) =
                (answers.clone(), acked.clone(), sent.clone(), killed.clone());
            let orders_url = format!("http://{}/api/orders", g.addr);
            let product_url = format!("http://{}/api/products/{item}", g.addr);
            let token = token.clone();
            std::thread::spawn(move || {
                let c = client_as(Some(&token));
                let mut n = 0i64;
                while sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                    && Instant::now() < deadline
                {
                    n += 1;
                    let qty = 1 + (w + n) % 3;
                    let key = format!("w{w}-{n}");
                    let after_kill = killed.load(Ordering::Relaxed);
                    let r = c
                        .post(&orders_url)
                        .header("idempotency-key", &key)
                        .json(&json!({"user_id": ada, "items": [{"product_id": item, "qty": qty}]}))
                        .send();
                    let (status, body) = match r {
                        Ok(r) => (r.status().as_u16(), r.json::<Value>().ok()),
                        Err(e) => (0, Some(json!({"transport": format!("{e:?}")}))),
                    };
                    if status == 201 {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    answers.lock().unwrap().push(Answer {
                        key,
                        qty,
                        status,
                        body,
                        after_kill,
                    });
                    // Reads through the products upstream too: they must survive its replica's death.
                    let (status, body) = match c.get(&product_url).send() {
                        Ok(r) => (r.status().as_u16(), r.json::<Value>().ok()),
                        Err(e) => (0, Some(json!({"transport": format!("{e:?}")}))),
                    };
                    answers.lock().unwrap().push(Answer {
                        key: String::new(),
                        qty: 0,
                        status,
                        body,
                        after_kill,
                    });
                }
            })
        })
        .collect();
    while acked.load(Ordering::Relaxed) < BEFORE_KILL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.store(true, Ordering::Relaxed);
    match victim {
        Victim::Orders => orders[0].kill9(),
        Victim::Products => products[0].kill9(),
    }
    for w in writers {
        w.join().unwrap();
    }
    let answers = answers.lock().unwrap().clone();

    // Every answer is a 2xx or a JSON error, never a hang or a cut connection.
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        let label = match (&a.body, a.status) {
            (Some(b), s) if (200..300).contains(&s) => {
                assert!(b["id"].is_string() || b["id"].is_i64(), "{a:?}");
                s.to_string()
            }
            (Some(b), s) if s >= 400 => {
                let code = b["error"]["code"].as_str();
                assert!(
                    code.is_some(),
                    "an error that is not the JSON envelope: {a:?}"
                );
                format!("{s} {}", code.unwrap_or_default())
            }
            _ => panic!("neither a 2xx nor a JSON error: {a:?}"),
        };
        *by_status.entry(label).or_default() += 1;
    }
    let orders_answered: Vec<&Answer> = answers.iter().filter(|a| !a.key.is_empty()).collect();
    let acked: BTreeMap<&str, (&str, i64)> = orders_answered
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| {
            (
                a.key.as_str(),
                (a.body.as_ref().unwrap()["id"].as_str().unwrap(), a.qty),
            )
        })
        .collect();
    let acked_after = orders_answered
        .iter()
        .filter(|a| a.status == 201 && a.after_kill)
        .count();
    eprintln!(
        "{} answers ({} orders, {} acknowledged, {acked_after} of them sent after the kill): {by_status:?}",
        answers.len(),
        orders_answered.len(),
        acked.len()
    );
    assert!(
        acked.len() >= BEFORE_KILL,
        "only {} orders acknowledged",
        acked.len()
    );
    assert!(
        acked_after >= 20,
        "the survivor acknowledged only {acked_after} orders after the kill"
    );

    // The dead instance's leftovers are settled by the survivors, through leases.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let open = rows(
            orders_db.url(),
            "SELECT status, COUNT(*) FROM orders WHERE status = 'pending' \
             OR (status IN ('failed', 'cancelled') AND stock_released = 0) GROUP BY status",
        );
        if open.is_empty() {
            break;
        }
        assert!(Instant::now() < settle, "not settled after 30 s: {open:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every acknowledged order is there and confirmed, with what was ordered; every confirmed order is
    // one request of the load (its key), and no key was confirmed twice.
    let confirmed = rows(
        orders_db.url(),
        "SELECT o.id || ' ' || COALESCE(o.idempotency_key, ''), i.qty FROM orders o \
         JOIN order_items i ON i.order_id = o.id WHERE o.status = 'confirmed'",
    );
    let confirmed: Vec<(String, String, i64)> = confirmed
        .into_iter()
        .map(|(s, q)| {
            let (id, key) = s.split_once(' ').unwrap();
            (id.to_string(), key.to_string(), q)
        })
        .collect();
    let by_id: BTreeMap<&str, i64> = confirmed
        .iter()
        .map(|(id, _, q)| (id.as_str(), *q))
        .collect();
    for (key, (id, qty)) in &acked {
        assert_eq!(
            by_id.get(id),
            Some(qty),
            "acknowledged order {id} ({key}) not confirmed"
        );
    }
    let sent_keys: BTreeMap<String, i64> = orders_answered
        .iter()
        .map(|a| (format!("{ada}:{}", a.key), a.qty))
        .collect();
    let mut keys = BTreeSet::new();
    for (id, key, qty) in &confirmed {
        assert_eq!(
            sent_keys.get(key),
            Some(qty),
            "confirmed order {id} has key `{key}`"
        );
        assert!(keys.insert(key.clone()), "key {key} confirmed twice");
    }
    let confirmed_qty: i64 = confirmed.iter().map(|(_, _, q)| q).sum();

    // The stock is exact, and only confirmed orders hold stock.
    let stock = rows(products_db.url(), "SELECT name, stock FROM products");
    assert_eq!(stock, vec![("Widget".to_string(), STOCK - confirmed_qty)]);
    let held = rows(
        products_db.url(),
        "SELECT r.id, i.qty FROM reservations r JOIN reservation_items i ON i.reservation_id = r.id \
         WHERE r.status = 'active'",
    );
    let held: BTreeMap<&str, i64> = held.iter().map(|(id, q)| (id.as_str(), *q)).collect();
    assert_eq!(
        held, by_id,
        "active reservations are not the confirmed orders"
    );
    eprintln!(
        "{} confirmed ({} more than acknowledged), stock {} = {STOCK} - {confirmed_qty}",
        confirmed.len(),
        confirmed.len() - acked.len(),
        STOCK - confirmed_qty
    );
    drop(g);
    for p in orders.iter_mut().chain(products.iter_mut()) {
        p.kill9();
    }
}

#[test]
fn orders_replica_killed_mid_load_loses_and_repeats_nothing() {
    replica_killed_mid_load(Victim::Orders);
}

#[test]
fn products_replica_killed_mid_load_loses_and_repeats_nothing() {
    replica_killed_mid_load(Victim::Products);
}
