//! Route matching at 10, 1,000 and 10,000 routes, and path normalization.
//!
//! Run: `cargo bench -p tollgate --bench routing`. Figures are recorded in `benches/README.md`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use tollgate::path::normalize;
use tollgate::router::{Found, HostMatch, PathMatch, RouteMatcher, Router};

/// `n` routes in the shapes real configs have: per service an exact health path, a templated
/// resource path with a method list, and a prefix; a few wildcard-host routes on top.
/// Returns the router and the index of the last service (whose routes are the last ones added).
fn table(n: usize) -> (Router, usize) {
    let mut routes = Vec::with_capacity(n);
    let m = |path, methods: &[Method]| RouteMatcher {
        host: HostMatch::Any,
        path,
        methods: methods.to_vec(),
        headers: vec![],
    };
    let mut i = 0;
    while routes.len() + 3 <= n {
        routes.push(m(
            PathMatch::Exact(format!("/svc{i}/healthz")),
            &[Method::GET],
        ));
        routes.push(m(
            PathMatch::Template(format!("/svc{i}/users/{{id}}/orders/{{oid}}")),
            &[Method::GET, Method::DELETE],
        ));
        routes.push(m(PathMatch::Prefix(format!("/svc{i}/api")), &[]));
        i += 1;
    }
    // The remainder: wildcard-host routes the request's host does not match, but must be checked.
    let mut t = 0;
    while routes.len() < n {
        routes.push(RouteMatcher {
            host: HostMatch::Suffix(format!(".tenant{t}.example.com")),
            path: PathMatch::Prefix("/".into()),
            methods: vec![],
            headers: vec![],
        });
        t += 1;
    }
    (Router::new(routes).unwrap(), i - 1)
}

fn bench_match(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let (r, last) = table(n);
        let cases = [
            ("exact", format!("/svc{last}/healthz")),
            ("template", format!("/svc{last}/users/42/orders/7")),
            ("prefix", format!("/svc{last}/api/v1/items/9")),
            ("miss", "/nothing/here".to_string()),
        ];
        for (kind, path) in &cases {
            // Check the case resolves as intended so the figure means what it says.
            let f = r.find(Some("api.example.com"), &Method::GET, path, &headers);
            assert_eq!(
                matches!(f, Found::Route(..)),
                *kind != "miss",
                "{kind} {path} at {n}: {f:?}"
            );
            g.bench_with_input(BenchmarkId::new(*kind, n), path, |b, p| {
                b.iter(|| {
                    r.find(
                        black_box(Some("api.example.com")),
                        &Method::GET,
                        black_box(p),
                        &headers,
                    )
                })
            });
        }
    }
    g.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    for (name, p) in [
        ("clean", "/api/users/42/orders"),
        ("dotted", "/api/users/./42/../42//orders"),
        ("encoded", "/api/%75sers/%2e%2e/users/42/a%20b"),
    ] {
        g.bench_function(name, |b| b.iter(|| normalize(black_box(p)).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench_match, bench_normalize);
criterion_main!(benches);
