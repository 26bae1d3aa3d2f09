//! `tollgate test CASES.yaml`: route test cases that config authors keep beside their config.
//!
//! Each case is a request and what the gateway must do with it; every case is answered by
//! [`crate::explain::explain`], offline, so a case checks exactly what explain shows. A failing case
//! is reported at its FILE:LINE (found with the config loader's [`load::locate`]), one line each.
//!
//! ```yaml
//! cases:
//!   - name: orders need a token
//!     request: { method: GET, url: /api/orders }
//!     expect: { route: orders, status: 401 }
//!   - name: a user's orders go to the orders service with their id
//!     request: { method: GET, url: "/api/orders?page=2", claims: { sub: "7", scope: orders } }
//!     expect:
//!       route: orders
//!       upstream: orders
//!       upstream_path: "/orders?page=2"
//!       upstream_headers: { X-User-Id: "7" }
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::config::diag::Diagnostics;
use crate::config::load::{self, Locations};
use crate::explain::{self, Ask, Explanation};
use crate::snapshot::Snapshot;

/// The cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown when it fails; defaults to the request.
    #[serde(default)]
    pub name: Option<String>,
    pub request: CaseRequest,
    pub expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Assume a verified token with these claims (as `tollgate explain --token-claims`).
    #[serde(default)]
    pub claims: Option<Map<String, Json>>,
    #[serde(default = "default_ip")]
    pub client_ip: IpAddr,
}

fn default_method() -> String {
    "GET".into()
}

fn default_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// What must hold; a field left out is not checked.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The route chosen; `none` for a request no route takes.
    pub route: Option<String>,
    /// The status the gateway answers with itself (400, 401, 403, 404, 405, 413, 429...). A request
    /// that is proxied has none: expecting one fails.
    pub status: Option<u16>,
    /// The upstream it is proxied to.
    pub upstream: Option<String>,
    /// The path sent upstream; with a `?`, the whole target with its query.
    pub upstream_path: Option<String>,
    /// Headers the plugins set on the upstream request (each must be there with this value).
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
}

/// One failed case: where it is, and what differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub file: String,
    pub line: usize,
    pub name: String,
    pub problems: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: FAIL {}: {}",
            self.file,
            self.line,
            self.name,
            self.problems.join("; ")
        )
    }
}

/// Read a cases file: `Err` with located diagnostics when it is not one (malformed YAML, an unknown
/// field, a wrong type).
pub fn load(file: &str) -> Result<(CasesFile, Locations), Diagnostics> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Diagnostics(vec![crate::config::diag::Diagnostic {
            file: file.to_string(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read file: {e}"),
            severity: crate::config::diag::Severity::Error,
        }])
    })?;
    let locations = load::locate(file, &text)?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let cases: CasesFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, col) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or_else(|| locations.value(&path));
        Diagnostics(vec![crate::config::diag::Diagnostic {
            file: file.to_string(),
            line,
            col,
            path,
            message: inner.to_string(),
            severity: crate::config::diag::Severity::Error,
        }])
    })?;
    Ok((cases, locations))
}

fn check(case: &Case, got: &Explanation) -> Vec<String> {
    let e = &case.expect;
    let mut bad = Vec::new();
    if let Some(want) = &e.route {
        let have = got.route.as_deref().unwrap_or("none");
        if want != have {
            bad.push(format!("route: expected {want}, got {have}"));
        }
    }
    match (e.status, got.status) {
        (Some(want), Some(have)) if want != have => bad.push(format!(
            "status: expected {want}, got {have} ({})",
            got.reason.as_deref().unwrap_or("")
        )),
        (Some(want), None) => bad.push(format!(
            "status: expected {want}, but the request is {}",
            match &got.upstream {
                Some(u) => format!("proxied to {}", u.name),
                None => "composed".to_string(),
            }
        )),
        (None, Some(have)) if e.upstream.is_some() || e.upstream_path.is_some() => {
            bad.push(format!(
                "expected it proxied, but the gateway answers {have} ({})",
                got.reason.as_deref().unwrap_or("")
            ))
        }
        _ => {}
    }
    if let Some(want) = &e.upstream {
        let have = got.upstream.as_ref().map_or("none", |u| u.name.as_str());
        if want != have {
            bad.push(format!("upstream: expected {want}, got {have}"));
        }
    }
    if let Some(want) = &e.upstream_path {
        let have = got.upstream.as_ref().map_or("none", |u| {
            if want.contains('?') {
                u.target.as_str()
            } else {
                u.path.as_str()
            }
        });
        if want != have {
            bad.push(format!("upstream_path: expected {want}, got {have}"));
        }
    }
    for (name, want) in &e.upstream_headers {
        let have = got
            .upstream_headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        if have != Some(want.as_str()) {
            bad.push(format!(
                "upstream header {name}: expected {want}, got {}",
                have.unwrap_or("none")
            ));
        }
    }
    bad
}

/// Run every case against `snap`: the failures, and how many cases ran. A case whose request cannot
/// be written at all (a bad method or header) fails with that reason.
pub fn run(snap: &Snapshot, cases: &CasesFile, at: &Locations) -> (Vec<Failure>, usize) {
    let mut failures = Vec::new();
    for (i, case) in cases.cases.iter().enumerate() {
        let r = &case.request;
        let ask = Ask {
            method: r.method.clone(),
            url: r.url.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            claims: r.claims.clone(),
            client_ip: r.client_ip,
        };
        let problems = match explain::explain(snap, &ask) {
            Ok(got) => check(case, &got),
            Err(e) => vec![e],
        };
        if !problems.is_empty() {
            let (line, _) = at.value(&format!("cases[{i}]"));
            failures.push(Failure {
                file: at.file().to_string(),
                line,
                name: case
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{} {}", r.method, r.url)),
                problems,
            });
        }
    }
    (failures, cases.cases.len())
}
