//! A small gRPC load tool for `benches/grpc.sh` (built from the gateway's dev-dependencies, tonic's
//! `grpc.health.v1.Health`, so it needs no protoc):
//!
//! - `grpc_load server ADDR` serves `Health` (in clear, HTTP/2) on ADDR until killed;
//! - `grpc_load client URL CONNECTIONS STREAMS SECONDS` makes unary `Health/Check` calls to URL for
//!   SECONDS, over CONNECTIONS HTTP/2 connections with STREAMS calls in flight on each, and prints
//!   `calls=N errors=E rps=R p50_ms=A p99_ms=B` (latencies of the successful calls).
//!
//! Loopback only; every run is bounded by SECONDS.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") if args.len() == 2 => server(&args[1]).await,
        Some("client") if args.len() == 5 => {
            let n = |i: usize| args[i].parse::<usize>().expect("a number");
            client(&args[1], n(2), n(3), Duration::from_secs(n(4) as u64)).await
        }
        _ => {
            eprintln!(
                "usage: grpc_load server ADDR | grpc_load client URL CONNECTIONS STREAMS SECONDS"
            );
            std::process::exit(2);
        }
    }
}

async fn server(addr: &str) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(service)
        .serve(addr.parse().expect("ADDR is host:port"))
        .await
        .expect("serve");
}

async fn client(url: &str, connections: usize, streams: usize, secs: Duration) {
    let end = Instant::now() + secs;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let channel = tonic::transport::Channel::from_shared(url.to_string())
            .expect("URL")
            .connect()
            .await
            .expect("connect");
        for _ in 0..streams {
            let mut c = HealthClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < end {
                    let t = Instant::now();
                    match c
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                    {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "calls={} errors={errors} rps={:.0} p50_ms={:.3} p99_ms={:.3}",
        all.len(),
        all.len() as f64 / secs.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
}
