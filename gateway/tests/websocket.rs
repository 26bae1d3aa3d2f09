//! WebSockets through the gateway in process, with a real WebSocket library on both sides: after
//! the `101` the connection is a tunnel, with no head deadline, no body limit and no byte of the
//! gateway's in it.
#![allow(
    clippy::unwrap_used,
    clippy::result_large_err,
    clippy::collapsible_match
)]

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Gateway;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error, Message};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A WebSocket echo server. Counts accepted sockets, keeps the last upgrade request's headers, and
/// closes the socket itself when it receives the text `bye`.
struct EchoServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    last_headers: Arc<Mutex<Vec<(String, String)>>>,
}

async fn echo_server() -> EchoServer {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let last_headers = Arc::new(Mutex::new(Vec::new()));
    let (a, h) = (accepted.clone(), last_headers.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (a, h) = (a.clone(), h.clone());
            tokio::spawn(async move {
                let cb = |req: &Request, resp: Response| {
                    *h.lock().unwrap() = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                        // The library answers the close; reading on sends that answer.
                        _ => {}
                    }
                }
            });
        }
    });
    EchoServer {
        addr,
        accepted,
        last_headers,
    }
}

fn config(up: SocketAddr, limits: &str) -> String {
    format!(
        r#"
server: {{ listen: ["{{listen}}"], threads: 1, limits: {{ header_read_timeout: 1s{limits} }} }}
auth:
  jwt:
    hs: {{ algorithms: [HS256], secret: "{SECRET}" }}
plugins: [{{ body_limit: {{ max: 1KiB }} }}]
upstreams:
  ws: {{ targets: [{{ addr: "{up}" }}], timeouts: {{ read: 1s }} }}
routes:
  - {{ name: secure, match: {{ path_prefix: /secure }}, upstream: ws, plugins: [{{ jwt: {{ provider: hs, forward_claims: {{ sub: X-User-Id }} }} }}] }}
  - {{ name: ws, match: {{ path_prefix: / }}, upstream: ws }}
"#
    )
}

async fn next_data(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a valid frame");
        if !matches!(m, Message::Ping(_)) {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_idle_past_deadlines_big_messages_ping_and_close() {
    let up = echo_server().await;
    let gw = Gateway::in_process(&config(up.addr, ""));
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));

    // Idle for longer than the head deadline (1s) and the upstream read timeout (1s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));

    // More than the 1 KiB body limit, in both directions (the server echoes it back), many times.
    let big = vec![7u8; 64 * 1024];
    for _ in 0..8 {
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::binary(big.clone()));
    }

    // Ping, pong.
    ws.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"p1");

    // Close from the client side: the close handshake completes through the gateway.
    ws.close(None).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut frames = Vec::new();
        while let Some(m) = ws.next().await {
            frames.push(m.map_err(|e| e.to_string()));
        }
        frames
    })
    .await
    .unwrap();
    assert!(
        rest.iter().all(|m| matches!(m, Ok(Message::Close(_)))),
        "{rest:?}"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_from_the_upstream_reaches_the_client() {
    let up = echo_server().await;
    let gw = Gateway::in_process(&config(up.addr, ""));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .unwrap();
    ws.send(Message::text("bye")).await.unwrap();
    let m = next_data(&mut ws).await;
    assert!(matches!(m, Message::Close(_)), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_request_is_authenticated() {
    let up = echo_server().await;
    let gw = Gateway::in_process(&config(up.addr, ""));
    let err = tokio_tungstenite::connect_async(format!("ws://{}/secure/chat", gw.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );

    let mut claims = serde_json::json!({"sub": "u7"});
    claims["exp"] = serde_json::json!(jsonwebtoken::get_current_timestamp() + 300);
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut req = format!("ws://{}/secure/chat", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut()
        .insert("x-user-id", "spoofed".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    let headers = up.last_headers.lock().unwrap().clone();
    let user: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "x-user-id")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(user, ["u7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_its_own_timeout_without_a_byte_of_ours() {
    let up = echo_server().await;
    let gw = Gateway::in_process(&config(up.addr, ", tunnel_idle_timeout: 2s"));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr))
        .await
        .unwrap();
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("a"));
    // Quiet in both directions: the gateway closes it. What the client reads is the end of the stream
    // (or a reset), never an HTTP answer written into the tunnel.
    let end = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("closed within the bound");
    match end {
        None => {}
        // A closed socket, not a frame the client could not read (what bytes of an HTTP answer
        // written into the tunnel would be).
        Some(Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)))
        | Some(Err(Error::ConnectionClosed))
        | Some(Err(Error::Io(_))) => {}
        Some(Err(e)) => panic!("garbage in the tunnel: {e:?}"),
        Some(Ok(m)) => panic!("unexpected frame {m:?}"),
    }
}
