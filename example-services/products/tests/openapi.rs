//! `/openapi.json` says what the handlers do: every path parameter declared, every status a handler
//! can give documented (and no other), errors with the kit's body, the bearer scheme where a
//! credential is needed (the catalogue is public). 400 a malformed body, path or query; 401 no or a
//! bad token; 403 the caller may not; 415 a body that is not JSON; 422 invalid fields; 503 busy.
#![allow(clippy::unwrap_used)]

use service_kit::openapi::{assert_documents, Expect};
use utoipa::OpenApi;

const OPERATIONS: &[Expect] = &[
    Expect {
        method: "post",
        path: "/products",
        statuses: &[201, 400, 401, 403, 415, 422, 503],
        secured: true,
    },
    Expect {
        method: "get",
        path: "/products",
        statuses: &[200, 400, 422, 503],
        secured: false,
    },
    Expect {
        method: "get",
        path: "/products/{id}",
        statuses: &[200, 400, 404, 503],
        secured: false,
    },
    Expect {
        method: "patch",
        path: "/products/{id}",
        statuses: &[200, 400, 401, 403, 404, 415, 422, 503],
        secured: true,
    },
    Expect {
        method: "delete",
        path: "/products/{id}",
        statuses: &[204, 400, 401, 403, 404, 503],
        secured: true,
    },
    Expect {
        method: "post",
        path: "/reservations",
        statuses: &[200, 201, 400, 401, 403, 404, 409, 415, 422, 503],
        secured: true,
    },
    Expect {
        method: "get",
        path: "/reservations/{id}",
        statuses: &[200, 401, 403, 404, 503],
        secured: true,
    },
    Expect {
        method: "delete",
        path: "/reservations/{id}",
        statuses: &[204, 401, 403, 422, 503],
        secured: true,
    },
];

#[test]
fn openapi_declares_every_path_parameter_and_status() {
    let spec = service_kit::openapi::document(product_service::ApiDoc::openapi());
    assert_documents(&spec, OPERATIONS);
}
