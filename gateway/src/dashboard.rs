//! The admin dashboard: the page at `GET /admin/dashboard` (HTML, JS and CSS embedded in the binary,
//! no build step, nothing fetched from elsewhere) and the figures of `GET /admin/dashboard/data`.
//!
//! The page refreshes itself; each data request reads the gateway's counters and latency histograms
//! into a [`Sample`] and compares it with an earlier one kept in a [`History`] owned by the admin app.
//! Rates are the difference of two samples over the time between them, and p50/p99 come from the
//! difference of the two histograms (the requests of that window), interpolated within a bucket the
//! way Prometheus' `histogram_quantile` does, so the page and a PromQL board agree. The history is
//! shared by every viewer: with two pages open each still gets a window of at least [`MIN_WINDOW`]
//! (the newest sample that old), never a rate over a few milliseconds.
//!
//! The figures are socket-free and clock-free (times are passed in), so the numbers are tested
//! exactly below; [`data`] only gathers them with the snapshot's targets and the reload history.
//!
//! The page shell and its assets hold no data and no secret: they are served to anyone who can reach
//! the admin listener (once an admin token is configured), because a browser's navigation cannot carry
//! a bearer token. The page asks for the token, keeps it in `sessionStorage` (gone with the tab) and
//! sends it as `Authorization: Bearer` on each data request, which is checked like every `/admin/*`
//! endpoint. The token never goes into a URL. A strict Content-Security-Policy (scripts and styles from
//! the admin listener only, no inline script, no framing) and rendering with `textContent` keep names
//! from the config from ever running as markup.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use serde_json::{json, Value};

use crate::diff::Diff;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::snapshot::Snapshot;

/// The page, its script and its style sheet.
pub const PAGE_HTML: &str = include_str!("dashboard/index.html");
pub const PAGE_JS: &str = include_str!("dashboard/app.js");
pub const PAGE_CSS: &str = include_str!("dashboard/style.css");

/// The Content-Security-Policy of the page: nothing but the admin listener's own script, style and
/// data; no inline script or style, no plugins, no framing, no form posts, no `<base>`.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An embedded asset at `path` (under `/admin/dashboard`): its content type and bytes.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/admin/dashboard" | "/admin/dashboard/" => Some(("text/html; charset=utf-8", PAGE_HTML)),
        "/admin/dashboard/app.js" => Some(("text/javascript; charset=utf-8", PAGE_JS)),
        "/admin/dashboard/style.css" => Some(("text/css; charset=utf-8", PAGE_CSS)),
        _ => None,
    }
}

/// The shortest window a rate is computed over.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Samples older than this are dropped: a page that comes back after a pause gets since-start
/// figures, then fresh rates, rather than a rate over minutes.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// A new sample is kept only this long after the previous one (bounds the history with many viewers).
const KEEP_EVERY: Duration = Duration::from_millis(250);

/// One route's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteCounts {
    /// Requests answered.
    pub requests: u64,
    /// Of which with a 4xx status.
    pub status_4xx: u64,
    /// Of which with a 5xx status.
    pub status_5xx: u64,
    /// Latency histogram: the buckets' upper bounds in seconds (without `+Inf`) ...
    pub bounds: Vec<f64>,
    /// ... the cumulative count of each (as Prometheus keeps them) ...
    pub cumulative: Vec<u64>,
    /// ... and the number of observations (the `+Inf` bucket).
    pub observed: u64,
}

/// The gateway's counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was read (rates divide by the time between two samples).
    pub at: Instant,
    /// By route name (`""` for requests that matched no route).
    pub routes: BTreeMap<String, RouteCounts>,
    /// Rate-limit rejections by policy.
    pub rejections: BTreeMap<String, u64>,
}

impl Sample {
    /// Read the counters of `m` now.
    pub fn read(m: &Metrics, at: Instant) -> Sample {
        let mut routes: BTreeMap<String, RouteCounts> = BTreeMap::new();
        for family in m.requests.collect() {
            for metric in family.get_metric() {
                let (mut route, mut status) = ("", 0u16);
                for l in metric.get_label() {
                    match l.name() {
                        "route" => route = l.value(),
                        "status" => status = l.value().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                // Counters are whole numbers kept as f64 by the protobuf model.
                let n = metric.get_counter().get_value() as u64;
                let r = routes.entry(route.to_string()).or_default();
                r.requests += n;
                match status {
                    400..=499 => r.status_4xx += n,
                    500..=599 => r.status_5xx += n,
                    _ => {}
                }
            }
        }
        for family in m.request_duration.collect() {
            for metric in family.get_metric() {
                let route = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "route")
                    .map(|l| l.value())
                    .unwrap_or_default();
                let h = metric.get_histogram();
                let r = routes.entry(route.to_string()).or_default();
                r.bounds = h.get_bucket().iter().map(|b| b.upper_bound()).collect();
                r.cumulative = h
                    .get_bucket()
                    .iter()
                    .map(|b| b.cumulative_count())
                    .collect();
                r.observed = h.get_sample_count();
            }
        }
        let mut rejections = BTreeMap::new();
        for family in m.ratelimit_rejections.collect() {
            for metric in family.get_metric() {
                let policy = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "policy")
                    .map(|l| l.value())
                    .unwrap_or_default();
                rejections.insert(policy.to_string(), metric.get_counter().get_value() as u64);
            }
        }
        Sample {
            at,
            routes,
            rejections,
        }
    }
}

/// The `q` quantile (0 < q ≤ 1) of a histogram in seconds, as Prometheus' `histogram_quantile`:
/// the bucket holding the rank `q × observed`, linearly interpolated between its lower bound (the
/// previous bucket's upper one, or 0) and its upper bound. A rank beyond the last finite bucket gives
/// that bucket's bound (the true value is only known to be larger). `None` without observations.
pub fn quantile(q: f64, bounds: &[f64], cumulative: &[u64], observed: u64) -> Option<f64> {
    if observed == 0 || bounds.is_empty() || bounds.len() != cumulative.len() {
        return None;
    }
    let rank = q * observed as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (upper, &count) in bounds.iter().zip(cumulative) {
        if count as f64 >= rank && count > below {
            let inside = (count - below) as f64;
            return Some(lower + (upper - lower) * (rank - below as f64) / inside);
        }
        below = count;
        lower = *upper;
    }
    bounds.last().copied()
}

/// `now - then` per second over `secs`; `then` larger than `now` (counters never go down, but a
/// series may have been reset) counts as 0.
pub fn rate(then: u64, now: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(then) as f64 / secs
}

/// One route's figures for the page.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RouteFigures {
    /// Requests answered since the gateway started.
    pub requests: u64,
    /// Requests per second over the window (`None` on the first refresh: no window yet).
    pub rps: Option<f64>,
    /// 4xx and 5xx answers per second over the window.
    pub rps_4xx: Option<f64>,
    pub rps_5xx: Option<f64>,
    /// Share of the window's requests answered with 4xx or 5xx (0..1); `None` without requests in it.
    pub error_ratio: Option<f64>,
    /// Latency quantiles in milliseconds over the window, or since start without a window.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The figures of route counts `now`, against `then` (the same route in an earlier sample, or
/// nothing) over `secs`.
pub fn figures(then: Option<&RouteCounts>, now: &RouteCounts, secs: Option<f64>) -> RouteFigures {
    let zero = RouteCounts::default();
    let (base, window) = match (then, secs) {
        (Some(t), Some(s)) => (t, Some(s)),
        // A route new since the earlier sample started from nothing.
        (None, Some(s)) => (&zero, Some(s)),
        (_, None) => (&zero, None),
    };
    let requests = now.requests.saturating_sub(base.requests);
    let errors = now.status_4xx.saturating_sub(base.status_4xx)
        + now.status_5xx.saturating_sub(base.status_5xx);
    // The window's histogram: bucket by bucket difference (the bounds are the same series'). A base
    // without the same buckets (none observed yet) counts as empty.
    let same = base.cumulative.len() == now.cumulative.len();
    let cumulative: Vec<u64> = if same {
        now.cumulative
            .iter()
            .zip(&base.cumulative)
            .map(|(n, b)| n.saturating_sub(*b))
            .collect()
    } else {
        now.cumulative.clone()
    };
    let observed = if same {
        now.observed.saturating_sub(base.observed)
    } else {
        now.observed
    };
    let ms = |q| quantile(q, &now.bounds, &cumulative, observed).map(|s| s * 1000.0);
    RouteFigures {
        requests: now.requests,
        rps: window.map(|s| rate(base.requests, now.requests, s)),
        rps_4xx: window.map(|s| rate(base.status_4xx, now.status_4xx, s)),
        rps_5xx: window.map(|s| rate(base.status_5xx, now.status_5xx, s)),
        error_ratio: window
            .filter(|_| requests > 0)
            .map(|_| errors as f64 / requests as f64),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

/// The samples that data requests took, oldest first, shared by every viewer of the page.
#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Keep `now` (unless the newest kept sample is very recent) and return the sample to compare it
    /// with: the newest one at least [`MIN_WINDOW`] older, if any is kept.
    pub fn observe(&self, now: Sample) -> Option<Sample> {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while h
            .front()
            .is_some_and(|s| now.at.saturating_duration_since(s.at) > MAX_AGE)
        {
            h.pop_front();
        }
        let base = h
            .iter()
            .rev()
            .find(|s| now.at.saturating_duration_since(s.at) >= MIN_WINDOW)
            .cloned();
        if h.back()
            .is_none_or(|s| now.at.saturating_duration_since(s.at) >= KEEP_EVERY)
        {
            h.push_back(now);
        }
        base
    }
}

/// The reload history's lines: each change of a version's diff as `+ route a`, `~ upstream b`...
pub fn change_lines(d: &Diff) -> Vec<String> {
    let groups = [
        ("route", &d.routes),
        ("upstream", &d.upstreams),
        ("global plugin", &d.global_plugins),
        ("rate limit", &d.limits),
        ("auth", &d.auth),
        ("setting", &d.settings),
    ];
    let mut out: Vec<String> = groups
        .iter()
        .flat_map(|(what, changes)| {
            changes
                .iter()
                .map(move |c| format!("{} {what} {}", c.kind, c.name))
        })
        .collect();
    out.extend(
        d.needs_upgrade
            .iter()
            .map(|n| format!("{n} (after an upgrade)")),
    );
    out
}

/// A target's state as the page shows it: passive health (ejection) first, since an ejected target
/// is out of rotation whatever its health checks say.
pub fn target_state(healthy: bool, ejected: bool) -> &'static str {
    match (healthy, ejected) {
        (_, true) => "ejected",
        (false, false) => "unhealthy",
        (true, false) => "healthy",
    }
}

/// Everything one refresh of the page shows, from the metrics now (compared with `history`'s earlier
/// sample), the snapshot being served and the reload history.
pub fn data(snap: &Snapshot, reloader: &Reloader, history: &History, at: Instant) -> Value {
    let now = Sample::read(reloader.metrics(), at);
    let base = history.observe(now.clone());
    let secs = base
        .as_ref()
        .map(|b| now.at.saturating_duration_since(b.at).as_secs_f64());
    let earlier = |route: &str| base.as_ref().and_then(|b| b.routes.get(route));
    let empty = RouteCounts::default();
    let mut routes: Vec<Value> = snap
        .routes_in_order()
        .map(|(r, _)| {
            let counts = now.routes.get(&r.name).unwrap_or(&empty);
            let mut v = json!(figures(earlier(&r.name), counts, secs));
            v["name"] = json!(r.name);
            v["upstream"] = json!(r.upstream_label());
            v
        })
        .collect();
    // Requests that matched no route (404s), when there were any.
    if let Some(counts) = now.routes.get("").filter(|c| c.requests > 0) {
        let mut v = json!(figures(earlier(""), counts, secs));
        v["name"] = Value::Null;
        v["upstream"] = Value::Null;
        routes.push(v);
    }
    let clock = crate::resilience::now();
    let upstreams: Vec<Value> = snap
        .upstreams
        .iter()
        .map(|(name, up)| {
            let targets: Vec<Value> = up
                .targets()
                .into_iter()
                .map(|(addr, weight, healthy)| {
                    let stats = up.stats.get(&addr);
                    let ejected = up.stats.ejected(&addr, clock);
                    json!({
                        "addr": addr.to_string(), "weight": weight, "healthy": healthy,
                        "ejected": ejected, "state": target_state(healthy, ejected),
                        "ejected_for_ms": stats.as_ref().and_then(|s| s.ejection()).map(|e| e.0),
                        "in_flight": stats.as_ref().map(|s| s.in_flight()),
                        "latency_ewma_ms": stats.as_ref().and_then(|s| s.ewma_ms()),
                    })
                })
                .collect();
            json!({"name": name, "health_check": up.health.is_some(),
                   "outlier_detection": up.outlier.is_some(), "targets": targets})
        })
        .collect();
    let limits: Vec<Value> = snap
        .providers
        .rate_limits
        .keys()
        .map(|policy| {
            let total = now.rejections.get(policy).copied().unwrap_or(0);
            let then = base
                .as_ref()
                .and_then(|b| b.rejections.get(policy))
                .copied()
                .unwrap_or(0);
            json!({"policy": policy, "rejections": total,
                   "per_s": secs.map(|s| rate(then, total, s))})
        })
        .collect();
    let (versions, current) = reloader.versions();
    let reloads: Vec<Value> = versions
        .iter()
        .map(|v| {
            json!({"version": v.version, "at": v.at, "trigger": v.trigger, "outcome": v.outcome,
                   "current": v.version == current, "rollback_to": v.rollback_to,
                   "errors": v.errors,
                   "changes": v.changes.as_ref().map(change_lines).unwrap_or_default()})
        })
        .collect();
    json!({
        "window_s": secs,
        "version": current,
        "routes": routes,
        "upstreams": upstreams,
        "rate_limits": limits,
        "reloads": reloads,
        "last_reload": reloader.status(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[f64] = &[0.001, 0.005, 0.01, 0.1];

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        // 10 observations: 4 ≤ 1 ms, 4 in (1, 5] ms, 2 in (5, 10] ms.
        let c = [4, 8, 10, 10];
        // p50: rank 5, the second bucket, 1 of its 4: 1 + 4 × 1/4 = 2 ms.
        assert_eq!(quantile(0.5, B, &c, 10), Some(0.002));
        // p99: rank 9.9, the third bucket, 1.9 of its 2: 5 + 5 × 0.95 = 9.75 ms.
        let p99 = quantile(0.99, B, &c, 10).unwrap();
        assert!((p99 - 0.00975).abs() < 1e-12, "{p99}");
        // p40: rank 4, the top of the first bucket exactly.
        assert_eq!(quantile(0.4, B, &c, 10), Some(0.001));
        // In the first bucket, from 0: rank 2 of 4 = 0.5 ms.
        assert_eq!(quantile(0.2, B, &c, 10), Some(0.0005));
    }

    #[test]
    fn quantile_edges() {
        assert_eq!(quantile(0.5, B, &[0, 0, 0, 0], 0), None);
        // Everything beyond the last bound: that bound.
        assert_eq!(quantile(0.5, B, &[0, 0, 0, 0], 3), Some(0.1));
        // Empty buckets before the one holding the rank are skipped.
        assert_eq!(quantile(0.5, B, &[0, 0, 2, 2], 2), Some(0.0075));
        assert_eq!(quantile(0.5, &[], &[], 2), None);
    }

    #[test]
    fn rates_between_samples() {
        assert_eq!(rate(10, 30, 2.0), 10.0);
        assert_eq!(rate(30, 10, 2.0), 0.0);
        assert_eq!(rate(0, 5, 0.0), 0.0);
    }

    fn counts(requests: u64, c4: u64, c5: u64, cumulative: [u64; 4], observed: u64) -> RouteCounts {
        RouteCounts {
            requests,
            status_4xx: c4,
            status_5xx: c5,
            bounds: B.to_vec(),
            cumulative: cumulative.to_vec(),
            observed,
        }
    }

    #[test]
    fn figures_over_a_window_use_only_its_requests() {
        // Before: 100 requests, all fast. In the 4 s window: 20 more, 2 of them 4xx, 1 5xx, 10 in
        // (1, 5] ms and 10 in (5, 10] ms.
        let then = counts(100, 0, 0, [100, 100, 100, 100], 100);
        let now = counts(120, 2, 1, [100, 110, 120, 120], 120);
        let f = figures(Some(&then), &now, Some(4.0));
        assert_eq!(f.requests, 120);
        assert_eq!(f.rps, Some(5.0));
        assert_eq!(f.rps_4xx, Some(0.5));
        assert_eq!(f.rps_5xx, Some(0.25));
        assert_eq!(f.error_ratio, Some(0.15));
        // p50 of the window: rank 10 = the top of the (1, 5] bucket; since start it would be < 1 ms.
        assert_eq!(f.p50_ms, Some(5.0));
        // p99: rank 19.8 → 5 + 5 × 9.8/10 = 9.9 ms.
        assert!((f.p99_ms.unwrap() - 9.9).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn figures_without_a_window_are_since_start() {
        let now = counts(10, 0, 0, [4, 8, 10, 10], 10);
        let f = figures(None, &now, None);
        assert_eq!((f.rps, f.error_ratio), (None, None));
        assert_eq!(f.p50_ms, Some(2.0));
        // An idle window: rate 0, no ratio, no quantile.
        let f = figures(Some(&now), &now, Some(2.0));
        assert_eq!((f.rps, f.error_ratio, f.p50_ms), (Some(0.0), None, None));
        // A route that appeared in the window counts from 0.
        let f = figures(None, &now, Some(2.0));
        assert_eq!(f.rps, Some(5.0));
    }

    fn sample(at: Instant, n: u64) -> Sample {
        let mut routes = BTreeMap::new();
        routes.insert("r".to_string(), counts(n, 0, 0, [n, n, n, n], n));
        Sample {
            at,
            routes,
            rejections: BTreeMap::new(),
        }
    }

    #[test]
    fn history_compares_with_a_sample_at_least_min_window_old() {
        let h = History::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(h.observe(sample(at(0), 0)).is_none());
        // Half a second later (a second viewer): too close to the first, no window yet.
        assert!(h.observe(sample(at(500), 5)).is_none());
        // 2 s: against the 0 s sample (the 500 ms one is only 1.5 s old, but newer is preferred
        // only when it is at least MIN_WINDOW old: 1.5 s is, so it is the base).
        let base = h.observe(sample(at(2000), 20)).unwrap();
        assert_eq!(base.at, at(500));
        // 2.1 s: the 2 s sample is too recent to keep a new one, and too recent to compare with.
        let base = h.observe(sample(at(2100), 21)).unwrap();
        assert_eq!(base.at, at(500));
        // 4 s: against the 2 s sample.
        let base = h.observe(sample(at(4000), 40)).unwrap();
        assert_eq!(base.at, at(2000));
        // After a long pause, nothing is old enough to keep: no window.
        assert!(h.observe(sample(at(60_000), 60)).is_none());
    }

    #[test]
    fn a_sample_reads_the_gateways_series() {
        let m = Metrics::new().unwrap();
        let count = |route, status, n| {
            m.requests
                .with_label_values(&[route, "GET", status])
                .inc_by(n)
        };
        count("api", "200", 5);
        count("api", "404", 2);
        count("api", "503", 1);
        m.requests.with_label_values(&["api", "POST", "200"]).inc();
        count("", "404", 4);
        for s in [0.0002, 0.002, 0.002, 0.3] {
            m.request_duration.with_label_values(&["api"]).observe(s);
        }
        m.ratelimit_rejections
            .with_label_values(&["tight"])
            .inc_by(7);
        let s = Sample::read(&m, Instant::now());
        let api = &s.routes["api"];
        assert_eq!((api.requests, api.status_4xx, api.status_5xx), (9, 2, 1));
        assert_eq!(api.observed, 4);
        assert_eq!(api.bounds.len(), api.cumulative.len());
        // 0.5 ms, 1 ms, 2.5 ms buckets: 1, 1, 3 so far.
        assert_eq!(&api.cumulative[..3], &[1, 1, 3]);
        assert_eq!(s.routes[""].requests, 4);
        assert_eq!(s.rejections["tight"], 7);
    }

    #[test]
    fn target_states() {
        assert_eq!(target_state(true, false), "healthy");
        assert_eq!(target_state(false, false), "unhealthy");
        assert_eq!(target_state(true, true), "ejected");
        assert_eq!(target_state(false, true), "ejected");
    }

    #[test]
    fn change_lines_name_each_change() {
        use crate::diff::Change;
        let c = |kind, name: &str| Change {
            kind,
            name: name.to_string(),
            detail: vec![],
        };
        let d = Diff {
            routes: vec![c('+', "orders"), c('~', "users")],
            upstreams: vec![c('-', "old")],
            limits: vec![c('~', "per_client")],
            needs_upgrade: vec!["server.listen".into()],
            ..Diff::default()
        };
        assert_eq!(
            change_lines(&d),
            [
                "+ route orders",
                "~ route users",
                "- upstream old",
                "~ rate limit per_client",
                "server.listen (after an upgrade)"
            ]
        );
    }

    #[test]
    fn assets_are_embedded_and_wired() {
        assert!(asset("/admin/dashboard").is_some_and(|(t, _)| t.starts_with("text/html")));
        assert!(asset("/admin/dashboard/app.js").is_some());
        assert!(asset("/admin/dashboard/data").is_none());
        assert!(asset("/admin/dashboard/../config").is_none());
        // The page loads its script and style from the listener (the CSP allows nothing else) and
        // holds no inline script or style.
        assert!(PAGE_HTML.contains("src=\"/admin/dashboard/app.js\""));
        assert!(PAGE_HTML.contains("href=\"/admin/dashboard/style.css\""));
        assert!(!PAGE_HTML.contains("<script>"));
        assert!(!PAGE_HTML.contains("style="));
        assert!(!PAGE_HTML.contains("http://") && !PAGE_HTML.contains("https://"));
        // Data is rendered as text, never parsed as markup.
        assert!(!PAGE_JS.contains("innerHTML"));
        assert!(!PAGE_JS.contains("outerHTML"));
        assert!(!PAGE_JS.contains("insertAdjacentHTML"));
        assert!(!PAGE_JS.contains("eval("));
    }
}
