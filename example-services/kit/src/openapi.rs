//! What every service's OpenAPI document shares: the `bearer` security scheme its operations name
//! (a user's JWT or the deployment's service token, both sent as `Authorization: Bearer ...`, see
//! [`crate::auth`]), so that generated clients know how to authenticate; and the document as served,
//! with utoipa's link objects put right.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::Modify;

/// The name operations refer to in `security(("bearer" = []))`.
pub const BEARER: &str = "bearer";

/// Adds the `bearer` scheme to the document's components (`#[openapi(modifiers(&BearerAuth))]`).
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT, or the service token")
                    .description(Some(
                        "A user's token (scope `admin` for administrators) or, between services, \
                         the deployment's service token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document `/openapi.json` serves. utoipa 5.5 serializes a response's link objects with Rust's
/// field names (`operation_id`, `operation_ref`, `request_body`: `utoipa/src/openapi/link.rs` has no
/// `rename_all`), which OpenAPI 3.1 does not know, so the links would be ignored by every client; they
/// are renamed here to `operationId`, `operationRef`, `requestBody`.
pub fn document(api: OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(api).unwrap_or_default();
    let ops = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    for op in ops {
        let links = op["responses"]
            .as_object_mut()
            .into_iter()
            .flat_map(|r| r.values_mut())
            .filter_map(|r| r.get_mut("links").and_then(|l| l.as_object_mut()))
            .flat_map(|l| l.values_mut())
            .filter_map(|l| l.as_object_mut());
        for link in links {
            for (from, to) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(v) = link.remove(from) {
                    link.insert(to.to_string(), v);
                }
            }
        }
    }
    doc
}

/// What a test expects of one operation: its method, its path template, the statuses its handler
/// can answer with, and whether it needs a credential.
#[cfg(feature = "testing")]
pub struct Expect<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub statuses: &'a [u16],
    pub secured: bool,
}

/// Panics with every way `spec` (a service's `/openapi.json`) differs from `expected`, the
/// statuses read off the handlers: an operation missing or undocumented, a `{name}` of a path not
/// declared as a path parameter of each of its operations, a status documented that the handler
/// never gives or given and not documented, an error status whose body is not the kit's
/// [`crate::error::ErrorBody`], a secured operation without the `bearer` requirement or a scheme
/// missing. A cheap guard run by `cargo test`; `scripts/api-check.sh` checks the running services.
#[cfg(feature = "testing")]
pub fn assert_documents(spec: &serde_json::Value, expected: &[Expect<'_>]) {
    let mut problems = Vec::new();
    if spec["openapi"]
        .as_str()
        .is_none_or(|v| !v.starts_with("3.1"))
    {
        problems.push(format!("not OpenAPI 3.1: {}", spec["openapi"]));
    }
    if spec["components"]["securitySchemes"][BEARER]["scheme"] != "bearer" {
        problems.push(format!("no `{BEARER}` HTTP bearer security scheme"));
    }
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    let mut documented = 0;
    for (path, item) in &paths {
        documented += item.as_object().map_or(0, |o| o.len());
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for (method, op) in item.as_object().into_iter().flatten() {
            for name in &names {
                let declared = op["parameters"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["in"] == "path" && p["name"] == *name && p["required"] == true)
                });
                if !declared {
                    problems.push(format!(
                        "{method} {path}: path parameter `{name}` not declared"
                    ));
                }
            }
        }
    }
    if documented != expected.len() {
        problems.push(format!(
            "{documented} operations documented, {} expected",
            expected.len()
        ));
    }
    for e in expected {
        let op = &spec["paths"][e.path][e.method];
        if op.is_null() {
            problems.push(format!("{} {}: not documented", e.method, e.path));
            continue;
        }
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        let mut have: Vec<u16> = responses.keys().filter_map(|k| k.parse().ok()).collect();
        have.sort_unstable();
        let mut want = e.statuses.to_vec();
        want.sort_unstable();
        if have != want {
            problems.push(format!(
                "{} {}: documents {have:?}, the handler gives {want:?}",
                e.method, e.path
            ));
        }
        for (status, r) in &responses {
            let error = status.parse::<u16>().is_ok_and(|s| s >= 400);
            let schema = &r["content"]["application/json"]["schema"]["$ref"];
            if error && schema != "#/components/schemas/ErrorBody" {
                problems.push(format!(
                    "{} {} {status}: body is {schema}, not ErrorBody",
                    e.method, e.path
                ));
            }
        }
        let bearer = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|req| req.get(BEARER).is_some()));
        if e.secured != bearer {
            problems.push(format!(
                "{} {}: bearer security {}, expected {}",
                e.method, e.path, bearer, e.secured
            ));
        }
    }
    assert!(problems.is_empty(), "OpenAPI document: {problems:#?}");
}
