//! The request path, attacked with a raw socket through the gateway in process. Each case asserts
//! what the upstream received (the echo backend reports its exact request line and headers), or
//! that nothing reached it, not only the status the client got.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Backend, Gateway, Mode};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn token(claims: serde_json::Value) -> String {
    let mut c = claims;
    c["exp"] = json!(jsonwebtoken::get_current_timestamp() + 300);
    encode(
        &Header::new(Algorithm::HS256),
        &c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn config(be: &Backend, extra: &str) -> String {
    format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1, limits: {{ header_read_timeout: 1s }} }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: "{SECRET}" }}
upstreams:
  be: {{ targets: [{{ addr: "{}" }}], timeouts: {{ read: 5s }} }}
routes:
  - {{ name: private, match: {{ path_prefix: /private }}, upstream: be, plugins: [{{ jwt: {{ provider: hs }} }}] }}
  - name: me
    match: {{ path_prefix: /me }}
    upstream: be
    plugins: [{{ jwt: {{ provider: hs, forward_claims: {{ sub: X-User-Id, tenant: {{ header: X-Tenant, optional: true }} }} }} }}]
  - {{ name: lookup, match: {{ path: "/lookup/{{q}}" }}, upstream: be, rewrite: "/search?q={{q}}" }}
  - {{ name: seg, match: {{ path: "/seg/{{q}}" }}, upstream: be, rewrite: "/items/{{q}}/detail" }}
  - {{ name: open, match: {{ path_prefix: / }}, upstream: be }}
{extra}"#,
        be.addr
    )
}

/// Send raw bytes; the gateway's answer.
fn raw(gw: &Gateway, bytes: &str) -> common::Response {
    gw.send(bytes)
}

fn get(gw: &Gateway, target: &str, extra: &str) -> common::Response {
    raw(
        gw,
        &format!("GET {target} HTTP/1.1\r\nHost: test.local\r\n{extra}Connection: close\r\n\r\n"),
    )
}

/// `GET` each target: every one is a `400` with `code`. The answers, for more checks.
fn refuses(gw: &Gateway, targets: &[&str], code: &str) -> Vec<common::Response> {
    targets
        .iter()
        .map(|target| {
            let r = get(gw, target, "");
            assert_eq!(r.status, 400, "{target}");
            assert_eq!(r.error_code(), code, "{target}");
            r
        })
        .collect()
}

/// A fragment is not part of a request-target: refused with the target as sent, although the parsed
/// URI has already dropped it (so the route and the upstream would never have seen it).
#[test]
fn a_fragment_in_the_request_target_is_refused_never_dropped_and_forwarded() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    let refused = refuses(
        &gw,
        &[
            "/open/x#frag",
            "/open/x?a=1#frag",
            "/open/x#",
            "http://test.local/open/x?a#b",
        ],
        "invalid_target",
    );
    assert!(refused.iter().all(|r| r.header("x-request-id").is_some()));
    assert_eq!(be.hits.load(Ordering::Relaxed), 0, "nothing was forwarded");
    // A `#` elsewhere in the head is not the target's; an escaped one in the query is data.
    let r = get(&gw, "/open/x?tag=%23a", "X-Tag: #1\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/open/x?tag=%23a");
}

/// Read one whole answer (its head, then `Content-Length` bytes) from a kept-alive connection.
fn read_one_answer(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |got: &[u8]| {
        let end = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let len: usize = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length: "))?
            .parse()
            .ok()?;
        (got.len() >= end + len).then_some(end + len)
    };
    while complete(&got).is_none() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before a whole answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(complete(&got), Some(got.len()), "one answer only");
    got
}

/// `r` is the refusal of a request line with a control byte or a space (`at` says which).
fn assert_line_refusal(r: &common::Response, at: &str) {
    assert_eq!(r.status, 400, "{at:?}");
    assert_eq!(r.error_code(), "bad_request", "{at:?}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("control byte or a space"),
        "{at:?}: {message}"
    );
}

/// A request line with a space or a control byte in its target is one Pingora's parser would
/// percent-encode and parse again (`/a b` routed and forwarded as `/a%20b`): RFC 9112 §3.2 says not
/// to autocorrect one, so it is refused before the parser sees it, answered, logged and counted like
/// every other head the parser refuses.
#[test]
fn a_request_line_the_parser_would_rewrite_is_refused_never_corrected_and_forwarded() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    let heads = [
        "GET /open/a b HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open?q=a b HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open/x HTTP/1.1 HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open/a\tb HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open/a\x01b HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open?q=\x7f HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open/a\rb HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "GET /open/\"a\" b HTTP/1.1\r\nHost: test.local\r\n\r\n",
    ];
    for head in heads {
        let r = raw(&gw, head);
        assert_line_refusal(&r, head);
        let id = r.header("x-request-id").unwrap().to_string();
        assert_eq!(r.json()["error"]["request_id"], id.as_str());
        let line = gw.wait_log(|l| l["request_id"] == id.as_str());
        assert_eq!(line["status"], 400);
    }
    // The bad byte in a later read than the start of the line: the same, wherever the line had come to
    // (httparse's error differs: in the target, in the version with a target Pingora's rewrite changes,
    // after the version, after a leading empty line).
    for (first, then) in [
        (
            &b"GET /open/a"[..],
            &b" b HTTP/1.1\r\nHost: test.local\r\n\r\n"[..],
        ),
        (b"GET /open/\"a HTTP/1", b".1 x\r\nHost: test.local\r\n\r\n"),
        (b"GET /open/a HTTP/1.1", b" x\r\nHost: test.local\r\n\r\n"),
        (
            b"\r\nGET /open/a",
            b"\x01 HTTP/1.1\r\nHost: test.local\r\n\r\n",
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(first).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(then).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        let r = common::parse_response(&rest);
        assert_line_refusal(&r, &String::from_utf8_lossy(first));
    }
    // The same on a kept-alive connection, after a request that was served.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /open/ok HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    assert!(read_one_answer(&mut s).starts_with(b"HTTP/1.1 200"));
    s.write_all(b"GET /open/a b HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    assert!(rest.contains("bad_request"), "{rest}");
    assert_eq!(
        be.hits.load(Ordering::Relaxed),
        1,
        "only the first was forwarded"
    );
    let m = gw.admin_request("GET", "/metrics", &[]);
    let text = String::from_utf8_lossy(&m.body);
    let want = format!(
        "tollgate_requests_total{{method=\"OTHER\",route=\"\",status=\"400\"}} {}",
        heads.len() + 5
    );
    assert!(text.lines().any(|l| l == want), "{want}\n{text}");

    // A head sent behind another before its answer (pipelined) is never parsed at all: Pingora's
    // pipelining is off, so the connection closes after the first answer. This is what lets the
    // check see every head the parser reads.
    let r = raw(
        &gw,
        "GET /open/first HTTP/1.1\r\nHost: test.local\r\n\r\nGET /open/a b HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/open/first");
    assert_eq!(
        be.hits.load(Ordering::Relaxed),
        2,
        "the pipelined head was not forwarded"
    );
}

/// An upload the upstream answers before it has all of it: Pingora writes `Connection: close` in the
/// answer and goes on forwarding the body while the answer streams. Those body bytes are never taken
/// for a new request, whatever they look like and however slowly they come: the client gets exactly
/// the upstream's one answer, and the upstream every byte of the body.
#[test]
fn an_upload_answered_early_is_body_to_its_end_never_a_new_request() {
    const PART1: &[u8] = b"GET /open/a b HTTP/1.1\r\nHost: test.local\r\nX: \x00\x01";
    const PART2: &[u8] = b"\r\n\r\nGET /x\tHTTP/1.1\r\n\r\n\x7f\xff end";
    let body_len = PART1.len() + PART2.len();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let upstream = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&buf[..n]);
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        assert!(
            head.contains(&format!("content-length: {body_len}\r\n")),
            "{head}"
        );
        // Answer now, before the body, and keep the answer open until the body is in.
        c.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .unwrap();
        while got.len() - end < body_len {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the whole body");
            got.extend_from_slice(&buf[..n]);
        }
        let body = got[end..].to_vec();
        let last = format!("got {}", body.len());
        c.write_all(format!("{:x}\r\n{last}\r\n0\r\n\r\n", last.len()).as_bytes())
            .unwrap();
        body
    });
    let gw = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"], threads: 1, limits: {{ header_read_timeout: 1s }} }}\nupstreams:\n  be: {{ targets: [{{ addr: \"{addr}\" }}], timeouts: {{ read: 10s }} }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: be }}\n"
    ));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: {body_len}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(5).any(|w| w == b"first") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the early answer");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    // The body, with a request line the check would refuse and no blank line, then a pause longer
    // than the head deadline, then the rest.
    s.write_all(PART1).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(PART2).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    got.extend_from_slice(&rest);
    let answer = String::from_utf8_lossy(&got);
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert!(answer.contains(&format!("got {body_len}")), "{answer}");
    assert!(answer.ends_with("0\r\n\r\n"), "{answer}");
    assert_eq!(upstream.join().unwrap(), [PART1, PART2].concat());
}

#[test]
fn request_targets_other_than_origin_absolute_and_asterisk_are_refused() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    for target in [
        "admin/users",
        "x:/admin/users",
        "ftp://test.local/admin",
        "test.local:80",
        "*",
        "http://user@test.local/x",
    ] {
        let r = get(&gw, target, "");
        assert_eq!(r.status, 400, "{target}");
        // Pingora's parser refuses some of these before the gateway sees them; the gateway still
        // answers in its own shape.
        let code = r.error_code();
        assert!(
            ["invalid_target", "bad_request"].contains(&code.as_str()),
            "{target}: {code}"
        );
        assert!(r.header("x-request-id").is_some());
    }
    assert_eq!(be.hits.load(Ordering::Relaxed), 0, "nothing was forwarded");

    // Absolute-form: the authority is the host, and the upstream gets an origin-form target.
    let r = raw(
        &gw,
        "GET http://other.example/open/x?a=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/open/x?a=1");
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("other.example")
    );
    // `OPTIONS *` is answered by the gateway, never forwarded.
    let hits = be.hits.load(Ordering::Relaxed);
    let r = raw(
        &gw,
        "OPTIONS * HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.header("allow").unwrap().contains("GET"));
    assert_eq!(be.hits.load(Ordering::Relaxed), hits);
}

#[test]
fn requests_the_parser_refuses_are_answered_logged_and_counted() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    for head in [
        "GET /open?a=\"x\" HTTP/1.1\r\nHost: t\r\n\r\n",
        "GARBAGE\r\n\r\n",
        "GET /open HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let r = raw(&gw, head);
        assert_eq!(r.status, 400, "{head:?}");
        assert_eq!(r.error_code(), "bad_request", "{head:?}");
        let id = r.header("x-request-id").unwrap().to_string();
        assert_eq!(r.json()["error"]["request_id"], id.as_str());
        let line = gw.wait_log(|l| l["request_id"] == id.as_str());
        assert_eq!(line["status"], 400);
        assert_eq!(line["error"], "bad_request");
    }
    assert_eq!(be.hits.load(Ordering::Relaxed), 0);
    let m = gw.admin_request("GET", "/metrics", &[]);
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.lines().any(|l| l
            .starts_with("tollgate_requests_total{method=\"OTHER\",route=\"\",status=\"400\"} 3")),
        "{text}"
    );
}

#[test]
fn hosts_must_be_one_valid_host() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    for head in [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: evil.example/x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example:99999\r\nConnection: close\r\n\r\n",
    ] {
        let r = raw(&gw, head);
        assert_eq!(r.status, 400, "{head:?}");
        let code = r.error_code();
        assert!(
            ["invalid_host", "bad_request"].contains(&code.as_str()),
            "{head:?}: {code}"
        );
    }
    assert_eq!(be.hits.load(Ordering::Relaxed), 0);
    // HTTP/1.0 may go without.
    let r = raw(&gw, "GET /open HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn paths_that_backends_read_differently_are_refused() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    refuses(
        &gw,
        &[
            "/public/..;/private/x",
            "/open/.;/private",
            "/open/%0d%0aSet-Cookie:%20x=1",
            "/open/%00",
            "/open/%252e%252e/private",
            "/open/%c0%ae%c0%ae/private",
            "/open/%ff",
        ],
        "invalid_path",
    );
    assert_eq!(be.hits.load(Ordering::Relaxed), 0, "nothing was forwarded");
    // Normalization still applies, and what goes upstream is the normalized path.
    let r = get(&gw, "/open/a/../b//c?x=1", "");
    assert_eq!(r.json()["path"], "/open/b/c?x=1");
    let r = get(&gw, "/open/%7euser", "");
    assert_eq!(r.json()["path"], "/open/~user");
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    for head in [
        "POST /open HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /open HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /open HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /open HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ] {
        // No `Connection: close`: the gateway closes by itself.
        let r = raw(&gw, head);
        assert_eq!(r.status, 400, "{head:?}");
        let code = r.error_code();
        assert!(
            ["invalid_framing", "bad_request"].contains(&code.as_str()),
            "{head:?}: {code}"
        );
        assert_eq!(r.header("connection"), Some("close"), "{head:?}");
    }
    assert_eq!(be.hits.load(Ordering::Relaxed), 0);
    // A chunk-size line ending in a bare LF: the body is streamed, so the head has gone upstream
    // by then; the client gets a 400 (never a 200) and the connection is closed.
    let r = raw(
        &gw,
        "POST /open HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn empty_lines_before_a_request_count_toward_the_head_deadline() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    // One empty line every 200 ms: each read is quick, the head never comes.
    let mut closed = false;
    for _ in 0..50 {
        if s.write_all(b"\r\n").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        closed || start.elapsed() < Duration::from_secs(15),
        "the connection was held"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[test]
fn forwarded_claims_fail_closed_and_balancing_sees_them() {
    let bes: Vec<Backend> = (0..3)
        .map(|i| Backend::start(&format!("b{i}"), Mode::Echo))
        .collect();
    let targets: Vec<String> = bes
        .iter()
        .map(|b| format!("{{ addr: \"{}\" }}", b.addr))
        .collect();
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: "{SECRET}" }}
upstreams:
  be: {{ targets: [{}], balance: consistent_hash, hash_on: "header:X-User-Id" }}
routes:
  - name: me
    match: {{ path_prefix: /me }}
    upstream: be
    plugins: [{{ jwt: {{ provider: hs, forward_claims: {{ sub: X-User-Id, tenant: {{ header: X-Tenant, optional: true }} }} }} }}]
"#,
        targets.join(", ")
    );
    let gw = Gateway::in_process(&cfg);
    let auth = |t: &str| format!("Authorization: Bearer {t}\r\n");
    // A claim that cannot be a header value: 401, nothing forwarded.
    for claims in [
        json!({}),
        json!({"sub": null}),
        json!({"sub": {"id": 1}}),
        json!({"sub": "1\r\nX-Admin: yes"}),
        json!({"sub": ""}),
    ] {
        let r = get(&gw, "/me", &auth(&token(claims.clone())));
        assert_eq!(r.status, 401, "{claims}");
        assert_eq!(r.error_code(), "invalid_token");
    }
    assert_eq!(
        bes.iter()
            .map(|b| b.hits.load(Ordering::Relaxed))
            .sum::<usize>(),
        0
    );
    // An optional claim may be absent; the client's copies never pass.
    let r = get(
        &gw,
        "/me",
        &format!(
            "{}X-User-Id: 999\r\nX-Tenant: spoofed\r\nX_User_Id: 999\r\n",
            auth(&token(json!({"sub": "u1"})))
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("u1"));
    assert_eq!(r.upstream_header("x-tenant"), None);
    assert_eq!(r.upstream_header("x_user_id"), None);
    // Balancing hashes the header the jwt plugin set, not the client's: whatever the client sends,
    // one subject lands on one target.
    let t = token(json!({"sub": "u1"}));
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = get(&gw, "/me", &format!("{}X-User-Id: spoof-{i}\r\n", auth(&t)));
        seen.insert(r.json()["backend"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[test]
fn rewrites_encode_parameters_for_their_position() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    let r = get(&gw, "/lookup/1&admin=true", "");
    assert_eq!(r.json()["path"], "/search?q=1%26admin%3Dtrue");
    let r = get(&gw, "/lookup/a+b?page=2", "");
    assert_eq!(r.json()["path"], "/search?q=a%2Bb&page=2");
    let r = get(&gw, "/seg/a&b=c", "");
    assert_eq!(r.json()["path"], "/items/a&b=c/detail");
}

#[test]
fn spoofable_headers_from_an_untrusted_peer_are_removed() {
    let be = Backend::start("be", Mode::Echo);
    let gw = Gateway::in_process(&config(&be, ""));
    let r = get(
        &gw,
        "/open",
        "Forwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nTrue-Client-IP: 1.2.3.4\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /admin\r\nX_Forwarded_For: 1.2.3.4\r\nX_Request_Id: x\r\nX-Custom_Header: kept\r\n",
    );
    assert_eq!(r.status, 200);
    for h in [
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x_forwarded_for",
        "x_request_id",
    ] {
        assert_eq!(r.upstream_header(h), None, "{h} reached the upstream");
    }
    assert_eq!(
        r.upstream_header("x-custom_header").as_deref(),
        Some("kept")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[test]
fn unrouted_requests_run_the_global_chain() {
    let be = Backend::start("be", Mode::Echo);
    let cfg = format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1 }}
rate_limits:
  scan: {{ requests: 5, per: 1m }}
plugins: [{{ rate_limit: scan }}]
upstreams:
  be: {{ targets: [{{ addr: "{}" }}] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: be }}
"#,
        be.addr
    );
    let gw = Gateway::in_process(&cfg);
    let statuses: Vec<u16> = (0..8)
        .map(|i| get(&gw, &format!("/wp-admin/{i}.php"), "").status)
        .collect();
    assert_eq!(statuses, [404, 404, 404, 404, 404, 429, 429, 429]);
    let r = get(&gw, "/nope", "");
    assert_eq!(r.error_code(), "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(be.hits.load(Ordering::Relaxed), 0);
}

#[test]
fn a_slow_upload_after_100_continue_is_not_cut_by_the_head_deadline() {
    // An upstream that answers `Expect: 100-continue` (the echo backend does not): 100, then the
    // final answer with the body it read.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = c.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            let mut body = [0u8; 5];
            if c.read_exact(&mut body).is_ok() {
                let _ = c.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}",
                        String::from_utf8_lossy(&body)
                    )
                    .as_bytes(),
                );
            }
        }
    });
    let gw = Gateway::in_process(&format!(
        "server: {{ listen: [\"{{listen}}\"], threads: 1, limits: {{ header_read_timeout: 1s }} }}\nupstreams:\n  be: {{ targets: [{{ addr: \"{addr}\" }}], timeouts: {{ read: 10s }} }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: be }}\n"
    ));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        got.push(b[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The body trickles in over longer than the head deadline.
    s.write_all(b"he").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    s.write_all(b"llo").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let r = common::parse_response(&rest);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
}
