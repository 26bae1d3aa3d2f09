//! `/openapi.json` says what the handlers do: every path parameter declared, every status a handler
//! can give documented (and no other), errors with the kit's body, the bearer scheme. The statuses
//! are read off the handlers: 400 a malformed body, path or query; 401 no or a bad token; 403 the
//! caller may not; 415 a body that is not JSON; 422 invalid fields; 503 the database busy.
#![allow(clippy::unwrap_used)]

use service_kit::openapi::{assert_documents, Expect};
use utoipa::OpenApi;

fn spec() -> serde_json::Value {
    service_kit::openapi::document(user_service::ApiDoc::openapi())
}

const OPERATIONS: &[Expect] = &[
    Expect {
        method: "post",
        path: "/users",
        statuses: &[201, 400, 401, 403, 409, 415, 422, 503],
        secured: true,
    },
    Expect {
        method: "get",
        path: "/users",
        statuses: &[200, 400, 401, 403, 422, 503],
        secured: true,
    },
    Expect {
        method: "get",
        path: "/users/{id}",
        statuses: &[200, 400, 401, 403, 404, 503],
        secured: true,
    },
    Expect {
        method: "patch",
        path: "/users/{id}",
        statuses: &[200, 400, 401, 403, 404, 409, 415, 422, 503],
        secured: true,
    },
    Expect {
        method: "delete",
        path: "/users/{id}",
        statuses: &[204, 400, 401, 403, 404, 503],
        secured: true,
    },
];

#[test]
fn openapi_declares_every_path_parameter_and_status() {
    assert_documents(&spec(), OPERATIONS);
}

/// The guard itself: a document with a path parameter taken out fails it.
#[test]
#[should_panic(expected = "path parameter `id` not declared")]
fn the_guard_refuses_an_undeclared_path_parameter() {
    let mut spec = spec();
    spec["paths"]["/users/{id}"]["get"]["parameters"] = serde_json::json!([]);
    assert_documents(&spec, OPERATIONS);
}

/// And one with a status the handler gives left out.
#[test]
#[should_panic(expected = "the handler gives")]
fn the_guard_refuses_an_undocumented_status() {
    let mut spec = spec();
    let responses = spec["paths"]["/users"]["post"]["responses"]
        .as_object_mut()
        .unwrap();
    responses.remove("415");
    assert_documents(&spec, OPERATIONS);
}
