//! gRPC through the real `tollgate` binary: a real gRPC server (tonic's `grpc.health.v1.Health`) behind
//! an `h2c` upstream, a real gRPC client in front of an `h2c` listener. Unary and server-streaming calls,
//! metadata both ways, trailers (a tonic call fails without its `grpc-status` trailer), the gateway's
//! own refusals as gRPC statuses, the deadline, and HTTP/2 multiplexing towards the upstream.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Gateway;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthService;
use tonic_health::ServingStatus;

/// A gRPC health server on 127.0.0.1 (HTTP/2 in clear), with the metadata of every call it got and the
/// connections it accepted.
struct Upstream {
    addr: SocketAddr,
    reporter: tonic_health::server::HealthReporter,
    metadata: Arc<Mutex<Vec<MetadataMap>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        Self::start_with(None).await
    }

    /// With `tls`: HTTP/2 over TLS (ALPN `h2`).
    async fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, _) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let metadata = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = metadata.clone();
        let service = HealthServer::with_interceptor(
            HealthService::from_health_reporter(reporter.clone()),
            move |req: tonic::Request<()>| {
                seen.lock().unwrap().push(req.metadata().clone());
                Ok(req)
            },
        );
        let counted = connections.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |c| {
            if c.is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            c
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        let task = tokio::spawn(async move {
            let _ = builder
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Upstream {
            addr,
            reporter,
            metadata,
            connections,
            task,
        }
    }
}

impl Upstream {
    /// Calls it got, the gateway's health checks left out.
    fn calls(&self) -> usize {
        self.metadata
            .lock()
            .unwrap()
            .iter()
            .filter(|m| {
                m.get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .is_none_or(|v| !v.starts_with("tollgate-health-check"))
            })
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SECRET: &str = "grpc-test-secret-0123456789abcdef0123";

fn config(up: SocketAddr, closed: u16) -> String {
    format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 2, h2c: true }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: "{SECRET}" }}
rate_limits:
  one: {{ requests: 1, per: 1m, key: route }}
upstreams:
  health: {{ targets: [{{ addr: "{up}" }}], protocol: h2c }}
  down: {{ targets: [{{ addr: "127.0.0.1:{closed}" }}], protocol: h2c, timeouts: {{ connect: 1s }} }}
  capped:
    targets: [{{ addr: "{up}" }}]
    protocol: h2c
    retry: {{ attempts: 1, timeout: 2s }}
routes:
  - {{ name: secured, match: {{ path_prefix: /grpc.health.v1.Health/, headers: {{ x-route: secured }} }}, upstream: health, plugins: [{{ jwt: {{ provider: hs }} }}] }}
  - {{ name: limited, match: {{ path_prefix: /grpc.health.v1.Health/, headers: {{ x-route: limited }} }}, upstream: health, plugins: [{{ rate_limit: one }}] }}
  - {{ name: down, match: {{ path_prefix: /grpc.health.v1.Health/, headers: {{ x-route: down }} }}, upstream: down }}
  - {{ name: capped, match: {{ path_prefix: /grpc.health.v1.Health/, headers: {{ x-route: capped }} }}, upstream: capped }}
  - {{ name: health, match: {{ path_prefix: /grpc.health.v1.Health/ }}, upstream: health }}
"#
    )
}

/// A server-streaming `Watch`: the first status, then a change pushed while the call is open.
async fn watch_sees_a_change(c: &mut HealthClient<tonic::transport::Channel>, up: &Upstream) {
    let mut stream = c.watch(check(None)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, Wire::Serving as i32);
    up.reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, Wire::NotServing as i32);
}

async fn client(gw: &Gateway) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn check(route: Option<&str>) -> tonic::Request<HealthCheckRequest> {
    let mut r = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(route) = route {
        r.metadata_mut().insert("x-route", route.parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_with_metadata_and_trailers() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, common::free_port()));
    let mut c = client(&gw).await;

    let mut req = check(None);
    req.metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let resp = c.check(req).await.unwrap();
    assert_eq!(resp.get_ref().status, Wire::Serving as i32);
    // The gateway's own header comes back as response metadata; the client's reached the server.
    assert!(resp.metadata().get("x-request-id").is_some());
    let seen = up.metadata.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].get("x-tenant").unwrap(), "acme");
    assert!(seen[0].get("x-forwarded-for").is_some());
    // gRPC's `te: trailers` goes end to end.
    assert_eq!(seen[0].get("te").unwrap(), "trailers");

    watch_sees_a_change(&mut c, &up).await;

    let line = gw.wait_log(|l| l["route"] == "health" && l["status"] == 200);
    assert_eq!(line["protocol"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_refusals_are_grpc_statuses() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, common::free_port()));
    let mut c = client(&gw).await;

    let e = c.check(check(Some("secured"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("unauthenticated"), "{}", e.message());

    assert!(c.check(check(Some("limited"))).await.is_ok());
    let e = c.check(check(Some("limited"))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    let e = c.check(check(Some("down"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("upstream_unavailable"),
        "{}",
        e.message()
    );

    // No route for another service: UNIMPLEMENTED, as a server without it would say.
    let e = tonic_client_call(&gw, "/pkg.Missing/Method").await;
    assert_eq!(e, Code::Unimplemented);
    // The refused calls never reached the server; the allowed one did.
    assert_eq!(up.metadata.lock().unwrap().len(), 1);

    // Logged and counted with their gRPC status (the HTTP status of a gRPC answer is 200).
    let line = gw.wait_log(|l| l["route"] == "secured");
    assert_eq!(
        (line["status"].as_u64(), line["grpc_status"].as_u64()),
        (Some(200), Some(16))
    );
    let m = String::from_utf8(gw.admin_request("GET", "/metrics", &[]).body).unwrap();
    for want in [
        r#"tollgate_grpc_responses_total{code="UNAUTHENTICATED",route="secured"} 1"#,
        r#"tollgate_grpc_responses_total{code="OK",route="limited"} 1"#,
        r#"tollgate_grpc_responses_total{code="RESOURCE_EXHAUSTED",route="limited"} 1"#,
        r#"tollgate_grpc_responses_total{code="UNAVAILABLE",route="down"} 1"#,
        r#"tollgate_grpc_responses_total{code="UNIMPLEMENTED",route=""} 1"#,
    ] {
        assert!(m.contains(want), "{want} missing in:\n{m}");
    }
}

/// A unary call to `path` with an empty message, by hand (no generated client for it): the status.
async fn tonic_client_call(gw: &Gateway, path: &'static str) -> Code {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, tonic_health::pb::HealthCheckResponse>::default();
    let r = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }),
            path.parse().unwrap(),
            codec,
        )
        .await;
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_sent_upstream_is_capped_by_the_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, common::free_port()));
    let mut c = client(&gw).await;
    let mut req = check(Some("capped"));
    req.set_timeout(Duration::from_secs(30));
    c.check(req).await.unwrap();
    let seen = up.metadata.lock().unwrap().clone();
    let t = seen[0]
        .get("grpc-timeout")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let ms: u64 = t.trim_end_matches('m').parse().unwrap();
    assert!(t.ends_with('m') && ms <= 2000 && ms > 0, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_are_multiplexed_over_few_h2_connections() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(up.addr, common::free_port()));
    let addr = gw.addr;
    // A gRPC call over HTTP/1.1 from the client side: an empty HealthCheckRequest, length-prefixed.
    let call = move || {
        let raw = "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/grpc\r\nTE: trailers\r\nContent-Length: 5\r\nConnection: close\r\n\r\n\0\0\0\0\0";
        common::send(addr, raw.as_bytes())
    };
    let warm = tokio::task::spawn_blocking(call).await.unwrap();
    assert_eq!(
        warm.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&warm.body)
    );
    let before = up.connections.load(Ordering::Relaxed);
    let calls: Vec<_> = (0..40).map(|_| tokio::task::spawn_blocking(call)).collect();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        // The HealthCheckResponse{status: SERVING}: a 2-byte message after the 5-byte prefix.
        assert_eq!(r.body, [0, 0, 0, 0, 2, 8, 1]);
    }
    let after = up.connections.load(Ordering::Relaxed);
    assert!(before >= 1);
    // Over HTTP/1.1 that would be 40 connections; over h2 a few (Pingora opens another when requests
    // race for a connection that is still being set up: 1-5 on an idle machine, 12 seen with both
    // cores busy), so half of the HTTP/1 count is the bound.
    assert!(
        after - before < 20,
        "40 client connections took {} new upstream ones",
        after - before
    );
    assert_eq!(up.metadata.lock().unwrap().len(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_check_takes_a_not_serving_target_out_and_back() {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let token = "a-token-for-the-admin-api";
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: ["{{listen}}"], h2c: true, admin: {{ listen: "{{admin}}", token: "{token}" }} }}
upstreams:
  pair:
    targets: [{{ addr: "{}" }}, {{ addr: "{}" }}]
    protocol: h2c
    health_check: {{ kind: grpc, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 1 }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: pair }}
"#,
        a.addr, b.addr
    ));
    let auth = format!("Authorization: Bearer {token}");
    let healthy = |addr: SocketAddr| {
        let ups = gw.admin_request("GET", "/admin/upstreams", &[&auth]).json();
        ups["pair"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["addr"] == addr.to_string())
            .unwrap()["healthy"]
            .as_bool()
            .unwrap()
    };
    let wait_for = |addr: SocketAddr, want: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while healthy(addr) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} never became healthy={want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The checks ran: both answered SERVING.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.metadata.lock().unwrap().is_empty() || b.metadata.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no health check reached the targets"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy(a.addr) && healthy(b.addr));

    a.reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    wait_for(a.addr, false);
    let mut c = client(&gw).await;
    let before = a.calls();
    for _ in 0..10 {
        c.check(check(None)).await.unwrap();
    }
    assert_eq!(a.calls(), before, "a NOT_SERVING target gets no calls");
    assert_eq!(b.calls(), 10);

    a.reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    wait_for(a.addr, true);
    for _ in 0..10 {
        c.check(check(None)).await.unwrap();
    }
    assert!(a.calls() > before, "back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_call_from_a_browser_reaches_the_grpc_server() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: ["{{listen}}"], grpc_web: true }}
upstreams:
  health: {{ targets: [{{ addr: "{}" }}], protocol: h2c }}
routes:
  - {{ name: r, match: {{ path_prefix: /grpc.health.v1.Health/ }}, upstream: health }}
"#,
        up.addr
    ));
    let addr = gw.addr;
    // What grpc-web's JavaScript client sends over HTTP/1.1: a framed empty HealthCheckRequest.
    let r = tokio::task::spawn_blocking(move || {
        let raw = "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\nConnection: close, X-Hop\r\nX-Hop: secret\r\nProxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n\0\0\0\0\0";
        common::send(addr, raw.as_bytes())
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // The server's `application/grpc`, as gRPC-Web.
    assert_eq!(r.header("content-type"), Some("application/grpc-web"));
    // The message, then the trailers as a frame of their own (flag 0x80), in the body.
    // (The harness has removed the chunked framing.)
    let body = r.body.clone();
    assert_eq!(&body[..7], [0, 0, 0, 0, 2, 8, 1], "{body:?}");
    assert_eq!(body[7], 0x80, "{body:?}");
    let trailers = String::from_utf8_lossy(&body[12..]).to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    // The server got it as gRPC.
    let seen = up.metadata.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].get("content-type").unwrap(),
        "application/grpc+proto"
    );
    // HTTP/1 to an HTTP/2 upstream: Pingora drops `Connection` itself before the gateway's filter
    // runs, so what it named is found from the client's head; nothing hop-by-hop reaches the server.
    assert_eq!(seen[0].get("x-kept").unwrap(), "yes");
    assert_eq!(seen[0].get("te").unwrap(), "trailers");
    for h in ["x-hop", "proxy-authorization", "connection"] {
        assert!(seen[0].get(h).is_none(), "{h} reached the upstream");
    }
}

/// A CA and a `localhost` leaf it signed: (CA PEM, leaf PEM, leaf key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_both_ways_h2_is_negotiated_by_alpn() {
    let (ca, cert, key) = certificates();
    let identity = tonic::transport::Identity::from_pem(&cert, &key);
    let up = Upstream::start_with(Some(
        tonic::transport::ServerTlsConfig::new().identity(identity),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    for (name, text) in [("ca.pem", &ca), ("gw.pem", &cert), ("gw.key", &key)] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let gw = Gateway::start(&format!(
        r#"
server:
  listen: ["{{listen}}"]
  tls: {{ listen: ["{{tls_listen}}"], cert: "{d}/gw.pem", key: "{d}/gw.key" }}
upstreams:
  health:
    targets: [{{ addr: "{}" }}]
    protocol: h2
    tls: {{ sni: localhost, ca: "{d}/ca.pem" }}
routes:
  - {{ name: r, match: {{ path_prefix: /grpc.health.v1.Health/ }}, upstream: health }}
"#,
        up.addr
    ));
    // `start` waits for the plain listener; the HTTPS one comes up alongside.
    let tls_addr = gw.tls.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(tls_addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "no HTTPS listener");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", gw.tls.unwrap()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = HealthClient::new(channel);
    let resp = c.check(check(None)).await.unwrap();
    assert_eq!(resp.get_ref().status, Wire::Serving as i32);
    watch_sees_a_change(&mut c, &up).await;
    assert_eq!(up.calls(), 2);
    let line = gw.wait_log(|l| l["route"] == "r" && l["scheme"] == "https");
    assert_eq!(line["protocol"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_ends_the_call_with_deadline_exceeded() {
    // Accepts, reads, never answers (not even HTTP/2's settings).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: ["{{listen}}"], h2c: true }}
upstreams:
  silent:
    targets: [{{ addr: "{silent_addr}" }}]
    protocol: h2c
    timeouts: {{ read: 30s }}
    retry: {{ attempts: 1, timeout: 400ms }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: silent }}
"#
    ));
    let mut c = client(&gw).await;
    let t = std::time::Instant::now();
    let e = c.check(check(None)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("upstream_timeout"), "{}", e.message());
    // The route's 400ms, not the upstream's 30s read timeout.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_client_that_stalls_in_its_preface_is_closed_at_the_head_deadline() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: ["{{listen}}"], h2c: true, limits: {{ header_read_timeout: 500ms }} }}
upstreams:
  health: {{ targets: [{{ addr: "{}" }}], protocol: h2c }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: health }}
"#,
        up.addr
    ));
    let addr = gw.addr;
    let closed = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // The start of the preface, then nothing.
        s.write_all(b"PRI * HTTP/2").unwrap();
        let mut buf = [0u8; 64];
        // Closed by the gateway (0 bytes or a reset), not left to the 20 s read timeout.
        match s.read(&mut buf) {
            Ok(0) => true,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
            Ok(_) => false,
        }
    })
    .await
    .unwrap();
    assert!(closed, "the stalled connection was not closed");
    // A real h2c client still gets through.
    assert!(client(&gw).await.check(check(None)).await.is_ok());
}
