//! Errors the gateway itself answers with, and their one JSON shape:
//! `{"error":{"status":404,"code":"route_not_found","message":"...","request_id":"..."}}` (plus
//! `"call"` when a composition's call failed).
//!
//! Every short-circuit in the proxy goes through [`GatewayError`] so status, code and body agree
//! everywhere; `code` is a stable, documented identifier clients can branch on.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// For 405: the methods to list in `Allow`.
    pub allow: Vec<Method>,
    /// Extra response headers, e.g. `WWW-Authenticate` on a 401 or `Retry-After` on a 429.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The call of a composition that failed (the body's `error.call`).
    pub call: Option<String>,
}

impl GatewayError {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            status,
            code,
            message: message.into(),
            allow: Vec::new(),
            headers: Vec::new(),
            call: None,
        }
    }

    /// The same error with one more response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn not_found() -> Self {
        Self::new(404, "route_not_found", "no route matches this request")
    }
    pub fn method_not_allowed(allow: Vec<Method>) -> Self {
        GatewayError {
            allow,
            ..Self::new(
                405,
                "method_not_allowed",
                "this route does not accept the request method",
            )
        }
    }
    pub fn no_healthy_upstream(upstream: &str) -> Self {
        Self::new(
            503,
            "no_healthy_upstream",
            format!("upstream `{upstream}` has no healthy target"),
        )
    }
    pub fn bad_gateway() -> Self {
        Self::new(
            502,
            "upstream_unavailable",
            "the upstream could not be reached or sent an invalid response",
        )
    }
    /// The upstream's circuit breaker is full: refused at once, to be tried again in a second.
    pub fn upstream_overloaded(upstream: &str) -> Self {
        Self::new(
            503,
            "upstream_overloaded",
            format!("upstream `{upstream}` has as many requests as it may take; try again shortly"),
        )
        .with_header(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        )
    }

    /// The request's total time (`retry.timeout`) ran out before another try could start.
    pub fn retry_timeout() -> Self {
        Self::new(
            504,
            "upstream_timeout",
            "the upstream did not answer in time (the request's timeout ran out between tries)",
        )
    }

    pub fn gateway_timeout() -> Self {
        Self::new(
            504,
            "upstream_timeout",
            "the upstream did not answer in time",
        )
    }

    /// `Allow` header value, when there is one.
    pub fn allow_header(&self) -> Option<String> {
        if self.allow.is_empty() {
            return None;
        }
        let mut v: Vec<&str> = self.allow.iter().map(Method::as_str).collect();
        if v.contains(&"GET") && !v.contains(&"HEAD") {
            v.push("HEAD");
        }
        Some(v.join(", "))
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> Bytes {
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            status: u16,
            code: &'a str,
            message: &'a str,
            request_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            call: Option<&'a str>,
        }
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        let body = Body {
            error: Inner {
                status: self.status,
                code: self.code,
                message: &self.message,
                request_id,
                call: self.call.as_deref(),
            },
        };
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// Map a Pingora error to what the client is told. `None`: the client is gone, answer nothing.
pub fn from_pingora(e: &pingora_error::Error) -> Option<GatewayError> {
    use pingora_error::{ErrorSource, ErrorType::*};
    let t = e.etype();
    Some(match t {
        HTTPStatus(code) => {
            let code = *code;
            match code {
                400 => GatewayError::new(400, "bad_request", "the request is malformed"),
                413 => GatewayError::new(413, "payload_too_large", "the request body is too large"),
                503 => GatewayError::new(503, "service_unavailable", "service unavailable"),
                504 => GatewayError::gateway_timeout(),
                c if c >= 500 => GatewayError::bad_gateway(),
                c => GatewayError::new(c, "bad_request", "the request was refused"),
            }
        }
        ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            GatewayError::gateway_timeout()
        }
        ConnectTimedout => GatewayError::gateway_timeout(),
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | TLSHandshakeFailure | InvalidCert | HandshakeError => GatewayError::bad_gateway(),
        _ => match e.esource() {
            ErrorSource::Upstream => GatewayError::bad_gateway(),
            ErrorSource::Downstream => match t {
                ReadError | WriteError | ConnectionClosed => return None,
                ReadTimedout => GatewayError::new(
                    408,
                    "request_timeout",
                    "the request was not received in time",
                ),
                _ => GatewayError::new(400, "bad_request", "the request is malformed"),
            },
            _ => GatewayError::new(500, "internal_error", "internal error"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = GatewayError::not_found();
        let v: serde_json::Value = serde_json::from_slice(&e.body("rid")).unwrap();
        assert_eq!(v["error"]["status"], 404);
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["request_id"], "rid");
    }

    #[test]
    fn allow_lists_head_with_get() {
        let e = GatewayError::method_not_allowed(vec![Method::GET, Method::POST]);
        assert_eq!(e.allow_header().as_deref(), Some("GET, POST, HEAD"));
    }

    #[test]
    fn pingora_mapping() {
        use pingora_error::{Error, ErrorType};
        let e = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(from_pingora(&e).unwrap().status, 504);
        let e = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(from_pingora(&e).unwrap().status, 502);
        let e = Error::new(ErrorType::ConnectionClosed).into_down();
        assert!(from_pingora(&e).is_none());
    }
}
