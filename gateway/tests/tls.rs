//! HTTPS listeners: a rustls client that trusts only the test CA, certificate renewal picked up by the
//! file watcher (through the binary, whose listener binds its configured address), broken certificates
//! refused with their place, the rest on gateways in process.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `localhost`, valid `from`..`to` (None: rcgen's default window); (cert PEM, key PEM, DER).
    fn leaf(&self, dates: Option<(i32, i32)>) -> (String, String, Vec<u8>) {
        self.leaf_for("localhost", dates)
    }

    /// A leaf for the DNS name `name`.
    fn leaf_for(&self, name: &str, dates: Option<(i32, i32)>) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        if let Some((from, to)) = dates {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }
}

/// GET `path` over TLS to `addr` as `localhost`, trusting only `root`: the response and the leaf
/// certificate the server presented.
fn https_get(
    addr: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> (Response, Vec<u8>) {
    https_get_as(addr, root, "localhost", path)
}

/// The same, asking for (and verifying) the name `server_name`.
fn https_get_as(
    addr: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
    server_name: &str,
    path: &str,
) -> (Response, Vec<u8>) {
    https_get_after(addr, root, server_name, path, b"")
}

/// The same, with `first` written on the connection before the TLS handshake (a PROXY header).
fn https_get_after(
    addr: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
    server_name: &str,
    path: &str,
    first: &[u8],
) -> (Response, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        server_name.to_string().try_into().unwrap(),
    )
    .unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(first).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    // A server may close without close_notify after `Connection: close`; what was read counts.
    let _ = tls.read_to_end(&mut buf);
    let leaf = tls.conn.peer_certificates().unwrap()[0].to_vec();
    (parse_response(&buf), leaf)
}

/// Write `STEM.pem` and `STEM.key` (to a temporary name, then renamed, as cert-manager and certbot do).
fn write_pair(dir: &Path, stem: &str, (cert, key, _): &(String, String, Vec<u8>)) {
    for (name, text) in [(format!("{stem}.pem"), cert), (format!("{stem}.key"), key)] {
        std::fs::write(dir.join(format!("{name}.tmp")), text).unwrap();
        std::fs::rename(dir.join(format!("{name}.tmp")), dir.join(&name)).unwrap();
    }
}

/// A gateway with a plain and an HTTPS listener (certificate `certs/gw.pem`) routing everything to `be`;
/// `server_extra` is added to the `server` mapping, `tls_extra` to `server.tls`. `start` is
/// `Gateway::start` (the binary) or `Gateway::in_process`.
fn https_gateway(
    start: fn(&str) -> Gateway,
    be: &Backend,
    certs: &Path,
    server_extra: &str,
    tls_extra: &str,
) -> (Gateway, SocketAddr) {
    let gw = start(&format!(
        r#"
server:
  {{ listen: ["{{listen}}"]{server_extra},
    tls: {{ listen: ["{{tls_listen}}"], cert: "{d}/gw.pem", key: "{d}/gw.key"{tls_extra} }} }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: be }}
"#,
        be.addr,
        d = certs.display()
    ));
    let tls_addr = gw.tls.unwrap();
    (gw, tls_addr)
}

#[test]
fn https_listener_serves_and_a_renewed_certificate_is_picked_up() {
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    let first = ca.leaf(Some((2020, 2090)));
    write_pair(certs.path(), "gw", &first);
    // Through the binary: the HTTPS listener bound by its configured address, and renewal by the file
    // watch of the process.
    let (gw, tls_addr) = https_gateway(
        Gateway::start,
        &be,
        certs.path(),
        ", reload: { watch: true, interval: 100ms }",
        "",
    );
    let (r, leaf) = https_get(tls_addr, &ca.root(), "/x");
    assert_eq!(r.status, 200);
    assert_eq!(leaf, first.2, "the configured certificate");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    let metrics = String::from_utf8(gw.admin_request("GET", "/metrics", &[]).body).unwrap();
    assert!(
        metrics.contains("tollgate_tls_certificate_expiry_timestamp_seconds 3786912000"),
        "expiry of the served certificate (2090-01-01)"
    );
    let plain = gw.get("/x");
    assert_eq!(
        plain.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );

    // Not TLS on the TLS port: the connection is refused, nothing else is affected.
    let mut s = TcpStream::connect(tls_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut junk = Vec::new();
    let _ = s.read_to_end(&mut junk);
    assert!(!String::from_utf8_lossy(&junk).contains("200 OK"));
    assert_eq!(https_get(tls_addr, &ca.root(), "/x").0.status, 200);

    // Renewal in place: the watcher reloads, new handshakes get the new certificate.
    let second = ca.leaf(None);
    write_pair(certs.path(), "gw", &second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while https_get(tls_addr, &ca.root(), "/x").1 != second.2 {
        assert!(
            Instant::now() < deadline,
            "renewed certificate not served: {}",
            gw.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken renewal (a key that is not the certificate's) is refused; the last good one stays.
    let other = ca.leaf(None);
    std::fs::write(certs.path().join("gw.key"), &other.1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .stderr_text()
        .contains("is not the key of the certificate")
    {
        assert!(
            Instant::now() < deadline,
            "bad key not reported: {}",
            gw.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (r, leaf) = https_get(tls_addr, &ca.root(), "/x");
    assert_eq!((r.status, &leaf), (200, &second.2));

    // Removing `server.tls` cannot close a listener before an upgrade; it keeps serving the last good one.
    gw.reload(|t| {
        let start = t.find(",\n    tls: {").unwrap();
        let end = start + t[start..].find("gw.key\" }").unwrap() + "gw.key\" }".len();
        format!("{}{}", &t[..start], &t[end..])
    });
    let (r, leaf) = https_get(tls_addr, &ca.root(), "/x");
    assert_eq!((r.status, leaf), (200, second.2));
}

#[test]
fn broken_certificates_are_reported_with_their_place() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let good = ca.leaf(None);
    let expired = ca.leaf(Some((2000, 2001)));
    let other = ca.leaf(None);
    write_pair(dir.path(), "good", &good);
    write_pair(dir.path(), "expired", &expired);
    std::fs::write(dir.path().join("other.key"), &other.1).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
    // The place is the value of the field at fault: `cert` on line 5, `key` on line 6.
    let cases = [
        (
            "missing.pem",
            "good.key",
            "5:11: error: server.tls.cert: cannot read",
        ),
        ("empty.pem", "good.key", "5:11: error: server.tls.cert: "),
        ("good.pem", "other.key", "6:10: error: server.tls.key: "),
        (
            "expired.pem",
            "expired.key",
            "5:11: error: server.tls.cert: the certificate expired on",
        ),
    ];
    for (cert, key, want) in cases {
        let path = dir.path().join("tollgate.yaml");
        // Paths relative to the config file's folder.
        std::fs::write(
            &path,
            format!(
                "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls:\n    listen: [\"127.0.0.1:8443\"]\n    cert: {cert}\n    key: {key}\nupstreams:\n  be: {{ targets: [{{ addr: \"127.0.0.1:1\" }}] }}\nroutes:\n  - {{ name: r, match: {{ path: /r }}, upstream: be }}\n"
            ),
        )
        .unwrap();
        let (code, out, err) = tollgate(&["validate", path.to_str().unwrap()]);
        let text = format!("{out}{err}");
        assert_eq!(code, 1, "{cert}/{key}: {text}");
        assert!(
            text.contains(&format!("{}:{want}", path.display())),
            "{cert}/{key}: want `{want}` in {text}"
        );
    }
    // The good pair validates; the listener must not overlap the plain one.
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(
        &path,
        "server:\n  listen: [\"0.0.0.0:8443\"]\n  tls: { listen: [\"127.0.0.1:8443\"], cert: good.pem, key: good.key }\nupstreams:\n  be: { targets: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: r, match: { path: /r }, upstream: be }\n",
    )
    .unwrap();
    let (code, out, err) = tollgate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        format!("{out}{err}")
            .contains("server.tls.listen[0]: `127.0.0.1:8443` is already a listener"),
        "{out}{err}"
    );
    std::fs::write(
        &path,
        "server:\n  listen: [\"127.0.0.1:8080\"]\n  tls: { listen: [\"127.0.0.1:8443\"], cert: good.pem, key: good.key }\nupstreams:\n  be: { targets: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: r, match: { path: /r }, upstream: be }\n",
    )
    .unwrap();
    let (code, out, err) = tollgate(&["validate", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn upstream_tls_verifies_the_certificate_and_its_name() {
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let other_ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "gw", &ca.leaf(None));
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), other_ca.cert.pem()).unwrap();
    // The TLS upstream: a second gateway terminating TLS (certificate for `localhost`) in front of `be`.
    let (_inner, inner_tls) = https_gateway(Gateway::in_process, &be, dir.path(), "", "");
    let up = |name: &str, tls: &str| {
        format!("  {name}: {{ targets: [{{ addr: \"{inner_tls}\" }}], tls: {tls} }}\n")
    };
    let d = dir.path().display();
    let outer = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"] }}\nupstreams:\n{}{}{}{}routes:\n  - {{ name: good, match: {{ path_prefix: /good }}, upstream: good }}\n  - {{ name: other_ca, match: {{ path_prefix: /other-ca }}, upstream: other_ca }}\n  - {{ name: wrong_name, match: {{ path_prefix: /wrong-name }}, upstream: wrong_name }}\n  - {{ name: system, match: {{ path_prefix: /system }}, upstream: system }}\n",
        up(
            "good",
            &format!("{{ sni: localhost, ca: \"{d}/ca.pem\" }}, health_check: {{ path: /hc, interval: 100ms, unhealthy: 1 }}"),
        ),
        up("other_ca", &format!("{{ sni: localhost, ca: \"{d}/other-ca.pem\" }}")),
        up("wrong_name", &format!("{{ sni: other.example, ca: \"{d}/ca.pem\" }}")),
        up("system", "{ sni: localhost }"),
    ));
    let r = outer.get("/good/x");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https"),
        "the hop to the inner gateway was TLS"
    );
    // Health checks speak TLS with the same name and CAs: after several rounds the target is still in.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(outer.get("/good/x").status, 200);
    // A certificate from a CA we do not trust, or for another name: never proxied (a proxied request
    // would get the inner gateway's 200). `/good` went first,
    // so a pooled connection to the same address and name exists and must not be reused for these.
    for path in ["/other-ca/x", "/wrong-name/x", "/system/x"] {
        let r = outer.get(path);
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.error_code(), "upstream_unavailable", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_multiplexes_requests() {
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "gw", &ca.leaf(None));
    let (gw, tls_addr) = https_gateway(Gateway::in_process, &be, dir.path(), "", "");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", tls_addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/h2/", tls_addr.port());
    let answers = futures::future::join_all((0..20).map(|i| {
        let (client, url) = (client.clone(), format!("{url}{i}"));
        async move { client.get(url).send().await.unwrap() }
    }))
    .await;
    for (i, r) in answers.into_iter().enumerate() {
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["path"], format!("/h2/{i}"));
        assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    }
    let line = gw.wait_log(|l| l["path"] == "/h2/7");
    assert_eq!(
        (&line["scheme"], &line["protocol"]),
        (&"https".into(), &"HTTP/2.0".into())
    );
    let plain = gw.get("/plain");
    let line = gw.wait_log(|l| l["path"] == "/plain");
    assert_eq!(plain.status, 200);
    assert_eq!(
        (&line["scheme"], &line["protocol"]),
        (&"http".into(), &"HTTP/1.1".into())
    );
}

#[test]
fn the_certificate_is_chosen_by_the_name_the_client_asks_for() {
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let default = ca.leaf(Some((2020, 2090)));
    let api = ca.leaf_for("api.test", Some((2020, 2080)));
    let wild = ca.leaf_for("*.wild.test", None);
    write_pair(dir.path(), "gw", &default);
    for (name, pair) in [("api", &api), ("wild", &wild)] {
        write_pair(dir.path(), name, pair);
    }
    let d = dir.path().display();
    let (gw, tls_addr) = https_gateway(
        Gateway::in_process,
        &be,
        dir.path(),
        "",
        &format!(", certificates: [{{ cert: \"{d}/api.pem\", key: \"{d}/api.key\" }}, {{ cert: \"{d}/wild.pem\", key: \"{d}/wild.key\" }}]"),
    );
    for (asked, want) in [
        ("api.test", &api.2),
        ("API.Test", &api.2),
        ("x.wild.test", &wild.2),
        ("localhost", &default.2),
    ] {
        let (r, leaf) = https_get_as(tls_addr, &ca.root(), asked, "/x");
        assert_eq!(r.status, 200, "{asked}");
        assert_eq!(&leaf, want, "certificate for {asked}");
    }
    let metrics = String::from_utf8(gw.admin_request("GET", "/metrics", &[]).body).unwrap();
    assert!(
        metrics.contains("tollgate_tls_certificate_expiry_timestamp_seconds 3471292800"),
        "the earliest expiry (2080-01-01): {metrics}"
    );
}

#[test]
fn a_proxy_protocol_header_before_the_tls_handshake_gives_the_client_address() {
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    write_pair(certs.path(), "gw", &ca.leaf(Some((2020, 2090))));
    let (_gw, tls_addr) = https_gateway(
        Gateway::in_process,
        &be,
        certs.path(),
        r#", proxy_protocol: { from: ["127.0.0.1"] }"#,
        "",
    );
    let (r, _) = https_get_after(
        tls_addr,
        &ca.root(),
        "localhost",
        "/x",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 8443\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    // From a trusted peer the header is required: a handshake without one gets no answer.
    let mut sock = TcpStream::connect(tls_addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"\x16\x03\x01\x00\x05hello").unwrap();
    let mut buf = Vec::new();
    let _ = sock.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{buf:?}");
}

#[test]
fn plain_http_is_redirected_to_https_which_sends_hsts() {
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let certs = tempfile::tempdir().unwrap();
    write_pair(certs.path(), "gw", &ca.leaf(Some((2020, 2090))));
    let (gw, tls_addr) = https_gateway(
        Gateway::in_process,
        &be,
        certs.path(),
        r#", https_redirect: {}, hsts: { max_age: 365d, include_subdomains: true },
    trusted_proxies: ["127.0.0.1/32"]"#,
        "",
    );
    let port = tls_addr.port();
    let hsts = "max-age=31536000; includeSubDomains";

    // Plain: a redirect to the same host, path and query on the HTTPS port; nothing forwarded.
    let before = be.hits.load(std::sync::atomic::Ordering::SeqCst);
    let r = send(
        gw.addr,
        b"GET /a/b?x=1&y HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 308, "{:?}", r.headers);
    let want = format!("https://localhost:{port}/a/b?x=1&y");
    assert_eq!(r.header("location"), Some(want.as_str()));
    assert_eq!(
        r.header("strict-transport-security"),
        None,
        "never over HTTP"
    );
    let r = request(gw.addr, "POST", "/orders", &[], Some("{}"));
    assert_eq!(r.status, 308, "the method and body are kept by a 308");
    assert_eq!(
        r.header("location"),
        Some(format!("https://test.local:{port}/orders").as_str())
    );
    assert_eq!(
        be.hits.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "redirected requests are not forwarded"
    );
    // HTTP/1.0 without a Host has nowhere to be sent.
    let r = send(gw.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "missing_host");
    // ACME HTTP-01 challenges are served over plain HTTP.
    let r = request(gw.addr, "GET", "/.well-known/acme-challenge/tok", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);
    // ... on the path routing would use: a challenge prefix with dot-segments is not one.
    for sneaky in [
        "/.well-known/acme-challenge/../../x",
        "/.well-known/acme-challenge/%2e%2e/%2E%2E/x",
    ] {
        let r = request(gw.addr, "GET", sneaky, &[], None);
        assert_eq!(r.status, 308, "{sneaky}");
    }
    assert_eq!(
        be.hits.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "only the real challenge was forwarded"
    );
    // A balancer that appends its own line: its (last) word counts, not the client's.
    let r = send(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: test.local\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    // A trusted balancer that ended TLS says so: served, with HSTS (the client saw HTTPS).
    let r = request(gw.addr, "GET", "/x", &["X-Forwarded-Proto: https"], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some(hsts));

    // HTTPS: served, with the policy.
    let (r, _) = https_get(tls_addr, &ca.root(), "/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some(hsts));
}

#[test]
fn an_untrusted_forwarded_proto_is_redirected_and_bad_sections_are_placed() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&format!(
        r#"
server:
  listen: ["{{listen}}"]
  https_redirect: {{ port: 443, status: 301 }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: be }}
"#,
        be.addr
    ));
    let r = request(gw.addr, "GET", "/p", &["X-Forwarded-Proto: https"], None);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://test.local/p"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.yaml");
    std::fs::write(
        &path,
        r#"server:
  listen: ["127.0.0.1:0"]
  https_redirect: { status: 303 }
  hsts: { max_age: 30d, preload: true }
upstreams:
  be: { targets: [{ addr: "127.0.0.1:9" }] }
routes:
  - { name: all, match: { path_prefix: / }, upstream: be }
"#,
    )
    .unwrap();
    let (code, out, err) = tollgate(&["validate", path.to_str().unwrap()]);
    let text = format!("{out}{err}");
    assert_ne!(code, 0, "{text}");
    for field in [
        "server.https_redirect.status",
        "server.https_redirect.port",
        "server.hsts.preload",
        "server.hsts.max_age",
    ] {
        assert!(text.contains(field), "{field}: {text}");
    }
}

/// Compression over HTTP/2: the same codings as over HTTP/1.1 (the brotli module and Pingora's run on
/// the HTTP/2 path too), each body complete and decodable, with no `transfer-encoding` on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_answers_are_compressed_and_complete() {
    use std::io::Read;
    let be = Backend::start("be", Mode::Echo);
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "gw", &ca.leaf(None));
    let (_gw, tls_addr) = https_gateway(
        Gateway::in_process,
        &be,
        dir.path(),
        ", compression: { min_size: 16 }",
        "",
    );
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", tls_addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for coding in ["br", "gzip", "zstd"] {
        let url = format!("https://localhost:{}/h2/{coding}", tls_addr.port());
        let r = client
            .get(url)
            .header("accept-encoding", coding)
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], coding);
        assert!(!r.headers().contains_key("transfer-encoding"));
        let body = r.bytes().await.unwrap();
        let mut out = Vec::new();
        match coding {
            "br" => {
                brotli::Decompressor::new(&body[..], 4096)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            "gzip" => {
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut out)
                    .unwrap();
            }
            _ => out = zstd::decode_all(&body[..]).unwrap(),
        }
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], format!("/h2/{coding}"), "{coding}");
    }
}
