//! The users API over a real socket, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use service_kit::testing::{client, Proc, TestDb};

fn start(db: &TestDb) -> Proc {
    Proc::spawn(
        "user-service",
        &["--listen", "127.0.0.1:0", "--database-url", db.url()],
    )
}

fn suite(db: TestDb) {
    let svc = start(&db);
    let c = client();
    let post = |body: Value| c.post(svc.url("/users")).json(&body).send().unwrap();

    // Create, with Location and normalized email.
    let r = post(json!({"name": "Ada Lovelace", "email": "Ada@Example.com"}));
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let ada: Value = r.json().unwrap();
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(loc, format!("/users/{}", ada["id"]));

    // Unique email (any case) → 409.
    let r = post(json!({"name": "Impostor", "email": "ADA@example.com"}));
    assert_eq!(r.status(), 409);
    let e: Value = r.json().unwrap();
    assert_eq!(e["error"]["code"], "email_taken");
    assert_eq!(e["error"]["status"], 409);

    // Validation → 422 naming the fields.
    let r = post(json!({"name": "", "email": "not-an-email"}));
    assert_eq!(r.status(), 422);
    let e: Value = r.json().unwrap();
    let fields: Vec<&str> = e["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "email"]);

    // Malformed JSON → 400; unknown field / wrong type → 422; never SQL in a body.
    let r = c
        .post(svc.url("/users"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "bad_request");
    let r = post(json!({"name": "x", "email": "x@y.z", "admin": true}));
    assert_eq!(r.status(), 422);
    let r = post(json!({"name": 5, "email": "x@y.z"}));
    assert_eq!(r.status(), 422);

    // Get; unknown id → 404; non-numeric id → 400.
    let id = ada["id"].as_i64().unwrap();
    let r = c.get(svc.url(&format!("/users/{id}"))).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["name"], "Ada Lovelace");
    let r = c.get(svc.url("/users/999999")).send().unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "user_not_found"
    );
    assert_eq!(c.get(svc.url("/users/abc")).send().unwrap().status(), 400);

    // List, paginated.
    for i in 0..24 {
        assert_eq!(
            post(json!({"name": format!("User {i}"), "email": format!("u{i}@example.com")}))
                .status(),
            201
        );
    }
    let page: Value = c
        .get(svc.url("/users?limit=10&offset=20"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["total"], 25);
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert!(page["next_offset"].is_null());
    let page: Value = c
        .get(svc.url("/users?limit=10"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(page["next_offset"], 10);
    assert_eq!(
        c.get(svc.url("/users?limit=1000")).send().unwrap().status(),
        422
    );
    assert_eq!(
        c.get(svc.url("/users?limit=abc")).send().unwrap().status(),
        400
    );

    // Patch: partial, validated, unique.
    let r = c
        .patch(svc.url(&format!("/users/{id}")))
        .json(&json!({"name": "Countess"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let u: Value = r.json().unwrap();
    assert_eq!(
        (u["name"].as_str(), u["email"].as_str()),
        (Some("Countess"), Some("ada@example.com"))
    );
    let r = c
        .patch(svc.url(&format!("/users/{id}")))
        .json(&json!({"email": "u3@example.com"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = c
        .patch(svc.url(&format!("/users/{id}")))
        .json(&json!({"email": "bad"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        c.patch(svc.url("/users/999999"))
            .json(&json!({"name": "x"}))
            .send()
            .unwrap()
            .status(),
        404
    );

    // Delete.
    assert_eq!(
        c.delete(svc.url(&format!("/users/{id}")))
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        c.delete(svc.url(&format!("/users/{id}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(svc.url(&format!("/users/{id}")))
            .send()
            .unwrap()
            .status(),
        404
    );

    // Health, readiness, OpenAPI, request id echo.
    assert_eq!(c.get(svc.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(c.get(svc.url("/readyz")).send().unwrap().status(), 200);
    let spec: Value = c
        .get(svc.url("/openapi.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(spec["paths"]["/users/{id}"]["patch"].is_object(), "{spec}");
    let r = c
        .get(svc.url("/users/999999"))
        .header("x-request-id", "rid-7")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "rid-7");
    assert_eq!(r.json::<Value>().unwrap()["error"]["request_id"], "rid-7");
}

#[test]
fn users_api_on_sqlite() {
    suite(TestDb::sqlite("users"));
}

#[test]
fn users_api_on_postgres() {
    suite(TestDb::postgres("users"));
}

#[test]
fn data_survives_a_restart_and_sigterm_is_graceful() {
    let db = TestDb::sqlite("users");
    let mut svc = start(&db);
    let c = client();
    let r = c
        .post(svc.url("/users"))
        .json(&json!({"name": "Grace", "email": "grace@example.com"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let status = svc.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let svc = start(&db);
    let page: Value = c.get(svc.url("/users")).send().unwrap().json().unwrap();
    assert_eq!(page["total"], 1);
}
