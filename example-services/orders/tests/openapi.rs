//! `/openapi.json` says what the handlers do: every path parameter declared, every status a handler
//! can give documented (and no other), errors with the kit's body, the bearer scheme. 400 a malformed
//! body, query or `Idempotency-Key`; 401 no or a bad token; 403 another user's; 409 no stock, a key in
//! progress, not cancellable; 415 a body that is not JSON; 422 invalid fields or unknown references;
//! 503 a dependency or the database unavailable.
#![allow(clippy::unwrap_used)]

use service_kit::openapi::{assert_documents, Expect};
use utoipa::OpenApi;

const OPERATIONS: &[Expect] = &[
    Expect {
        method: "post",
        path: "/orders",
        statuses: &[201, 400, 401, 403, 409, 415, 422, 503],
        secured: true,
    },
    Expect {
        method: "get",
        path: "/orders",
        statuses: &[200, 400, 401, 403, 422, 503],
        secured: true,
    },
    Expect {
        method: "get",
        path: "/orders/{id}",
        statuses: &[200, 401, 404, 503],
        secured: true,
    },
    Expect {
        method: "post",
        path: "/orders/{id}/cancel",
        statuses: &[200, 401, 404, 409, 503],
        secured: true,
    },
];

#[test]
fn openapi_declares_every_path_parameter_and_status() {
    let spec = service_kit::openapi::document(order_service::ApiDoc::openapi());
    assert_documents(&spec, OPERATIONS);
}

/// `POST /orders` links its answer to the operations that take the order's id, so a stateful
/// client (schemathesis in `scripts/api-check.sh`) reads and cancels the orders it placed.
#[test]
fn a_placed_order_links_to_reading_and_cancelling_it() {
    let spec = service_kit::openapi::document(order_service::ApiDoc::openapi());
    let links = &spec["paths"]["/orders"]["post"]["responses"]["201"]["links"];
    for (name, op) in [("GetOrder", "get_order"), ("CancelOrder", "cancel_order")] {
        assert_eq!(links[name]["operationId"], op, "{links}");
        assert_eq!(
            links[name]["parameters"]["id"], "$response.body#/id",
            "{links}"
        );
    }
}
