//! Prometheus metrics in their own registry, served by the admin listener at `/metrics`.
//!
//! One [`Metrics`] is made by the server and handed to what counts (the proxy, the reloader, the span
//! exporter, the access log, the admin app); nothing reaches it through a global, so compiling a config
//! (`tollgate validate`) registers no series, and tests can hold a registry of their own.
//!
//! Labels are bounded: route and upstream *names* from the config (never raw paths), the method (the
//! standard ones, else `OTHER`) and the status code. Per-route, per-upstream and per-policy handles are
//! resolved once ([`RouteSeries`], [`Lazy`]) when a snapshot is installed, so the request path does no
//! label lookup for them. Health gauges are set at scrape time from the current snapshot, so a reload that
//! removes an upstream also removes its series.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    pub spans_dropped: IntCounter,
    pub access_log_dropped: IntCounter,
    pub aggregate_call_duration: HistogramVec,
    pub aggregate_call_errors: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub upstream_overloaded: IntCounterVec,
    pub target_ejected: IntGaugeVec,
    pub grpc_responses: IntCounterVec,
}

/// Latency buckets from 0.5 ms to 30 s: a gateway's own answers take well under a millisecond, a slow
/// upstream up to its read timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// A fresh registry with every metric registered (each call makes an independent set).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        build()
    }
}

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
    let access_log_dropped = IntCounter::new(
        "tollgate_access_log_dropped_total",
        "Access-log lines dropped because the writer fell behind (a stalled disk)",
    )?;
    let aggregate_call_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_aggregate_call_duration_seconds",
            "Time of each call a composition route made, by route and call",
        )
        .buckets(BUCKETS.to_vec()),
        &["route", "call"],
    )?;
    let aggregate_call_errors = IntCounterVec::new(
        Opts::new(
            "tollgate_aggregate_call_errors_total",
            "Calls of composition routes that failed, by route, call and reason",
        ),
        &["route", "call", "reason"],
    )?;
    let upstream_retries = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_retries_total",
            "Tries made again after a failed one, by upstream and reason (connect_failure, reset, timeout, or the status)",
        ),
        &["upstream", "reason"],
    )?;
    let retry_budget_exhausted = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_retry_budget_exhausted_total",
            "Retries not made because the upstream's retry budget was spent",
        ),
        &["upstream"],
    )?;
    let upstream_ejections = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_ejections_total",
            "Targets taken out by passive health (outlier detection), by upstream",
        ),
        &["upstream"],
    )?;
    let upstream_overloaded = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_overloaded_total",
            "Requests refused with 503 upstream_overloaded by the upstream's circuit breaker",
        ),
        &["upstream"],
    )?;
    let target_ejected = IntGaugeVec::new(
        Opts::new(
            "tollgate_upstream_target_ejected",
            "1 while passive health keeps an upstream target out of rotation",
        ),
        &["upstream", "target"],
    )?;
    let grpc_responses = IntCounterVec::new(
        Opts::new(
            "tollgate_grpc_responses_total",
            "gRPC calls answered, by route and gRPC status (the upstream's grpc-status, or the gateway's own)",
        ),
        &["route", "code"],
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
    registry.register(Box::new(access_log_dropped.clone()))?;
    registry.register(Box::new(aggregate_call_duration.clone()))?;
    registry.register(Box::new(aggregate_call_errors.clone()))?;
    registry.register(Box::new(upstream_retries.clone()))?;
    registry.register(Box::new(retry_budget_exhausted.clone()))?;
    registry.register(Box::new(upstream_ejections.clone()))?;
    registry.register(Box::new(upstream_overloaded.clone()))?;
    registry.register(Box::new(target_ejected.clone()))?;
    registry.register(Box::new(grpc_responses.clone()))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(Process(
        prometheus::process_collector::ProcessCollector::for_self(),
    )))?;
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
        access_log_dropped,
        aggregate_call_duration,
        aggregate_call_errors,
        upstream_retries,
        retry_budget_exhausted,
        upstream_ejections,
        upstream_overloaded,
        target_ejected,
        grpc_responses,
    })
}

/// The `prometheus` crate's process metrics, with `process_cpu_seconds_total` in fractions of a
/// second: the crate counts whole seconds (`IntCounter`, prometheus 0.14 `process_collector.rs`), so
/// `rate()` over it is a staircase that reads 0 or 1 CPU on a gateway using a tenth of one.
#[cfg(target_os = "linux")]
struct Process(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for Process {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        if let Some(secs) = cpu_seconds() {
            for f in families
                .iter_mut()
                .filter(|f| f.name() == "process_cpu_seconds_total")
            {
                for m in f.mut_metric() {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(secs);
                    m.set_counter(c);
                }
            }
        }
        families
    }
}

/// User and system CPU time of this process, in seconds, from `/proc/self/stat` (fields 14 and 15,
/// in clock ticks, after the parenthesized command name, which may hold spaces).
#[cfg(target_os = "linux")]
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    let hz = procfs::ticks_per_second();
    (hz > 0).then(|| (utime + stime) / hz as f64)
}

/// The method label: the standard methods by name, anything else as `OTHER` (labels stay bounded).
pub fn method_label(m: &http::Method) -> &'static str {
    METHODS[method_slot(m)]
}

/// The index of `m`'s label in [`METHODS`].
fn method_slot(m: &http::Method) -> usize {
    use http::Method as M;
    match *m {
        M::GET => 0,
        M::HEAD => 1,
        M::POST => 2,
        M::PUT => 3,
        M::PATCH => 4,
        M::DELETE => 5,
        M::OPTIONS => 6,
        M::CONNECT => 7,
        M::TRACE => 8,
        _ => 9,
    }
}

/// The method labels; each has a slot of its own in [`RouteSeries`].
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Statuses with a slot of their own in [`RouteSeries`]; others are looked up by label (rare answers).
const STATUSES: [u16; 18] = [
    200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 429, 500, 502, 503,
];

/// A value made once from the metrics, on first use (for a per-upstream or per-policy handle).
pub struct Lazy<T>(OnceLock<T>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(OnceLock::new())
    }
}

impl<T> Lazy<T> {
    pub fn get_or_init(&self, make: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(make)
    }

    /// The value, if it was made.
    pub fn get(&self) -> Option<&T> {
        self.0.get()
    }
}

/// The series of one route: its duration histogram and its request counters, resolved on first use
/// (when the snapshot is installed) instead of when compiling, so compiling registers nothing and the
/// request path does no label lookup for the usual methods and statuses.
#[derive(Default)]
pub struct RouteSeries(OnceLock<RouteHandles>);

#[derive(Default)]
struct RouteHandles {
    /// Made for routes only: a request that matched none has no duration series.
    duration: OnceLock<Histogram>,
    /// Per method, the counters of the statuses in [`STATUSES`], each made on first use (most routes
    /// see a method or two and a few statuses).
    requests: [OnceLock<Box<[OnceLock<IntCounter>; STATUSES.len()]>>; METHODS.len()],
}

impl RouteSeries {
    fn duration(&self, m: &Metrics, route: &str) -> &Histogram {
        self.0
            .get_or_init(Default::default)
            .duration
            .get_or_init(|| m.request_duration.with_label_values(&[route]))
    }

    /// Resolve the route's duration series now (when its snapshot is installed), so that it is
    /// exported from the start, as before the route's first request.
    pub fn bind(&self, m: &Metrics, route: &str) {
        self.duration(m, route);
    }

    /// Count a finished request of `route` (`""` for one that matched none) and observe its duration
    /// (only for a route).
    pub fn record(
        &self,
        m: &Metrics,
        route: &str,
        method: &http::Method,
        status: u16,
        seconds: Option<f64>,
    ) {
        if let Some(s) = seconds {
            self.duration(m, route).observe(s);
        }
        let h = self.0.get_or_init(Default::default);
        let mi = method_slot(method);
        let counter = || {
            let mut code = itoa::Buffer::new();
            m.requests
                .with_label_values(&[route, METHODS[mi], code.format(status)])
        };
        match STATUSES.iter().position(|x| *x == status) {
            Some(si) => h.requests[mi].get_or_init(Default::default)[si]
                .get_or_init(counter)
                .inc(),
            None => counter().inc(),
        }
    }
}

/// The series of one rate-limit policy, bound when its snapshot is installed: a policy of a snapshot
/// that was never installed (a benchmark, a unit test) counts nothing.
#[derive(Default)]
pub struct PolicySeries(OnceLock<PolicyHandles>);

struct PolicyHandles {
    rejections: IntCounter,
    store_errors: IntCounter,
}

impl PolicySeries {
    /// Resolve the policy's counters from `m`.
    pub fn bind(&self, m: &Metrics, policy: &str) {
        self.0.get_or_init(|| PolicyHandles {
            rejections: m.ratelimit_rejections.with_label_values(&[policy]),
            store_errors: m.ratelimit_store_errors.with_label_values(&[policy]),
        });
    }
    /// A request refused by the policy.
    pub fn rejected(&self) {
        if let Some(h) = self.0.get() {
            h.rejections.inc();
        }
    }
    /// A check the shared store could not answer.
    pub fn store_error(&self) {
        if let Some(h) = self.0.get() {
            h.store_errors.inc();
        }
    }
}

/// One upstream target's health, for the `tollgate_upstream_target_healthy` gauge.
pub struct TargetHealth<'a> {
    pub upstream: &'a str,
    pub target: std::net::SocketAddr,
    pub healthy: bool,
    /// Passive health keeps it out now.
    pub ejected: bool,
}

impl Metrics {
    /// The Prometheus text exposition of every metric, with the health gauges set to `health` (the
    /// current snapshot's targets) and the certificate expiry to `tls_not_after` (absent without HTTPS).
    pub fn render<'a>(
        &self,
        health: impl IntoIterator<Item = TargetHealth<'a>>,
        tls_not_after: Option<i64>,
    ) -> String {
        self.target_healthy.reset();
        self.target_ejected.reset();
        for t in health {
            let target = t.target.to_string();
            self.target_healthy
                .with_label_values(&[t.upstream, &target])
                .set(i64::from(t.healthy));
            self.target_ejected
                .with_label_values(&[t.upstream, &target])
                .set(i64::from(t.ejected));
        }
        self.tls_expiry.set(tls_not_after.unwrap_or(0));
        let mut families = self.registry.gather();
        if tls_not_after.is_none() {
            families.retain(|f| f.name() != "tollgate_tls_certificate_expiry_timestamp_seconds");
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sets_are_independent_and_route_counters_keep_their_labels() {
        let (a, b) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        let s = RouteSeries::default();
        let get = http::Method::GET;
        s.record(&a, "r", &get, 200, Some(0.01));
        s.record(&a, "r", &get, 200, Some(0.01));
        s.record(
            &a,
            "r",
            &http::Method::from_bytes(b"PURGE").unwrap(),
            299,
            None,
        );
        assert_eq!(a.requests.with_label_values(&["r", "GET", "200"]).get(), 2);
        assert_eq!(
            a.requests.with_label_values(&["r", "OTHER", "299"]).get(),
            1
        );
        assert_eq!(
            a.request_duration
                .with_label_values(&["r"])
                .get_sample_count(),
            2
        );
        assert_eq!(b.requests.with_label_values(&["r", "GET", "200"]).get(), 0);
        let text = a.render([], None);
        assert!(
            text.contains("tollgate_access_log_dropped_total 0"),
            "{text}"
        );
        assert!(!text.contains("tollgate_tls_certificate_expiry"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_is_in_fractions_of_a_second() {
        let m = Metrics::new().unwrap();
        // Burn a little CPU so that the figure is not 0.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert_ne!(x, 1);
        let text = m.render([], None);
        let line = text
            .lines()
            .find(|l| l.starts_with("process_cpu_seconds_total "))
            .unwrap();
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let precise = cpu_seconds().unwrap();
        assert!(v > 0.0 && (precise - v).abs() < 1.0, "{line} vs {precise}");
        assert!(line.contains('.') || v.fract() == 0.0, "{line}");
    }
}
