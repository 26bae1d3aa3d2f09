//! The orders API over real sockets, with the real users and products services, on SQLite and on
//! PostgreSQL.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use service_kit::testing::{client, DbKind, Stack};

fn codes(v: &Value) -> Vec<String> {
    v["error"]["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn suite(kind: DbKind) {
    let s = Stack::start(kind, &[]);
    let c = client();
    let ada = s.user("Ada", "ada@example.com");
    let lamp = s.product("Lamp", 1999, 5);
    let desk = s.product("Desk", 10_000, 2);
    let post = |body: Value| c.post(s.orders.url("/orders")).json(&body).send().unwrap();

    // Validation: every bad field named; malformed JSON is 400.
    let r = post(json!({"user_id": 0, "items": [{"product_id": 0, "qty": 0}]}));
    assert_eq!(r.status(), 422);
    assert_eq!(
        codes(&r.json().unwrap()),
        ["user_id", "items[0].product_id", "items[0].qty"]
    );
    let r = post(json!({"user_id": ada, "items": []}));
    assert_eq!(r.status(), 422);
    let r = c
        .post(s.orders.url("/orders"))
        .header("content-type", "application/json")
        .body("{\"user_id\":")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "bad_request");

    // Unknown user or product: 422, nothing reserved.
    let r = post(json!({"user_id": 4242, "items": [{"product_id": lamp, "qty": 1}]}));
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "unknown_user");
    let r = post(json!({"user_id": ada, "items": [{"product_id": 4242, "qty": 1}]}));
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "unknown_product"
    );
    // Not enough stock of one item: 409, and the other item is not taken either.
    let r = post(
        json!({"user_id": ada, "items": [{"product_id": lamp, "qty": 1}, {"product_id": desk, "qty": 3}]}),
    );
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "insufficient_stock"
    );
    assert_eq!((s.stock(lamp), s.stock(desk)), (5, 2));

    // Place one: price snapshot, total, Location; equal products merged.
    let body = json!({"user_id": ada, "items": [{"product_id": lamp, "qty": 1}, {"product_id": desk, "qty": 1}, {"product_id": lamp, "qty": 1}]});
    let r = c
        .post(s.orders.url("/orders"))
        .header("idempotency-key", "k-1")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let order: Value = r.json().unwrap();
    let id = order["id"].as_str().unwrap().to_string();
    assert_eq!(loc, format!("/orders/{id}"));
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["total_cents"], 2 * 1999 + 10_000);
    assert_eq!(
        order["items"],
        json!([{"product_id": lamp, "qty": 2, "unit_price_cents": 1999},
               {"product_id": desk, "qty": 1, "unit_price_cents": 10_000}])
    );
    assert_eq!((s.stock(lamp), s.stock(desk)), (3, 1));

    // The snapshot holds when the price changes later.
    c.patch(s.products.url(&format!("/products/{lamp}")))
        .json(&json!({"price_cents": 5000}))
        .send()
        .unwrap();
    let got: Value = c
        .get(s.orders.url(&format!("/orders/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(got["items"][0]["unit_price_cents"], 1999);
    assert_eq!(got, order);

    // Idempotency: the same key and body replays (no second reservation); another body is 422.
    let r = c
        .post(s.orders.url("/orders"))
        .header("idempotency-key", "k-1")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.json::<Value>().unwrap(), order);
    assert_eq!((s.stock(lamp), s.stock(desk)), (3, 1));
    let r = c
        .post(s.orders.url("/orders"))
        .header("idempotency-key", "k-1")
        .json(&json!({"user_id": ada, "items": [{"product_id": lamp, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "idempotency_key_reused"
    );
    // A rejected request is replayed too (same answer, nothing reserved).
    let big = json!({"user_id": ada, "items": [{"product_id": desk, "qty": 9}]});
    for _ in 0..2 {
        let r = c
            .post(s.orders.url("/orders"))
            .header("idempotency-key", "k-2")
            .json(&big)
            .send()
            .unwrap();
        assert_eq!(r.status(), 409);
    }

    // Get unknown → 404; list by user, paginated.
    let r = c.get(s.orders.url("/orders/nope")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "order_not_found"
    );
    let second = post(json!({"user_id": ada, "items": [{"product_id": lamp, "qty": 1}]}));
    assert_eq!(second.status(), 201);
    let page: Value = c
        .get(
            s.orders
                .url(&format!("/orders?user_id={ada}&status=confirmed&limit=1")),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], id.as_str());
    assert_eq!(page["next_offset"], 1);
    let r = c.get(s.orders.url("/orders?limit=1000")).send().unwrap();
    assert_eq!(r.status(), 422);

    // Cancel gives the stock back, once; a rejected order cannot be cancelled.
    let r = c
        .post(s.orders.url(&format!("/orders/{id}/cancel")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["status"], "cancelled");
    assert_eq!((s.stock(lamp), s.stock(desk)), (4, 2));
    let r = c
        .post(s.orders.url(&format!("/orders/{id}/cancel")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!((s.stock(lamp), s.stock(desk)), (4, 2));
    let rejected: Value = c
        .get(s.orders.url("/orders?status=rejected"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let rid = rejected["items"][0]["id"].as_str().unwrap();
    let r = c
        .post(s.orders.url(&format!("/orders/{rid}/cancel")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);

    let spec: Value = c
        .get(s.orders.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(spec["paths"]["/orders"]["post"].is_object());
    assert_eq!(c.get(s.orders.url("/readyz")).send().unwrap().status(), 200);
}

#[test]
fn orders_api_on_sqlite() {
    suite(DbKind::Sqlite);
}

#[test]
fn orders_api_on_postgres() {
    suite(DbKind::Postgres);
}

/// A dependency that is down is a 503 that leaves nothing behind, and the key may be retried.
#[test]
fn unavailable_dependencies_are_503_and_leak_nothing() {
    let mut s = Stack::start(DbKind::Sqlite, &["--call-timeout", "2s"]);
    let c = client();
    let ada = s.user("Ada", "ada@example.com");
    let lamp = s.product("Lamp", 100, 3);
    let body = json!({"user_id": ada, "items": [{"product_id": lamp, "qty": 1}]});

    s.users.kill9();
    let r = c
        .post(s.orders.url("/orders"))
        .header("idempotency-key", "retry-me")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "users_unavailable"
    );
    assert_eq!(s.stock(lamp), 3);
    let failed: Value = c
        .get(s.orders.url("/orders?status=failed"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(failed["total"], 1);

    // The users service comes back (same database): the same key now succeeds.
    s.users = service_kit::testing::Proc::spawn(
        "user-service",
        &[
            "--listen",
            &s.users.addr.to_string(),
            "--database-url",
            s.users_db.url(),
        ],
    );
    let r = c
        .post(s.orders.url("/orders"))
        .header("idempotency-key", "retry-me")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(s.stock(lamp), 2);
}

/// A products service that answered the reservation after the order had given up on it (and
/// released it) says `409 reservation_released`: the order failed and may be retried; it was not
/// refused for lack of stock. A fault server stands in for products: the race cannot be provoked on
/// purpose with the real one.
#[test]
fn a_reservation_released_before_it_arrived_is_a_failure_not_insufficient_stock() {
    let fault = service_kit::testing::fault_server(|line| {
        if line.starts_with("POST /reservations") {
            let b = r#"{"error":{"status":409,"code":"reservation_released","message":"this reservation id was released before it was reserved"}}"#;
            format!("HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}", b.len())
        } else {
            "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string()
        }
    });
    let s = Stack::start(DbKind::Sqlite, &[]);
    let ada = s.user("Ada", "ada@example.com");
    let db = DbKind::Sqlite.db("orders-fault");
    let orders = s.orders_with_products(&db, &format!("http://{fault}"));
    let r = client()
        .post(orders.url("/orders"))
        .header("idempotency-key", "late")
        .json(&json!({"user_id": ada, "items": [{"product_id": 1, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "products_too_slow", "{v}");
}
