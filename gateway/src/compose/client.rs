//! One call of a composition: a request to an upstream target over Pingora's own connector (the same
//! peers, TLS settings and timeouts as proxied requests; connections are reused within the
//! compositions' own pool), its JSON read whole up to a size limit.

use std::net::SocketAddr;

use bytes::BytesMut;
use pingora_core::connectors::http::Connector;
use pingora_error::ErrorType;
use pingora_http::RequestHeader;
use serde_json::Value;

use crate::upstream::Upstream;

/// Why a call did not give JSON to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// A value its templates need is missing or not usable; `from_request` when it was to come from
    /// the client's request (the client's fault: 400), else from another call's answer (502).
    Input {
        message: String,
        from_request: bool,
    },
    /// A call it depends on failed.
    Dependency(String),
    /// The fan-out would make more calls than `max_calls`.
    TooManyCalls {
        count: usize,
        max: usize,
    },
    NoHealthyTarget,
    /// Connecting or talking to the target failed.
    Unreachable(String),
    /// The call's own deadline passed.
    Timeout,
    /// The composition's deadline passed before the call finished.
    Deadline,
    /// The upstream answered a status other than 2xx.
    Status(u16),
    /// The answer was larger than `max_body`.
    TooLarge(usize),
    /// The answer was not JSON.
    NotJson(String),
}

impl CallError {
    /// Stable code, for the `errors` array, the metrics and the access log.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Input { .. } => "missing_value",
            CallError::Dependency(_) => "dependency_failed",
            CallError::TooManyCalls { .. } => "too_many_calls",
            CallError::NoHealthyTarget => "no_healthy_upstream",
            CallError::Unreachable(_) => "upstream_unavailable",
            CallError::Timeout => "call_timeout",
            CallError::Deadline => "compose_timeout",
            CallError::Status(_) => "upstream_status",
            CallError::TooLarge(_) => "response_too_large",
            CallError::NotJson(_) => "invalid_json",
        }
    }

    /// What the whole answer is when a required call fails this way: a client error of the request
    /// stays a client error (400, or the upstream's own 4xx, e.g. a 404 for an order that does not
    /// exist), a timeout is 504, anything else the upstream did wrong is 502.
    pub fn status(&self) -> u16 {
        match self {
            CallError::Input {
                from_request: true, ..
            } => 400,
            // The answer's subject does not exist: the client's answer too. Any other 4xx is
            // about the gateway's call (its credentials, method, rate), not the client's request;
            // passed on it would be wrong (a 401 without the challenge, a 405 without `Allow`).
            CallError::Status(s @ (404 | 410)) => *s,
            CallError::Timeout | CallError::Deadline => 504,
            CallError::Status(504) => 504,
            _ => 502,
        }
    }

    pub fn message(&self) -> String {
        match self {
            CallError::Input { message, .. } => message.clone(),
            CallError::Dependency(d) => format!("not made: call `{d}` it depends on failed"),
            CallError::TooManyCalls { count, max } => {
                format!("the fan-out would make {count} calls, more than max_calls ({max})")
            }
            CallError::NoHealthyTarget => "the upstream has no healthy target".into(),
            CallError::Unreachable(e) => format!("the upstream could not be reached: {e}"),
            CallError::Timeout => "the upstream did not answer within the call's timeout".into(),
            CallError::Deadline => "the composition's deadline passed first".into(),
            CallError::Status(s) => format!("the upstream answered {s}"),
            CallError::TooLarge(max) => format!("the answer is larger than max_body ({max} bytes)"),
            CallError::NotJson(e) => format!("the answer is not JSON: {e}"),
        }
    }

    /// The upstream's status, when it answered one.
    pub fn upstream_status(&self) -> Option<u16> {
        match self {
            CallError::Status(s) => Some(*s),
            _ => None,
        }
    }
}

/// What a call got: its status, its JSON (`Null` for an empty body), the target that answered.
pub struct Fetched {
    pub status: u16,
    pub json: Value,
    pub target: SocketAddr,
}

/// Send `req` to a target of `up` and read its answer (at most `max_body` bytes). `key` feeds
/// consistent hashing. Connection failures are retried on another pick, `up.retries` times (nothing was
/// sent); a pooled connection found closed when the request is written is replaced once by a new
/// one (the upstream saw nothing either). `target` is set as soon as one is picked.
pub async fn fetch(
    connector: &Connector,
    up: &Upstream,
    req: &RequestHeader,
    max_body: usize,
    key: &[u8],
    target: &mut Option<SocketAddr>,
) -> Result<Fetched, CallError> {
    let mut connect_tries = 0;
    let mut stale_retry = false;
    loop {
        let addr = up.select(key).ok_or(CallError::NoHealthyTarget)?;
        *target = Some(addr);
        let peer = up.peer(addr);
        let (mut session, reused) = match connector.get_http_session(&peer).await {
            Ok(mut s) => {
                // A new session takes no timeouts from the peer (pingora-proxy sets them itself,
                // `proxy_h1.rs`): each read and write is bounded like a proxied request's.
                s.0.set_read_timeout(peer.options.read_timeout);
                s.0.set_write_timeout(peer.options.write_timeout);
                s
            }
            Err(e) => {
                if connect_tries < up.retries {
                    connect_tries += 1;
                    continue;
                }
                return Err(if matches!(e.etype(), ErrorType::ConnectTimedout) {
                    CallError::Timeout
                } else {
                    CallError::Unreachable(e.etype().as_str().to_string())
                });
            }
        };
        let mut head = req.clone();
        if !up.preserve_host || head.headers.get(http::header::HOST).is_none() {
            let host = match up.host_for(addr) {
                Some(h) => h,
                None => http::HeaderValue::from_str(&addr.to_string())
                    .map_err(|_| CallError::Unreachable("target address".into()))?,
            };
            let _ = head.insert_header(http::header::HOST, host);
        }
        if let Err(e) = session.write_request_header(Box::new(head)).await {
            if reused && !stale_retry {
                stale_retry = true;
                continue;
            }
            return Err(CallError::Unreachable(e.etype().as_str().to_string()));
        }
        let status = loop {
            if let Err(e) = session.read_response_header().await {
                if reused && !stale_retry && session.response_header().is_none() {
                    // A pooled connection the upstream had closed: nothing reached it.
                    stale_retry = true;
                    break None;
                }
                return Err(read_error(&e));
            }
            match session.response_header().map(|h| h.status.as_u16()) {
                Some(s) if (100..200).contains(&s) && s != 101 => continue,
                Some(s) => break Some(s),
                None => return Err(CallError::Unreachable("no response header".into())),
            }
        };
        let Some(status) = status else { continue };
        // An announced length past the limit fails at once, before any of it is read.
        let announced = session
            .response_header()
            .and_then(|h| h.headers.get(http::header::CONTENT_LENGTH))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if announced.is_some_and(|n| n > max_body) {
            session.shutdown().await;
            return Err(CallError::TooLarge(max_body));
        }
        let mut body = BytesMut::with_capacity(announced.unwrap_or(0).min(max_body));
        loop {
            match session.read_response_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > max_body {
                        session.shutdown().await;
                        return Err(CallError::TooLarge(max_body));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(read_error(&e)),
            }
        }
        if session.response_done() {
            connector
                .release_http_session(session, &peer, Some(up.idle_timeout))
                .await;
        }
        if !(200..300).contains(&status) {
            return Err(CallError::Status(status));
        }
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|e| CallError::NotJson(e.to_string()))?
        };
        return Ok(Fetched {
            status,
            json,
            target: addr,
        });
    }
}

fn read_error(e: &pingora_error::Error) -> CallError {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => CallError::Timeout,
        t => CallError::Unreachable(t.as_str().to_string()),
    }
}
