//! Span export: one OpenTelemetry span per sampled request, sent to a collector over OTLP/HTTP (JSON).
//!
//! The span is the gateway's hop: its id is the `parent-id` of the `traceparent` sent upstream, its
//! parent is the caller's span (when the request came with a `traceparent`), so the gateway shows up
//! in the trace between the client and the service. Attributes follow the HTTP semantic conventions
//! (`http.request.method`, `url.path`, `http.route`, `http.response.status_code`, `client.address`)
//! plus `tollgate.upstream` and `tollgate.target`; 5xx answers mark the span as an error.
//!
//! Requests never wait on the collector: finished spans go into a bounded buffer, and a background
//! service posts them in batches (every second, or sooner when 512 are waiting). A full buffer or a
//! failed export drops spans and counts them in `tollgate_trace_spans_dropped_total`; the gateway keeps
//! serving either way. The server makes one [`Exporter`] and hands it to the proxy (which pushes) and to
//! the export and drain services (which take); there is no process-wide buffer.
//!
//! The encoding is OTLP's JSON mapping of `ExportTraceServiceRequest` (ids as hex, 64-bit integers as
//! strings), written with serde_json rather than pulling the OpenTelemetry SDK and its runtime into
//! the proxy: the gateway already has the ids (from `traceparent`) and only ever emits one span kind.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::Notify;

/// Spans held at most; beyond, new ones are dropped (and counted).
const BUFFER: usize = 8192;
/// A batch is sent as soon as this many are waiting.
const BATCH: usize = 512;

/// A finished request, as a span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Ids as numbers: the hex is written here, by the export task, not on the request path.
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub method: String,
    pub path: String,
    /// The route's name (empty when no route matched).
    pub route: String,
    pub status: u16,
    pub client_ip: std::net::IpAddr,
    pub upstream: Option<String>,
    pub target: Option<std::net::SocketAddr>,
    pub start: SystemTime,
    pub end: SystemTime,
    /// A composition's call (a client span, child of the request's); `None` for the request's own.
    pub call: Option<String>,
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

fn attr(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

impl Span {
    /// The span in OTLP/JSON.
    fn to_json(&self) -> Value {
        let name = match (&self.call, self.route.is_empty()) {
            (Some(call), _) => format!("{} {} {call}", self.method, self.route),
            (None, true) => self.method.clone(),
            (None, false) => format!("{} {}", self.method, self.route),
        };
        let mut attributes = vec![
            attr("http.request.method", json!({ "stringValue": self.method })),
            attr("url.path", json!({ "stringValue": self.path })),
            attr(
                "http.response.status_code",
                json!({ "intValue": self.status.to_string() }),
            ),
            attr(
                "client.address",
                json!({ "stringValue": self.client_ip.to_string() }),
            ),
        ];
        if !self.route.is_empty() {
            attributes.push(attr("http.route", json!({ "stringValue": self.route })));
        }
        if let Some(u) = &self.upstream {
            attributes.push(attr("tollgate.upstream", json!({ "stringValue": u })));
        }
        if let Some(t) = &self.target {
            attributes.push(attr(
                "tollgate.target",
                json!({ "stringValue": t.to_string() }),
            ));
        }
        if let Some(c) = &self.call {
            attributes.push(attr("tollgate.call", json!({ "stringValue": c })));
        }
        let mut span = json!({
            "traceId": format!("{:032x}", self.trace_id),
            "spanId": format!("{:016x}", self.span_id),
            "name": name,
            // SPAN_KIND_CLIENT for a composition's call, SPAN_KIND_SERVER for the request.
            "kind": if self.call.is_some() { 3 } else { 2 },
            "startTimeUnixNano": nanos(self.start),
            "endTimeUnixNano": nanos(self.end),
            "attributes": attributes,
            // STATUS_CODE_ERROR for server errors, else UNSET (the semantic conventions' rule).
            "status": { "code": if self.status >= 500 { 2 } else { 0 } },
        });
        if let Some(p) = &self.parent_span_id {
            span["parentSpanId"] = json!(format!("{p:016x}"));
        }
        span
    }
}

/// An `ExportTraceServiceRequest` for `spans`.
pub fn request_body(service_name: &str, spans: &[Span]) -> Value {
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [attr("service.name", json!({ "stringValue": service_name }))] },
            "scopeSpans": [{
                "scope": { "name": "tollgate", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(Span::to_json).collect::<Vec<_>>(),
            }],
        }],
    })
}

/// Finished spans waiting for export.
pub struct Exporter {
    buffer: Mutex<Vec<Span>>,
    ready: Notify,
    /// `tollgate_trace_spans_dropped_total`.
    dropped: prometheus::IntCounter,
}

impl Exporter {
    /// An empty buffer; spans it drops are counted in `dropped`.
    pub fn new(dropped: prometheus::IntCounter) -> Exporter {
        Exporter {
            buffer: Mutex::new(Vec::new()),
            ready: Notify::new(),
            dropped,
        }
    }

    /// Queue a span; never blocks on the collector.
    pub fn push(&self, span: Span) {
        let len = {
            let mut b = match self.buffer.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            if b.len() >= BUFFER {
                drop(b);
                self.dropped.inc();
                return;
            }
            b.push(span);
            b.len()
        };
        if len >= BATCH {
            self.ready.notify_one();
        }
    }

    /// Everything waiting now.
    pub fn take(&self) -> Vec<Span> {
        let mut b = match self.buffer.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut *b)
    }

    /// Wait until a batch is due (a second passed, or a batch is full), then take what is waiting.
    pub async fn next_batch(&self) -> Vec<Span> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ready.notified()).await;
        self.take()
    }

    /// Post `spans` to `endpoint`; failures are counted as dropped spans and logged.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        endpoint: &str,
        service_name: &str,
        timeout: Duration,
        spans: Vec<Span>,
    ) {
        for chunk in spans.chunks(BATCH) {
            let body = request_body(service_name, chunk);
            let sent = client
                .post(endpoint)
                .timeout(timeout)
                .json(&body)
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("collector answered {}", r.status())),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = failure {
                self.dropped.inc_by(chunk.len() as u64);
                log::warn!(
                    "tracing: {} spans not exported to {endpoint}: {why}",
                    chunk.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_json_shape() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let span = Span {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x00f067aa0ba902b7,
            parent_span_id: Some(0xb7ad6b7169203331),
            method: "GET".into(),
            path: "/api/orders".into(),
            route: "orders".into(),
            status: 503,
            client_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            upstream: Some("orders".into()),
            target: Some("10.0.0.2:8080".parse().unwrap()),
            start: t,
            end: t + Duration::from_micros(1500),
            call: None,
        };
        let mut call = span.clone();
        call.call = Some("customer".into());
        let c = call.to_json();
        assert_eq!(c["kind"], 3, "a call is a client span");
        assert_eq!(c["name"], "GET orders customer");
        let v = request_body("gw", &[span]);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "gw"
        );
        assert_eq!(s["name"], "GET orders");
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s["spanId"], "00f067aa0ba902b7");
        assert_eq!(s["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(s["startTimeUnixNano"], "1700000000123000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000124500000");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(s["kind"], 2);
        let status = s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "http.response.status_code")
            .unwrap();
        assert_eq!(status["value"]["intValue"], "503");
        let attr = |k: &str| {
            s["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == k)
                .unwrap()["value"]["stringValue"]
                .clone()
        };
        assert_eq!(attr("client.address"), "10.0.0.1");
        assert_eq!(attr("tollgate.target"), "10.0.0.2:8080");
    }
}
