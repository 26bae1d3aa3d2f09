//! The products API over a real socket, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use service_kit::testing::{client, Proc, TestDb};

fn start(db: &TestDb) -> Proc {
    Proc::spawn(
        "product-service",
        &["--listen", "127.0.0.1:0", "--database-url", db.url()],
    )
}

fn create(svc: &Proc, name: &str, price: i64, stock: i64) -> i64 {
    let r = client()
        .post(svc.url("/products"))
        .json(&json!({"name": name, "price_cents": price, "stock": stock}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().unwrap()["id"].as_i64().unwrap()
}

fn stock(svc: &Proc, id: i64) -> i64 {
    client()
        .get(svc.url(&format!("/products/{id}")))
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap()["stock"]
        .as_i64()
        .unwrap()
}

fn suite(db: TestDb) {
    let svc = start(&db);
    let c = client();

    // CRUD and validation.
    let r = c
        .post(svc.url("/products"))
        .json(&json!({"name": "Lamp", "description": "bright", "price_cents": 1999, "stock": 5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let lamp: Value = r.json().unwrap();
    let lamp_id = lamp["id"].as_i64().unwrap();
    assert_eq!(lamp["price_cents"], 1999);
    let r = c
        .post(svc.url("/products"))
        .json(&json!({"name": "", "price_cents": -1, "stock": -5}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    let fields: Vec<String> = r.json::<Value>().unwrap()["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fields, ["name", "price_cents", "stock"]);
    let r = c
        .patch(svc.url(&format!("/products/{lamp_id}")))
        .json(&json!({"price_cents": 2499}))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["price_cents"], 2499);
    assert_eq!(
        c.get(svc.url("/products/424242")).send().unwrap().status(),
        404
    );
    let page: Value = c
        .get(svc.url("/products?limit=1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 1);

    // Reserve all-or-nothing.
    let desk = create(&svc, "Desk", 10_000, 2);
    let r = c.post(svc.url("/reservations")).json(&json!({"id": "r1", "items": [{"product_id": lamp_id, "qty": 2}, {"product_id": desk, "qty": 3}]})).send().unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "insufficient_stock"
    );
    assert_eq!(
        (stock(&svc, lamp_id), stock(&svc, desk)),
        (5, 2),
        "a refused reservation takes nothing"
    );
    let r = c
        .post(svc.url("/reservations"))
        .json(&json!({"id": "r1", "items": [{"product_id": 999, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    let body = json!({"id": "r1", "items": [{"product_id": lamp_id, "qty": 2}, {"product_id": desk, "qty": 1}]});
    let r = c.post(svc.url("/reservations")).json(&body).send().unwrap();
    assert_eq!(r.status(), 201);
    let res: Value = r.json().unwrap();
    assert_eq!(
        res["total_cents"],
        2 * 2499 + 10_000,
        "price snapshot at reservation time"
    );
    assert_eq!((stock(&svc, lamp_id), stock(&svc, desk)), (3, 1));
    // Idempotent replay; same id, other items → 422.
    let r = c.post(svc.url("/reservations")).json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        (stock(&svc, lamp_id), stock(&svc, desk)),
        (3, 1),
        "a replay takes nothing more"
    );
    let r = c
        .post(svc.url("/reservations"))
        .json(&json!({"id": "r1", "items": [{"product_id": lamp_id, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);

    // Release gives back once.
    assert_eq!(
        c.delete(svc.url("/reservations/r1"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.delete(svc.url("/reservations/r1"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!((stock(&svc, lamp_id), stock(&svc, desk)), (5, 2));
    assert_eq!(
        c.get(svc.url("/reservations/r1"))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["status"],
        "released"
    );
    // The timeout case: the orders service gave up and released before its reservation arrived.
    // The release leaves a tombstone; the late reservation takes nothing.
    assert_eq!(
        c.delete(svc.url("/reservations/late-1"))
            .send()
            .unwrap()
            .status(),
        204
    );
    let before = stock(&svc, lamp_id);
    let r = c
        .post(svc.url("/reservations"))
        .json(&json!({"id": "late-1", "items": [{"product_id": lamp_id, "qty": 1}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "reservation_released"
    );
    assert_eq!(
        stock(&svc, lamp_id),
        before,
        "a late reservation takes nothing"
    );
    assert_eq!(
        c.delete(svc.url("/reservations/late-1"))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        stock(&svc, lamp_id),
        before,
        "releasing a tombstone gives nothing"
    );
    assert_eq!(
        c.delete(svc.url("/reservations/not%20an%20id"))
            .send()
            .unwrap()
            .status(),
        422
    );

    // Concurrency: 40 buyers, stock 10 → exactly 10 reservations, stock 0, no 5xx.
    let hot = create(&svc, "Hot item", 500, 10);
    let addr = svc.addr;
    let handles: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                client()
                    .post(format!("http://{addr}/reservations"))
                    .json(&json!({"id": format!("hot-{i}"), "items": [{"product_id": hot, "qty": 1}]}))
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
    assert_eq!(stock(&svc, hot), 0);

    let spec: Value = c
        .get(svc.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(spec["paths"]["/reservations"]["post"].is_object());
}

#[test]
fn products_api_on_sqlite() {
    suite(TestDb::sqlite("products"));
}

#[test]
fn products_api_on_postgres() {
    suite(TestDb::postgres("products"));
}
