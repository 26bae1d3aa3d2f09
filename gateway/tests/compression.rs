//! Response compression through the gateway: the coding the client's `Accept-Encoding` weighs
//! highest among the route's, decoded back to the upstream's bytes; `Vary` on every answer that
//! depends on it; small bodies, compressed types, already-encoded answers and `no-transform` left
//! alone (byte for byte); HEAD answered with the headers of the GET; a route's own section.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};

use common::*;

/// A JSON document of a few kilobytes that compresses well.
fn big_json() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id":{i},"name":"product {i}","price":{}}}"#, i * 3))
        .collect();
    format!("[{}]", items.join(","))
}

/// An upstream whose answer depends on the path: `/big` (JSON, ~8 KiB), `/small` (JSON, 40 bytes),
/// `/image` (PNG bytes), `/encoded` (gzip'd already), `/no-transform`, `/chunked` (no length).
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let path = first.split(' ').nth(1).unwrap_or("/").to_string();
                let head_only = first.starts_with("HEAD ");
                let big = big_json();
                let (ctype, extra, body): (&str, &str, Vec<u8>) = match path
                    .trim_start_matches("/own")
                {
                    "/big" => ("application/json", "etag: \"v1\"\r\n", big.into_bytes()),
                    "/small" => ("application/json", "", b"{\"ok\":true}".to_vec()),
                    "/image" => ("image/png", "", vec![0x89; 4096]),
                    "/encoded" => ("text/plain", "content-encoding: gzip\r\n", vec![7; 4096]),
                    "/no-transform" => (
                        "text/plain",
                        "cache-control: no-transform\r\n",
                        vec![b'a'; 4096],
                    ),
                    "/chunked" => {
                        let mut out = Vec::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                            );
                        for _ in 0..4 {
                            out.extend_from_slice(b"400\r\n");
                            out.extend_from_slice(&[b'z'; 0x400]);
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"0\r\n\r\n");
                        let _ = conn.write_all(&out);
                        return;
                    }
                    _ => ("text/plain", "", b"not here".to_vec()),
                };
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                if !head_only {
                    out.extend_from_slice(&body);
                }
                let _ = conn.write_all(&out);
            });
        }
    });
    addr
}

/// Server-wide compression (the defaults), one route with it off, one with gzip alone.
fn gateway() -> Gateway {
    gateway_with("")
}

/// The same with `server_extra` in the `server` section.
fn gateway_with(server_extra: &str) -> Gateway {
    let up = upstream();
    Gateway::in_process(&format!(
        r#"
server:
  listen: ["{{listen}}"]
  compression: {{}}{server_extra}
upstreams:
  up: {{ targets: [{{ addr: "{up}" }}] }}
routes:
  - name: off
    match: {{ path_prefix: /off }}
    upstream: up
    strip_prefix: /off
    compression: {{ enabled: false }}
  - name: own
    match: {{ path_prefix: /own }}
    upstream: up
    compression: {{ algorithms: [gzip], level: 1, min_size: 100 }}
  - name: rest
    match: {{ path_prefix: / }}
    upstream: up
"#
    ))
}

fn get(g: &Gateway, method: &str, path: &str, accept: Option<&str>) -> Response {
    let headers: Vec<String> = accept
        .map(|a| format!("Accept-Encoding: {a}"))
        .into_iter()
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    request(g.addr, method, path, &headers, None)
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::decode_all(body).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

fn varies(r: &Response) -> bool {
    r.header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
}

#[test]
fn each_coding_is_chosen_by_the_client_and_decodes_to_the_upstream_bytes() {
    let g = gateway();
    let original = big_json().into_bytes();
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("gzip;q=0.2, br;q=0.9", "br"),
        ("*", "zstd"),
    ] {
        let r = get(&g, "GET", "/big", Some(accept));
        assert_eq!(r.status, 200, "{accept}");
        assert_eq!(r.header("content-encoding"), Some(coding), "{accept}");
        assert!(varies(&r), "{accept}: {:?}", r.headers);
        assert!(
            r.header("content-length").is_none(),
            "the upstream's length is not the body's"
        );
        assert_eq!(
            r.header("transfer-encoding"),
            Some("chunked"),
            "{accept}: streamed chunked, not close-delimited"
        );
        assert!(
            r.body.len() < original.len() / 2,
            "{accept}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(coding, &r.body), original, "{accept}");
        assert_eq!(
            r.header("etag"),
            Some("W/\"v1\""),
            "a strong ETag is weakened"
        );
    }
    // Not acceptable, or no header: the bytes as the upstream sent them, still `Vary`.
    for accept in [Some("gzip;q=0, br;q=0, zstd;q=0"), Some("identity"), None] {
        let r = get(&g, "GET", "/big", accept);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.body, original, "{accept:?}");
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert!(varies(&r), "{accept:?}");
    }
}

#[test]
fn small_binary_encoded_and_no_transform_answers_pass_as_they_are() {
    let g = gateway();
    let r = get(&g, "GET", "/small", Some("gzip, br"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, b"{\"ok\":true}");
    let r = get(&g, "GET", "/image", Some("gzip"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, vec![0x89; 4096]);
    // Already gzip'd upstream: not compressed a second time, bytes untouched.
    let r = get(&g, "GET", "/encoded", Some("gzip, br, zstd"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, vec![7; 4096]);
    let r = get(&g, "GET", "/no-transform", Some("gzip"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, vec![b'a'; 4096]);
    // An answer of unknown length is compressed.
    let r = get(&g, "GET", "/chunked", Some("gzip"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), vec![b'z'; 4096]);
}

#[test]
fn head_gets_the_headers_of_the_get_and_routes_choose_for_themselves() {
    let g = gateway();
    let r = get(&g, "HEAD", "/big", Some("br"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(r.header("content-length").is_none());
    assert!(varies(&r));
    assert!(r.body.is_empty());

    // `compression: { enabled: false }` on the route.
    let r = get(&g, "GET", "/off/big", Some("gzip"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, big_json().into_bytes());
    // The route's own section replaces the server's: gzip only, and its lower min_size.
    let r = get(&g, "GET", "/own/big", Some("zstd, br, gzip;q=0.1"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &r.body), big_json().into_bytes());
    let r = get(&g, "GET", "/own/big", Some("zstd, br"));
    assert_eq!(r.header("content-encoding"), None);
}

#[test]
fn bad_compression_sections_are_placed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        r#"server:
  listen: ["127.0.0.1:0"]
  compression: { level: 12, algorithms: [gzip, gzip] }
upstreams:
  up: { targets: [{ addr: "127.0.0.1:9" }] }
routes:
  - name: r
    match: { path_prefix: / }
    upstream: up
    compression: { algorithms: [] }
"#,
    )
    .unwrap();
    let (code, out, err) = tollgate(&["validate", path.to_str().unwrap()]);
    let text = format!("{out}{err}");
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("3:") && text.contains("server.compression.level"),
        "{text}"
    );
    assert!(text.contains("server.compression.algorithms[1]"), "{text}");
    assert!(text.contains("routes[0].compression.algorithms"), "{text}");
}

#[test]
fn past_max_compressing_answers_go_out_as_they_are() {
    let g = gateway_with("\n  limits: { max_compressing: 0 }");
    for accept in ["gzip", "br", "zstd"] {
        let r = get(&g, "GET", "/big", Some(accept));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), None, "{accept}");
        assert!(varies(&r));
        assert_eq!(r.body, big_json().into_bytes());
    }
}
