//! What keeps a platform up when one service misbehaves, per upstream: which failed tries are tried
//! again ([`RetryPolicy`]) and how many retries the upstream can take ([`Budget`]); passive health,
//! which takes out a target that fails in a row ([`OutlierPolicy`]); caps on what the upstream holds
//! at once ([`Breaker`]); and what load-aware balancing and slow start read of each target
//! ([`TargetStats`]: requests in flight, latency, ejection, since when it serves).
//!
//! Everything here is decided without a socket: the proxy phases ask and act (see `proxy`), the
//! upstream picks with it (see `upstream`). The counters are atomics read on the request path, never a
//! lock; a target's stats live as long as its address stays in the upstream, across reloads.
//!
//! Semantics follow Envoy's where it has them (retry conditions, ejection time growing with each
//! ejection, at least one target ejectable whatever `max_ejected_percent`, a passing active health
//! check bringing an ejected target back) and Finagle/linkerd's retry budget (a share of requests
//! over a sliding window plus a floor per second).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::raw::{CircuitBreakerConfig, Condition, OutlierConfig};

/// What went wrong with one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection was made: nothing was sent.
    ConnectFailure,
    /// The connection broke before the whole response head arrived.
    Reset,
    /// No byte from the upstream within the read timeout.
    Timeout,
    /// The upstream answered with this 5xx status.
    Status(u16),
}

impl Failure {
    /// The `reason` label of `tollgate_upstream_retries_total` and the text of an ejection.
    pub fn reason(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Failure::ConnectFailure => "connect_failure".into(),
            Failure::Reset => "reset".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Status(s) => s.to_string().into(),
        }
    }

    /// How a Pingora error of a try that reached the upstream reads, if it is the upstream's failure
    /// (not ours, e.g. a plugin refusing the body). `ConnectionClosed`/`ReadError`/`WriteError` are a
    /// broken connection, `ReadTimedout`/`WriteTimedout` a silent upstream.
    pub fn of_error(e: &pingora_error::Error) -> Option<Failure> {
        use pingora_error::ErrorType::*;
        if e.esource() != &pingora_error::ErrorSource::Upstream {
            return None;
        }
        match e.etype() {
            ConnectionClosed | ReadError | WriteError | H2Error => Some(Failure::Reset),
            ReadTimedout | WriteTimedout => Some(Failure::Timeout),
            ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError
            | TLSHandshakeFailure | InvalidCert | HandshakeError => Some(Failure::ConnectFailure),
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ConnectFailure => f.write_str("connect failure"),
            Failure::Reset => f.write_str("connection reset"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Status(s) => write!(f, "status {s}"),
        }
    }
}

/// A set of [`Condition`]s, tested without a search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions {
    connect_failure: bool,
    reset: bool,
    timeout: bool,
    /// Bit `s - 500` for status `s`.
    statuses: u128,
}

impl Conditions {
    /// `[connect_failure, reset]`: what is always safe to try again for an idempotent request.
    pub const CONNECT_AND_RESET: Conditions = Conditions {
        connect_failure: true,
        reset: true,
        timeout: false,
        statuses: 0,
    };

    pub fn of(list: &[Condition]) -> Conditions {
        let mut c = Conditions::default();
        for cond in list {
            match cond {
                Condition::ConnectFailure => c.connect_failure = true,
                Condition::Reset => c.reset = true,
                Condition::Timeout => c.timeout = true,
                Condition::AnyServerError => c.statuses = u128::MAX >> 28,
                Condition::Status(s) => c.statuses |= 1 << (s - 500),
            }
        }
        c
    }

    pub fn has(&self, f: Failure) -> bool {
        match f {
            Failure::ConnectFailure => self.connect_failure,
            Failure::Reset => self.reset,
            Failure::Timeout => self.timeout,
            Failure::Status(s @ 500..=599) => self.statuses & (1 << (s - 500)) != 0,
            Failure::Status(_) => false,
        }
    }

    /// Whether any status is in the set (the response phase then looks at the status).
    pub fn any_status(&self) -> bool {
        self.statuses != 0
    }

    /// The status conditions, for `tollgate explain` and the admin API.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (on, name) in [
            (self.connect_failure, "connect_failure"),
            (self.reset, "reset"),
            (self.timeout, "timeout"),
        ] {
            if on {
                out.push(name.to_string());
            }
        }
        out.extend(
            (0..100u16)
                .filter(|i| self.statuses & (1 << i) != 0)
                .map(|i| (500 + i).to_string()),
        );
        out
    }
}

/// The retry policy of a route (its upstream's, with the route's overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub when: Conditions,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub per_try_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
}

impl RetryPolicy {
    /// No retry at all.
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        when: Conditions {
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: 0,
        },
        non_idempotent: false,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        per_try_timeout: None,
        timeout: None,
    };

    /// One line for `tollgate diff` and the admin API: `3 tries on connect_failure, reset, 503`.
    pub fn describe(&self) -> String {
        let when = self.when.names();
        if self.attempts < 2 || when.is_empty() {
            return "no retry".to_string();
        }
        let mut s = format!("{} tries on {}", self.attempts, when.join(", "));
        if self.non_idempotent {
            s.push_str(", any method");
        }
        if let Some(t) = self.per_try_timeout {
            s.push_str(&format!(", {t:?} per try"));
        }
        if let Some(t) = self.timeout {
            s.push_str(&format!(", {t:?} in all"));
        }
        s
    }

    /// Whether a try that failed with `failure` may be tried again, before the budget is asked:
    /// the condition is one of `when`, tries are left, and (unless nothing was sent) the request can
    /// be replayed: an idempotent method (RFC 9110 §9.2.2) or a route that opted in, and a body that
    /// was kept whole. `tries` is how many were made.
    pub fn allows(
        &self,
        failure: Failure,
        tries: u32,
        method: &http::Method,
        replayable_body: bool,
    ) -> bool {
        if !self.when.has(failure) || tries >= self.attempts {
            return false;
        }
        failure == Failure::ConnectFailure
            || ((method.is_idempotent() || self.non_idempotent) && replayable_body)
    }

    /// The wait before retry number `n` (1 for the first): "full jitter", a random time up to
    /// `backoff * 2^(n-1)`, at most `max_backoff`, so that retries of many clients spread out.
    pub fn backoff_before(&self, n: u32) -> Duration {
        if self.backoff.is_zero() {
            return Duration::ZERO;
        }
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff.max(self.backoff));
        ceiling.mul_f64(fastrand::f64())
    }
}

/// The window of a [`Budget`].
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A retry budget: retries may be at most `percent` of the requests of the last 10 seconds, plus
/// `min_per_second` (so that a quiet upstream can still retry). Counted in two windows of 10 s; the
/// previous one weighs in proportion to how much of it the sliding window still covers (like
/// `pingora-limits`' rate estimate, and the rate limiter's sliding window).
pub struct Budget {
    percent: f64,
    floor: f64,
    slots: [Slot; 2],
}

#[derive(Default)]
struct Slot {
    /// The window this slot counts (window number + 1; 0: never used).
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Budget {
    pub fn new(percent: f64, min_per_second: u32) -> Budget {
        Budget {
            percent,
            floor: f64::from(min_per_second) * BUDGET_WINDOW.as_secs_f64(),
            slots: Default::default(),
        }
    }

    /// The current slot (reset when its window starts), the previous one if it counts the window
    /// before, and how much of that window the sliding window still covers.
    fn slots(&self, now: Duration) -> (&Slot, Option<&Slot>, f64) {
        let w = BUDGET_WINDOW.as_nanos();
        let epoch = (now.as_nanos() / w) as u64 + 1;
        let into = (now.as_nanos() % w) as f64 / w as f64;
        let cur = &self.slots[(epoch % 2) as usize];
        let seen = cur.epoch.load(Relaxed);
        if seen != epoch
            && cur
                .epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            cur.requests.store(0, Relaxed);
            cur.retries.store(0, Relaxed);
        }
        let prev = &self.slots[((epoch + 1) % 2) as usize];
        let prev = (prev.epoch.load(Relaxed) == epoch - 1).then_some(prev);
        (cur, prev, 1.0 - into)
    }

    /// A request to the upstream (retries excluded).
    pub fn deposit(&self) {
        self.deposit_at(clock());
    }

    fn deposit_at(&self, now: Duration) {
        self.slots(now).0.requests.fetch_add(1, Relaxed);
    }

    /// Take one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(clock())
    }

    fn withdraw_at(&self, now: Duration) -> bool {
        let (cur, prev, weight) = self.slots(now);
        let sliding = |f: fn(&Slot) -> &AtomicU64| {
            f(cur).load(Relaxed) as f64 + prev.map_or(0.0, |p| f(p).load(Relaxed) as f64 * weight)
        };
        let requests = sliding(|s| &s.requests);
        let retries = sliding(|s| &s.retries);
        if retries + 1.0 > requests * self.percent / 100.0 + self.floor {
            return false;
        }
        cur.retries.fetch_add(1, Relaxed);
        true
    }
}

/// Time since the first use, the clock of everything here (atomics hold it as whole units).
fn clock() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn now_ms() -> u64 {
    clock().as_millis() as u64
}

/// Passive health: when targets are taken out, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive: u32,
    pub when: Conditions,
    pub base: Duration,
    pub max: Duration,
    pub max_percent: u32,
}

impl OutlierPolicy {
    pub fn of(c: &OutlierConfig) -> OutlierPolicy {
        OutlierPolicy {
            consecutive: c.consecutive_failures.clamp(1, i64::from(u32::MAX)) as u32,
            when: Conditions::of(&c.when),
            base: c.base_ejection.0,
            max: c.max_ejection.0.max(c.base_ejection.0),
            max_percent: c.max_ejected_percent.clamp(0, 100) as u32,
        }
    }
}

/// What the gateway knows of one target's recent behaviour.
#[derive(Default)]
pub struct TargetStats {
    /// Requests to it now (tries in flight, until the answer is sent).
    in_flight: AtomicU32,
    /// Peak-sensitive moving average of the time to its response head, in µs (0: no sample).
    ewma_us: AtomicU64,
    /// When `ewma_us` was last updated ([`clock`], µs).
    ewma_at: AtomicU64,
    /// Failures in a row (by the outlier policy's `when`).
    consecutive: AtomicU32,
    /// Ejected until this time ([`clock`], ms; 0: not ejected).
    ejected_until: AtomicU64,
    /// How many times it was ejected (the next ejection lasts one more base time).
    ejections: AtomicU32,
    /// Since when it serves ([`clock`], ms): joined, healthy again, or back from an ejection (0:
    /// from the start, no ramp).
    since: AtomicU64,
    /// Why it was last ejected.
    reason: parking_lot::Mutex<Option<String>>,
}

/// The latency a failed try counts as, at least (see [`Stats::outcome`]).
const FAILURE_PENALTY: Duration = Duration::from_millis(100);

/// The decay time of the latency average: a sample this old weighs 1/e.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The share of its traffic a target starting its slow start gets.
const SLOW_START_FLOOR: f64 = 0.1;

impl TargetStats {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// The latency average in ms, if there is a sample.
    pub fn ewma_ms(&self) -> Option<f64> {
        match self.ewma_us.load(Relaxed) {
            0 => None,
            us => Some(us as f64 / 1000.0),
        }
    }

    /// Ejected now: until when (ms from now), how many times, and why.
    pub fn ejection(&self) -> Option<(u64, u32, String)> {
        let until = self.ejected_until.load(Relaxed);
        let now = now_ms();
        (until > now).then(|| {
            (
                until - now,
                self.ejections.load(Relaxed),
                self.reason.lock().clone().unwrap_or_default(),
            )
        })
    }

    fn ejected_at(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    /// Record a latency sample (peak EWMA, as linkerd's and Finagle's balancers: a sample above the
    /// average replaces it at once, one below pulls it down with a weight that grows with the time
    /// since the last sample).
    fn observe(&self, took: Duration) {
        let now = clock().as_micros() as u64;
        let sample = (took.as_micros() as u64).max(1);
        let old = self.ewma_us.load(Relaxed);
        let next = if old == 0 || sample > old {
            sample
        } else {
            let dt = now.saturating_sub(self.ewma_at.load(Relaxed)) as f64;
            let w = (-dt / EWMA_DECAY.as_micros() as f64).exp();
            (old as f64 * w + sample as f64 * (1.0 - w)) as u64
        };
        self.ewma_us.store(next.max(1), Relaxed);
        self.ewma_at.store(now, Relaxed);
    }

    /// The cost a load-aware pick compares: requests in flight (one more, the one being placed) per
    /// unit of weight, times the latency average for `ewma`.
    fn cost(&self, weight: usize, latency: bool) -> f64 {
        let load = f64::from(self.in_flight() + 1) / weight.max(1) as f64;
        if latency {
            // A target without a sample yet costs like a fast one, so that it gets tried.
            load * (self.ewma_us.load(Relaxed).max(1) as f64)
        } else {
            load
        }
    }

    /// The share of its traffic it gets now under a slow start of `ramp`: from 10 % when it starts
    /// serving to all of it at the end.
    fn ramp(&self, ramp: Option<Duration>, now: u64) -> f64 {
        let Some(ramp) = ramp.filter(|r| r.as_millis() > 0) else {
            return 1.0;
        };
        let since = self.since.load(Relaxed);
        if since == 0 {
            // Serving since before anything was counted: no ramp.
            return 1.0;
        }
        let served = now.saturating_sub(since) as f64;
        (served / ramp.as_millis() as f64).clamp(SLOW_START_FLOOR, 1.0)
    }

    /// It serves again from now (healthy again, or back): its slow start begins.
    pub fn restart(&self) {
        self.since.store(now_ms().max(1), Relaxed);
    }

    /// Bring an ejected target back now (a passing active health check).
    fn uneject(&self) -> bool {
        let now = now_ms();
        if !self.ejected_at(now) {
            return false;
        }
        self.ejected_until.store(0, Relaxed);
        self.consecutive.store(0, Relaxed);
        self.since.store(now.max(1), Relaxed);
        true
    }
}

/// A try in flight to a target: counted in its `in_flight` until dropped.
pub struct Attempt(Arc<TargetStats>);

impl Drop for Attempt {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Every target's stats, by address; handed on to the upstream that replaces this one on a reload.
#[derive(Default)]
pub struct Stats {
    map: arc_swap::ArcSwap<HashMap<SocketAddr, Arc<TargetStats>>>,
    /// Held while an ejection is decided (the rare path): the count of targets out and the ejection
    /// it leads to are one step, so concurrent failures never take out more than the cap.
    ejecting: parking_lot::Mutex<()>,
}

impl Stats {
    /// Keep the stats of `addrs` that exist, start fresh ones for the others, forget the rest. A
    /// target joining others that serve starts its slow start now; the first targets of an upstream
    /// have nothing to take load from and start at their full share.
    pub fn retain(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let old = self.map.load();
        let joining = !old.is_empty();
        let next: HashMap<_, _> = addrs
            .into_iter()
            .map(|a| {
                let s = old.get(&a).cloned().unwrap_or_else(|| {
                    let s = TargetStats::default();
                    if joining {
                        s.restart();
                    }
                    Arc::new(s)
                });
                (a, s)
            })
            .collect();
        self.map.store(Arc::new(next));
    }

    pub fn get(&self, addr: &SocketAddr) -> Option<Arc<TargetStats>> {
        self.map.load().get(addr).cloned()
    }

    /// Start a try to `addr`.
    pub fn begin(&self, addr: &SocketAddr) -> Option<Attempt> {
        let s = self.get(addr)?;
        s.in_flight.fetch_add(1, Relaxed);
        Some(Attempt(s))
    }

    /// A passing active health check of `addr`: an ejected target comes back (as in Envoy).
    pub fn check_passed(&self, addr: &SocketAddr) -> bool {
        self.get(addr).is_some_and(|s| s.uneject())
    }

    /// Record how a try to `addr` went: its latency (`took`, to the response head) and whether it
    /// failed. Returns the reason when this ejected the target.
    pub fn outcome(
        &self,
        addr: &SocketAddr,
        took: Option<Duration>,
        failure: Option<Failure>,
        policy: Option<&OutlierPolicy>,
        unhealthy: impl FnOnce() -> usize,
    ) -> Option<String> {
        let map = self.map.load();
        let s = map.get(addr)?;
        match (took, failure) {
            (Some(t), None) => s.observe(t),
            // A failure counts as a slow answer, so that a target failing fast does not look like the
            // best one to a latency-aware pick: twice what it took, at least 100 ms.
            (t, Some(_)) => s.observe(t.unwrap_or_default().saturating_mul(2).max(FAILURE_PENALTY)),
            (None, None) => {}
        }
        let policy = policy?;
        let Some(f) = failure.filter(|f| policy.when.has(*f)) else {
            s.consecutive.store(0, Relaxed);
            return None;
        };
        let n = s.consecutive.fetch_add(1, Relaxed) + 1;
        if n < policy.consecutive {
            return None;
        }
        let _deciding = self.ejecting.lock();
        let now = now_ms();
        if s.ejected_at(now) {
            return None;
        }
        let out = map.values().filter(|t| t.ejected_at(now)).count() + unhealthy();
        let allowed = (map.len() * policy.max_percent as usize / 100).max(1);
        if out >= allowed {
            return None;
        }
        // Back long enough to have earned a clean slate: the count of ejections starts again.
        let last = s.ejected_until.load(Relaxed);
        if last != 0 && now.saturating_sub(last) > policy.max.as_millis() as u64 {
            s.ejections.store(0, Relaxed);
        }
        let k = s.ejections.fetch_add(1, Relaxed) + 1;
        let length = policy.base.saturating_mul(k).min(policy.max);
        let until = now + length.as_millis().max(1) as u64;
        s.ejected_until.store(until, Relaxed);
        // It serves again when the ejection ends.
        s.since.store(until, Relaxed);
        s.consecutive.store(0, Relaxed);
        let why = format!("{n} failures in a row, the last: {f}");
        *s.reason.lock() = Some(why.clone());
        Some(why)
    }

    /// Whether `addr` may take a request now, for the selection: not ejected, and (under a slow
    /// start) its random share of traffic. Unknown addresses may.
    pub fn admits(&self, addr: &SocketAddr, ramp: Option<Duration>, now: u64) -> bool {
        let map = self.map.load();
        let Some(s) = map.get(addr) else { return true };
        if s.ejected_at(now) {
            return false;
        }
        let share = s.ramp(ramp, now);
        share >= 1.0 || fastrand::f64() < share
    }

    /// Whether `addr` is ejected now.
    pub fn ejected(&self, addr: &SocketAddr, now: u64) -> bool {
        self.map.load().get(addr).is_some_and(|s| s.ejected_at(now))
    }

    /// Power of two choices: of `candidates` (address, weight), two at random, the one of lower
    /// cost (see [`TargetStats::cost`]); under a slow start, a target's cost is divided by its share.
    pub fn least_loaded(
        &self,
        candidates: &[(SocketAddr, usize)],
        latency: bool,
        ramp: Option<Duration>,
        now: u64,
    ) -> Option<SocketAddr> {
        let map = self.map.load();
        let cost = |(a, w): &(SocketAddr, usize)| match map.get(a) {
            Some(s) => s.cost(*w, latency) / s.ramp(ramp, now),
            None => 0.0,
        };
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].0),
            n => {
                let i = fastrand::usize(..n);
                let mut j = fastrand::usize(..n - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (&candidates[i], &candidates[j]);
                Some(if cost(b) < cost(a) { b.0 } else { a.0 })
            }
        }
    }
}

/// The resilience settings of one upstream, as compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The upstream's retry policy (a route may override it).
    pub retry: RetryPolicy,
    /// `percent`, `min_per_second` of the retry budget.
    pub budget: Option<(f64, u32)>,
    pub outlier: Option<OutlierPolicy>,
    pub breaker: Option<CircuitBreakerConfig>,
    pub slow_start: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry: RetryPolicy::NONE,
            budget: None,
            outlier: None,
            breaker: None,
            slow_start: None,
        }
    }
}

/// One upstream's resilience counters, resolved when its snapshot is installed (the reasons of
/// retries are looked up by label: a retry is the rare path).
pub struct Series {
    pub ejections: prometheus::IntCounter,
    pub budget_exhausted: prometheus::IntCounter,
    pub overloaded: prometheus::IntCounter,
    retries: prometheus::IntCounterVec,
    upstream: String,
}

impl Series {
    pub fn new(m: &crate::metrics::Metrics, upstream: &str) -> Series {
        Series {
            ejections: m.upstream_ejections.with_label_values(&[upstream]),
            budget_exhausted: m.retry_budget_exhausted.with_label_values(&[upstream]),
            overloaded: m.upstream_overloaded.with_label_values(&[upstream]),
            retries: m.upstream_retries.clone(),
            upstream: upstream.to_string(),
        }
    }

    /// A retry after `failure`.
    pub fn retried(&self, failure: Failure) {
        self.retries
            .with_label_values(&[self.upstream.as_str(), failure.reason().as_ref()])
            .inc();
    }
}

/// The clock for [`Stats::admits`] and friends, read once per pick.
pub fn now() -> u64 {
    now_ms()
}

/// Caps on what one upstream holds at once. A request takes a slot for as long as it is in flight
/// (retries included); with every slot taken it waits, up to `max_wait`, if fewer than
/// `max_pending` others wait, else it is refused at once. Never an unbounded queue: a hung upstream
/// holds at most `max_requests + max_pending` requests, and every other upstream is unaffected.
pub struct Breaker {
    slots: Arc<tokio::sync::Semaphore>,
    max_pending: u32,
    pending: AtomicU32,
    max_wait: Duration,
    /// The config it was made from: a reload with the same caps keeps this breaker (and the slots
    /// its requests in flight hold).
    pub config: CircuitBreakerConfig,
}

/// A slot of a [`Breaker`], given back when dropped.
pub type BreakerSlot = tokio::sync::OwnedSemaphorePermit;

impl Breaker {
    pub fn new(c: &CircuitBreakerConfig) -> Breaker {
        Breaker {
            slots: Arc::new(tokio::sync::Semaphore::new(
                c.max_requests.clamp(1, 1 << 20) as usize,
            )),
            max_pending: c.max_pending.clamp(0, 1 << 20) as u32,
            pending: AtomicU32::new(0),
            max_wait: c.max_wait.0,
            config: c.clone(),
        }
    }

    /// A slot, or `None`: over the caps.
    pub async fn enter(&self) -> Option<BreakerSlot> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.max_pending == 0 {
            return None;
        }
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        let _waiting = Waiting(&self.pending);
        if self.pending.fetch_add(1, Relaxed) >= self.max_pending {
            return None;
        }
        match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Some(p),
            _ => None,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        (self.config.max_requests.max(1) as usize).saturating_sub(self.slots.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(when: &[Condition]) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            when: Conditions::of(when),
            non_idempotent: false,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            per_try_timeout: None,
            timeout: None,
        }
    }

    #[test]
    fn retries_only_what_is_safe_to_replay() {
        let p = policy(&[
            Condition::ConnectFailure,
            Condition::Reset,
            Condition::Status(503),
        ]);
        let (get, post) = (http::Method::GET, http::Method::POST);
        assert!(p.allows(Failure::Reset, 1, &get, true));
        assert!(
            !p.allows(Failure::Reset, 1, &post, true),
            "a POST that was sent is never replayed"
        );
        assert!(
            p.allows(Failure::ConnectFailure, 1, &post, false),
            "nothing was sent"
        );
        assert!(
            !p.allows(Failure::Reset, 1, &get, false),
            "the body was not kept"
        );
        assert!(
            !p.allows(Failure::Timeout, 1, &get, true),
            "not a condition"
        );
        assert!(p.allows(Failure::Status(503), 2, &get, true));
        assert!(
            !p.allows(Failure::Status(503), 3, &get, true),
            "no tries left"
        );
        assert!(!p.allows(Failure::Status(502), 1, &get, true));
        let opted = RetryPolicy {
            non_idempotent: true,
            ..p.clone()
        };
        assert!(opted.allows(Failure::Reset, 1, &post, true));
        assert!(!opted.allows(Failure::Reset, 1, &post, false));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = policy(&[]);
        for n in 1..10 {
            let cap = Duration::from_millis(10 * (1 << (n - 1))).min(Duration::from_millis(50));
            for _ in 0..50 {
                assert!(p.backoff_before(n) <= cap);
            }
        }
        assert_eq!(RetryPolicy::NONE.backoff_before(1), Duration::ZERO);
    }

    #[test]
    fn any_5xx_is_every_server_error() {
        let c = Conditions::of(&[Condition::AnyServerError]);
        assert!(c.has(Failure::Status(500)) && c.has(Failure::Status(599)));
        assert!(!c.has(Failure::Status(404)) && !c.has(Failure::Reset));
        assert!(c.any_status());
        assert_eq!(Conditions::of(&[Condition::Status(503)]).names(), ["503"]);
    }

    #[test]
    fn the_budget_caps_retries_at_a_share_of_requests() {
        let b = Budget::new(20.0, 0);
        let t = Duration::from_secs(100);
        let mut granted = 0;
        for i in 0..100 {
            b.deposit_at(t + Duration::from_millis(i));
            if b.withdraw_at(t + Duration::from_millis(i)) {
                granted += 1;
            }
        }
        assert_eq!(granted, 20);
        // Half a window later the previous window counts half: 50 requests, 10 retries, spent...
        let later = t + Duration::from_secs(15);
        assert!(!b.withdraw_at(later));
        // ...until new requests come.
        for _ in 0..50 {
            b.deposit_at(later);
        }
        assert!(b.withdraw_at(later));
        // Two windows later nothing is left of it: no request, no retry (no floor).
        assert!(!b.withdraw_at(t + Duration::from_secs(30)));
        // A floor allows retries without traffic.
        let f = Budget::new(0.0, 1);
        let n = (0..20).filter(|_| f.withdraw_at(t)).count();
        assert_eq!(n, 10, "1 per second over a 10 s window");
    }

    fn stats(addrs: &[&str]) -> (Stats, Vec<SocketAddr>) {
        let s = Stats::default();
        let a: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        s.retain(a.clone());
        (s, a)
    }

    #[test]
    fn consecutive_failures_eject_for_growing_times_within_the_cap() {
        let (s, a) = stats(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let p = OutlierPolicy {
            consecutive: 3,
            when: Conditions::of(&[Condition::Reset, Condition::AnyServerError]),
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_percent: 50,
        };
        let fail = |i: usize, f| s.outcome(&a[i], None, Some(f), Some(&p), || 0);
        assert!(fail(0, Failure::Reset).is_none());
        assert!(fail(0, Failure::Reset).is_none());
        // A success in between starts the count again.
        assert!(s.outcome(&a[0], None, None, Some(&p), || 0).is_none());
        assert!(fail(0, Failure::Status(503)).is_none());
        assert!(fail(0, Failure::Status(503)).is_none());
        let why = fail(0, Failure::Status(503)).unwrap();
        assert!(
            why.contains("3 failures in a row") && why.contains("503"),
            "{why}"
        );
        let now = now();
        assert!(s.ejected(&a[0], now) && !s.admits(&a[0], None, now));
        let (left, times, _) = s.get(&a[0]).unwrap().ejection().unwrap();
        assert!(
            left > 29_000 && left <= 30_000 && times == 1,
            "{left} {times}"
        );
        // A timeout is not a condition here.
        for _ in 0..5 {
            assert!(fail(1, Failure::Timeout).is_none());
        }
        // Half of four may be out: one more, not a third.
        for _ in 0..3 {
            fail(2, Failure::Reset);
        }
        assert!(s.ejected(&a[2], now));
        for _ in 0..6 {
            assert!(fail(3, Failure::Reset).is_none());
        }
        assert!(!s.ejected(&a[3], now));
        // A passing active check brings one back; the next ejection lasts twice as long.
        assert!(s.check_passed(&a[0]));
        for _ in 0..3 {
            fail(0, Failure::Reset);
        }
        let (left, times, _) = s.get(&a[0]).unwrap().ejection().unwrap();
        assert!(left > 59_000 && times == 2, "{left} {times}");
    }

    #[test]
    fn at_least_one_target_may_be_ejected() {
        let (s, a) = stats(&["10.0.0.1:80"]);
        let p = OutlierPolicy {
            consecutive: 1,
            when: Conditions::of(&[Condition::ConnectFailure]),
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
            max_percent: 0,
        };
        assert!(s
            .outcome(&a[0], None, Some(Failure::ConnectFailure), Some(&p), || 0)
            .is_some());
    }

    #[test]
    fn least_loaded_prefers_fewer_requests_and_lower_latency() {
        let (s, a) = stats(&["10.0.0.1:80", "10.0.0.2:80"]);
        let c: Vec<(SocketAddr, usize)> = a.iter().map(|a| (*a, 1)).collect();
        let _busy: Vec<Attempt> = (0..3).filter_map(|_| s.begin(&a[0])).collect();
        let now = now();
        for _ in 0..20 {
            assert_eq!(s.least_loaded(&c, false, None, now), Some(a[1]));
        }
        drop(_busy);
        s.outcome(&a[0], Some(Duration::from_millis(200)), None, None, || 0);
        s.outcome(&a[1], Some(Duration::from_millis(5)), None, None, || 0);
        for _ in 0..20 {
            assert_eq!(s.least_loaded(&c, true, None, now), Some(a[1]));
        }
        assert_eq!(
            s.get(&a[0]).unwrap().in_flight(),
            0,
            "attempts give their count back"
        );
    }

    #[test]
    fn a_slow_start_ramps_the_share() {
        let (s, a) = stats(&["10.0.0.1:80"]);
        assert_eq!(
            s.get(&a[0])
                .unwrap()
                .ramp(Some(Duration::from_secs(10)), now()),
            1.0,
            "the first targets start at their full share"
        );
        s.retain([a[0], "10.0.0.2:80".parse().unwrap()]);
        let t = s.get(&"10.0.0.2:80".parse().unwrap()).unwrap();
        let start = t.since.load(Relaxed);
        let ramp = Some(Duration::from_secs(10));
        assert_eq!(t.ramp(ramp, start), SLOW_START_FLOOR);
        assert!((t.ramp(ramp, start + 5_000) - 0.5).abs() < 1e-9);
        assert_eq!(t.ramp(ramp, start + 20_000), 1.0);
        assert_eq!(t.ramp(None, start), 1.0);
    }

    #[tokio::test]
    async fn the_breaker_refuses_over_its_caps_and_waits_boundedly() {
        let b = Breaker::new(&CircuitBreakerConfig {
            max_requests: 1,
            max_pending: 1,
            max_wait: crate::config::units::HumanDuration::millis(50),
        });
        let first = b.enter().await.unwrap();
        assert_eq!(b.in_flight(), 1);
        // One may wait; it gets the slot when the first gives it back.
        let waiter = async { b.enter().await };
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(first);
        };
        let (got, ()) = tokio::join!(waiter, release);
        assert!(got.is_some());
        // Full, and the one waiting times out.
        assert!(b.enter().await.is_none());
        drop(got);
        assert_eq!(b.in_flight(), 0);
    }
}
