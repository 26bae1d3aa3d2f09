//! Prometheus metrics, registered once per process in their own registry and served by the admin
//! listener at `/metrics`.
//!
//! Labels are bounded: route and upstream *names* from the config (never raw paths), the method (the
//! standard ones, else `OTHER`) and the status code. Health gauges are set at scrape time from the current
//! snapshot, so a reload that removes an upstream also removes its series.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::snapshot::Snapshot;

/// Every metric the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub target_healthy: IntGaugeVec,
    pub ratelimit_rejections: IntCounterVec,
    pub ratelimit_store_errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub reloads: IntCounterVec,
    pub last_reload: prometheus::Gauge,
    pub build_info: IntGaugeVec,
    pub tls_expiry: IntGauge,
    pub spans_dropped: prometheus::IntCounter,
}

/// Latency buckets from 0.5 ms to 30 s: a gateway's own answers take well under a millisecond, a slow
/// upstream up to its read timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "tollgate_requests_total",
            "Requests answered, by route, method and status",
        ),
        &["route", "method", "status"],
    )?;
    let request_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_request_duration_seconds",
            "Time from the request head to the end of the response, by route",
        )
        .buckets(BUCKETS.to_vec()),
        &["route"],
    )?;
    let upstream_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_upstream_duration_seconds",
            "Time from choosing an upstream target to its response head, by upstream",
        )
        .buckets(BUCKETS.to_vec()),
        &["upstream"],
    )?;
    let in_flight = IntGauge::new(
        "tollgate_requests_in_flight",
        "Requests being handled right now",
    )?;
    let target_healthy = IntGaugeVec::new(
        Opts::new(
            "tollgate_upstream_target_healthy",
            "1 when an upstream target is in rotation, 0 when health checks took it out",
        ),
        &["upstream", "target"],
    )?;
    let ratelimit_rejections = IntCounterVec::new(
        Opts::new(
            "tollgate_ratelimit_rejections_total",
            "Requests refused by a rate-limit policy",
        ),
        &["policy"],
    )?;
    let ratelimit_store_errors = IntCounterVec::new(
        Opts::new(
            "tollgate_ratelimit_store_errors_total",
            "Rate-limit checks that the shared store (Redis) could not answer in time, by policy",
        ),
        &["policy"],
    )?;
    let auth_failures = IntCounterVec::new(
        Opts::new(
            "tollgate_auth_failures_total",
            "Requests refused by authentication or authorization, by plugin and reason",
        ),
        &["plugin", "reason"],
    )?;
    let reloads = IntCounterVec::new(
        Opts::new("tollgate_config_reloads_total", "Config reloads, by result"),
        &["result"],
    )?;
    let last_reload = prometheus::Gauge::new(
        "tollgate_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load",
    )?;
    let tls_expiry = IntGauge::new(
        "tollgate_tls_certificate_expiry_timestamp_seconds",
        "Unix time when the HTTPS listeners' certificate expires (absent without HTTPS)",
    )?;
    let spans_dropped = prometheus::IntCounter::new(
        "tollgate_trace_spans_dropped_total",
        "Spans not exported: the buffer was full or the collector failed",
    )?;
    let build_info = IntGaugeVec::new(
        Opts::new(
            "tollgate_build_info",
            "Always 1; the labels say which build",
        ),
        &["version"],
    )?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(request_duration.clone()))?;
    registry.register(Box::new(upstream_duration.clone()))?;
    registry.register(Box::new(in_flight.clone()))?;
    registry.register(Box::new(target_healthy.clone()))?;
    registry.register(Box::new(ratelimit_rejections.clone()))?;
    registry.register(Box::new(auth_failures.clone()))?;
    registry.register(Box::new(ratelimit_store_errors.clone()))?;
    registry.register(Box::new(reloads.clone()))?;
    registry.register(Box::new(last_reload.clone()))?;
    registry.register(Box::new(build_info.clone()))?;
    registry.register(Box::new(tls_expiry.clone()))?;
    registry.register(Box::new(spans_dropped.clone()))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    for result in ["success", "failure"] {
        reloads.with_label_values(&[result]);
    }
    Ok(Metrics {
        registry,
        requests,
        request_duration,
        upstream_duration,
        in_flight,
        target_healthy,
        ratelimit_rejections,
        ratelimit_store_errors,
        auth_failures,
        reloads,
        last_reload,
        build_info,
        tls_expiry,
        spans_dropped,
    })
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    // Registering fixed, well-formed metrics in a fresh registry cannot fail; if it ever did, that is
    // a programming error caught by the first test.
    M.get_or_init(|| build().expect("metrics registry"))
}

/// The method label: the standard methods by name, anything else as `OTHER` (labels stay bounded).
pub fn method_label(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::HEAD => "HEAD",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// A route histogram handle, resolved once per route at compile time so the request path does no
/// label lookup for it.
pub fn route_duration(route: &str) -> Histogram {
    metrics().request_duration.with_label_values(&[route])
}

/// A per-upstream histogram handle, resolved once per upstream.
pub fn upstream_duration(upstream: &str) -> Histogram {
    metrics().upstream_duration.with_label_values(&[upstream])
}

/// The Prometheus text exposition of every metric, with health gauges refreshed from `snap`.
pub fn render(snap: &Snapshot) -> String {
    let m = metrics();
    m.target_healthy.reset();
    for (name, up) in &snap.upstreams {
        for (addr, _, healthy) in up.targets() {
            m.target_healthy
                .with_label_values(&[name.as_str(), &addr.to_string()])
                .set(i64::from(healthy));
        }
    }
    let tls_not_after = snap.tls.as_ref().map(|c| c.not_after);
    m.tls_expiry.set(tls_not_after.unwrap_or(0));
    let mut families = m.registry.gather();
    if tls_not_after.is_none() {
        families.retain(|f| f.name() != "tollgate_tls_certificate_expiry_timestamp_seconds");
    }
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}
