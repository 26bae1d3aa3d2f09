//! The cost of the request-phase plugins on their own (no sockets): a local rate-limit check, a Redis
//! rate-limit check (against a real `redis-server` on loopback, when one is installed), and JWT
//! verification (HS256, RS256, ES256), of a token seen before and of a new one.
//!
//! Run: `cargo bench -p tollgate --bench plugins`. Figures are recorded in `benches/README.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pingora_http::RequestHeader;
use tollgate::config::load::load_str;
use tollgate::plugin::{Decision, PluginState, RequestView};
use tollgate::snapshot::Snapshot;

fn snapshot(yaml: &str) -> Snapshot {
    let l = load_str("bench.yaml", yaml, &|_| None).unwrap();
    assert!(!l.diagnostics.has_errors(), "{}", l.diagnostics);
    Snapshot::from_loaded(&l, &tollgate::plugin::Registry::builtin(), None)
        .unwrap()
        .0
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

fn config(redis_url: &str) -> String {
    format!(
        "redis: {{ url: \"{redis_url}\", timeout: 1s }}
rate_limits:
  local: {{ requests: 1000000000, per: 1h }}
  shared: {{ requests: 1000000000, per: 1h, store: redis, on_error: fail_open }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: \"{SECRET}\" }}
    rs: {{ algorithms: [RS256], public_key_file: \"{FIXTURES}/rsa1.pub\" }}
    es: {{ algorithms: [ES256], public_key_file: \"{FIXTURES}/ec256.pub\" }}
upstreams:
  be: {{ targets: [{{ addr: \"127.0.0.1:9\" }}] }}
routes:
  - {{ name: local, match: {{ path: /local }}, upstream: be, plugins: [{{ rate_limit: local }}] }}
  - {{ name: shared, match: {{ path: /shared }}, upstream: be, plugins: [{{ rate_limit: shared }}] }}
  - {{ name: hs, match: {{ path: /hs }}, upstream: be, plugins: [{{ jwt: {{ provider: hs }} }}] }}
  - {{ name: rs, match: {{ path: /rs }}, upstream: be, plugins: [{{ jwt: {{ provider: rs }} }}] }}
  - {{ name: es, match: {{ path: /es }}, upstream: be, plugins: [{{ jwt: {{ provider: es }} }}] }}
"
    )
}

/// A token for `sub` `bench-N`.
fn token(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, n: usize) -> String {
    let claims = serde_json::json!({"sub": format!("bench-{n}"), "exp": jsonwebtoken::get_current_timestamp() + 86_400});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).unwrap()
}

/// Run route `i`'s chain for `req` from `ip`; it must let the request through.
async fn run(snap: &Snapshot, i: usize, req: &RequestHeader, ip: IpAddr) {
    let route = &snap.routes[i];
    let view = RequestView {
        req,
        client_ip: ip,
        path: "/",
        route: &route.name,
        request_id: "bench",
    };
    let mut state = PluginState::default();
    let (d, _) = route.chain.request(&view, &mut state).await;
    assert!(matches!(d, Decision::Continue), "{d:?}");
    black_box(state);
}

/// The integration tests' harness, for its `redis-server` on a free loopback port.
#[path = "../gateway/tests/common/mod.rs"]
mod common;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let installed = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    let redis = installed.then(common::Redis::start);
    let url = redis
        .as_ref()
        .map_or("redis://127.0.0.1:1".to_string(), common::Redis::url);
    let snap = snapshot(&config(&url));
    let plain = RequestHeader::build("GET", b"/", None).unwrap();

    let mut n = 0u32;
    c.bench_function("rate_limit/local (1,000 client IPs)", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (n % 1000)));
            rt.block_on(run(&snap, 0, &plain, ip))
        })
    });
    if redis.is_some() {
        c.bench_function("rate_limit/redis (1,000 client IPs, loopback)", |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (n % 1000)));
                rt.block_on(run(&snap, 1, &plain, ip))
            })
        });
    } else {
        eprintln!("redis-server not found: skipping the Redis rate-limit benchmark");
    }
    c.bench_function("empty chain baseline (block_on + state)", |b| {
        let empty = snapshot("upstreams:\n  be: { targets: [{ addr: \"127.0.0.1:9\" }] }\nroutes:\n  - { name: r, match: { path: / }, upstream: be }\n");
        b.iter(|| rt.block_on(run(&empty, 0, &plain, IpAddr::V4(Ipv4Addr::LOCALHOST))))
    });

    let read = |f: &str| std::fs::read(format!("{FIXTURES}/{f}")).unwrap();
    let keys = [
        (
            2,
            "HS256",
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        ),
        (
            3,
            "RS256",
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(&read("rsa1.key")).unwrap(),
        ),
        (
            4,
            "ES256",
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(&read("ec256.key")).unwrap(),
        ),
    ];
    let bearer = |t: &str| {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", format!("Bearer {t}"))
            .unwrap();
        req
    };
    for (i, name, alg, key) in &keys {
        // The same token again: what a client sending its token on every request costs (the
        // provider's verified-token cache answers).
        let again = bearer(&token(*alg, key, 0));
        c.bench_function(&format!("jwt/{name} (token seen before)"), |b| {
            b.iter(|| rt.block_on(run(&snap, *i, &again, IpAddr::V4(Ipv4Addr::LOCALHOST))))
        });
        // A token not seen before: the signature check. Cycling through one token more than the
        // cache holds means every lookup misses.
        let fresh: Vec<RequestHeader> = (0..=tollgate::plugin::jwt::CACHE_ENTRIES)
            .map(|n| bearer(&token(*alg, key, n)))
            .collect();
        let mut n = 0;
        c.bench_function(&format!("jwt/{name} (new token)"), |b| {
            b.iter(|| {
                n = (n + 1) % fresh.len();
                rt.block_on(run(&snap, *i, &fresh[n], IpAddr::V4(Ipv4Addr::LOCALHOST)))
            })
        });
    }
}

criterion_group! {
    name = plugins;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(plugins);
