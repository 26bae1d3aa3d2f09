//! PROXY protocol on the public listener: the client address is taken from a v1 or v2 header only
//! when the connection's peer is a configured balancer, a trusted peer without a header is closed, and
//! an untrusted peer's header is just a malformed request. (HTTPS: `tls.rs`.)
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A gateway whose balancers are `from`; `/blocked` refuses 203.0.113.0/24 by `ip_filter`.
fn gateway(be: &Backend, from: &str) -> Gateway {
    Gateway::in_process(&format!(
        r#"
server:
  listen: ["{{listen}}"]
  proxy_protocol: {{ from: [{from}] }}
  limits: {{ header_read_timeout: 1s }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - name: blocked
    match: {{ path_prefix: /blocked }}
    upstream: be
    plugins: [{{ ip_filter: {{ deny: ["203.0.113.0/24"] }} }}]
  - name: all
    match: {{ path_prefix: / }}
    upstream: be
"#,
        be.addr
    ))
}

const GET: &[u8] = b"GET /who HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n";

fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

fn with(header: &[u8], request: &[u8]) -> Vec<u8> {
    [header, request].concat()
}

/// What the gateway sent back before closing: empty when it closed without an answer.
fn raw_exchange(g: &Gateway, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

#[test]
fn a_trusted_balancer_tells_the_client_address_in_v1_or_v2() {
    let be = Backend::start("be", Mode::Echo);
    let g = gateway(&be, r#""127.0.0.1/32""#);

    let r = send(
        g.addr,
        &with(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8080\r\n", GET),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    let r = send(g.addr, &with(&v2([198, 51, 100, 9], 51001), GET));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("198.51.100.9")
    );
    let r = send(
        g.addr,
        &with(b"PROXY TCP6 2001:db8::7 ::1 51002 8080\r\n", GET),
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("2001:db8::7")
    );
    // The address is the client's everywhere: the access log, and ip_filter.
    g.wait_log(|l| l["client_ip"] == "203.0.113.7" && l["path"] == "/who");
    let r = send(
        g.addr,
        &with(
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51003 8080\r\n",
            b"GET /blocked HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
        ),
    );
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let r = send(
        g.addr,
        &with(
            b"PROXY TCP4 192.0.2.1 127.0.0.1 51004 8080\r\n",
            b"GET /blocked HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
        ),
    );
    assert_eq!(r.status, 200);

    // The balancer's health checks (LOCAL, UNKNOWN) keep the connection's own address.
    let local = [b"\r\n\r\n\0\r\nQUIT\n".as_slice(), &[0x20, 0x00, 0, 0]].concat();
    let r = send(g.addr, &with(&local, GET));
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    let r = send(g.addr, &with(b"PROXY UNKNOWN\r\n", GET));
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[test]
fn a_trusted_peer_without_a_valid_header_is_closed_in_bounded_time() {
    let be = Backend::start("be", Mode::Echo);
    let g = gateway(&be, r#""127.0.0.1/32""#);
    // Around the balancer: no header, no answer, nothing forwarded.
    assert!(raw_exchange(&g, GET).is_empty());
    assert!(raw_exchange(&g, &with(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n", GET)).is_empty());
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A balancer that stalls inside the header is cut at the head deadline (1 s), not held.
    let started = Instant::now();
    assert!(raw_exchange(&g, b"PROXY TCP4 203.0.").is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_untrusted_peer_cannot_choose_its_address() {
    let be = Backend::start("be", Mode::Echo);
    let g = gateway(&be, r#""10.0.0.0/8", "192.0.2.1""#);
    // Its plain requests are served as from itself.
    let r = send(g.addr, GET);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    // A header it sends is not read: it is a malformed request, answered 400 in JSON and not
    // forwarded.
    let r = send(
        g.addr,
        &with(b"PROXY TCP4 10.1.1.1 127.0.0.1 51000 8080\r\n", GET),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["status"], 400);
    assert_eq!(be.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn from_must_name_the_balancers() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("t.yaml");
    std::fs::write(
        &f,
        "server:\n  listen: [\"127.0.0.1:0\"]\n  proxy_protocol: { from: [] }\nroutes: []\n",
    )
    .unwrap();
    let (code, out, _) = tollgate(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("3:27: error: server.proxy_protocol.from: name the load balancers"),
        "{out}"
    );
}
