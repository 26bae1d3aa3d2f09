//! `upstreams:` → target pools ([`Upstream`]), keeping what the running ones have learned.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{config_relative, nonzero, positive};
use crate::config::raw::{Balance, Condition, Protocol, RetryConfig, UpstreamConfig};
use crate::config::sink::Scope;
use crate::resilience::{self, Conditions, OutlierPolicy, RetryPolicy};
use crate::snapshot::Snapshot;
use crate::upstream::{HashOn, Target, Upstream, UpstreamTls};

/// Every upstream that compiles (`at` is the scope of `upstreams:`). A reload hands each the upstream
/// of the same name in `previous`, whose target health it keeps when its checks are unchanged.
pub(super) fn compile(
    ups: &BTreeMap<String, UpstreamConfig>,
    at: &Scope,
    previous: Option<&Snapshot>,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut out = BTreeMap::new();
    for (name, u) in ups {
        let old = previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u);
        if let Some(up) = upstream(name, u, &at.at(name), old) {
            out.insert(name.clone(), Arc::new(up));
        }
    }
    out
}

/// The largest target weight. Pingora's balancers size their tables by weight: the weighted round robin
/// keeps an entry per unit of weight, consistent hashing 160 ring points per unit (in `u32`, which a
/// weight of 2^27 wraps to an empty ring). A thousand is finer than any share needs.
const MAX_WEIGHT: i64 = 1000;

fn upstream(
    name: &str,
    u: &UpstreamConfig,
    at: &Scope,
    old: Option<&Upstream>,
) -> Option<Upstream> {
    let before = at.error_count();
    let mut targets = Vec::new();
    if u.targets.is_empty() {
        at.at("targets")
            .error("an upstream needs at least one target");
    }
    for (i, t) in u.targets.iter().enumerate() {
        let here = at.at("targets").idx(i);
        if t.weight < 1 {
            here.at("weight")
                .error(format!("weight must be at least 1, got {}", t.weight));
        } else if t.weight > MAX_WEIGHT {
            here.at("weight").error(format!(
                "weight must be at most {MAX_WEIGHT}, got {} (weights are relative: 1 against \
                 {MAX_WEIGHT} already splits traffic 1:{MAX_WEIGHT})",
                t.weight
            ));
        }
        let addr = here.at("addr");
        let weight = t.weight.clamp(1, MAX_WEIGHT) as usize;
        match Target::parse(&t.addr, weight, &addr.diagnostic("")) {
            Ok(t) => targets.push(t),
            Err(e) => addr.error(e),
        }
    }
    nonzero(&at.at("dns_refresh"), u.dns_refresh.0);
    let upstream_tls = u.tls.as_ref().map(|t| UpstreamTls {
        sni: t.sni.clone(),
        ca: t.ca.as_ref().and_then(|ca| {
            let here = at.at("tls").at("ca");
            crate::tls::load_ca(&config_relative(&here, ca))
                .map_err(|e| here.error(e))
                .ok()
        }),
    });
    if let Some(sni) = u.tls.as_ref().and_then(|t| t.sni.as_deref()) {
        if rustls_pki_types::ServerName::try_from(sni).is_err() {
            at.at("tls")
                .at("sni")
                .error(format!("`{sni}` is not a DNS name or IP address"));
        }
    }
    let hash_on = match (&u.hash_on, u.balance) {
        (Some(h), Balance::ConsistentHash) => match HashOn::parse(h) {
            Ok(h) => Some(h),
            Err(e) => {
                at.at("hash_on").error(e);
                None
            }
        },
        (None, Balance::ConsistentHash) => {
            at.error("`balance: consistent_hash` needs `hash_on` (client_ip, header:NAME or cookie:NAME)");
            None
        }
        (Some(_), _) => {
            at.at("hash_on")
                .warning("`hash_on` has no effect unless `balance: consistent_hash`");
            None
        }
        (None, _) => None,
    };
    if let Some(hc) = &u.health_check {
        let hb = at.at("health_check");
        let h2 = matches!(u.protocol, Protocol::H2 | Protocol::H2c)
            || (u.protocol == Protocol::Auto && u.tls.is_some());
        if hc.kind == crate::config::raw::CheckKind::Grpc && !h2 {
            hb.at("kind").error(
                "a `grpc` check speaks HTTP/2: set the upstream's `protocol` to `h2c` (in clear) or `h2` (TLS)",
            );
        }
        if !hc.path.starts_with('/') {
            hb.at("path").error("must start with '/'");
        }
        positive(&hb.at("healthy"), hc.healthy);
        positive(&hb.at("unhealthy"), hc.unhealthy);
        nonzero(&hb.at("interval"), hc.interval.0);
        nonzero(&hb.at("timeout"), hc.timeout.0);
    }
    let tb = at.at("timeouts");
    nonzero(&tb.at("connect"), u.timeouts.connect.0);
    nonzero(&tb.at("read"), u.timeouts.read.0);
    nonzero(&tb.at("write"), u.timeouts.write.0);
    match (u.protocol, u.tls.is_some()) {
        (Protocol::H2, false) => at.at("protocol").error(
            "`h2` is negotiated over TLS: add `tls`, or use `h2c` for HTTP/2 in clear",
        ),
        (Protocol::H2c, true) => at
            .at("protocol")
            .error("`h2c` is HTTP/2 in clear: with `tls`, use `h2` (or `auto`)"),
        (Protocol::Auto, false) => at.at("protocol").warning(
            "without `tls` there is nothing to negotiate: `auto` speaks HTTP/1.1 (use `h2c` for HTTP/2 in clear)",
        ),
        _ => {}
    }
    positive(
        &at.at("h2").at("max_concurrent_streams"),
        u.h2.max_concurrent_streams,
    );
    if let Some(p) = &u.h2.ping_interval {
        nonzero(&at.at("h2").at("ping_interval"), p.0);
    }
    let resilience = resilience_of(u, at);
    if at.error_count() > before {
        return None;
    }
    Some(Upstream::build(
        name,
        u,
        targets,
        hash_on,
        upstream_tls,
        resilience,
        old,
    ))
}

/// The most tries a policy may make (Pingora stops at 16 whatever we say, `ServerConf::max_retries`).
const MAX_ATTEMPTS: i64 = 10;

/// What `retry:` means where it leaves a field out, on an upstream without one of its own.
pub(super) const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 2,
    when: Conditions::CONNECT_AND_RESET,
    non_idempotent: false,
    backoff: std::time::Duration::from_millis(25),
    max_backoff: std::time::Duration::from_millis(250),
    per_try_timeout: None,
    timeout: None,
};

/// `retry`, `outlier_detection`, `circuit_breaker` and `slow_start` of an upstream, checked.
fn resilience_of(u: &UpstreamConfig, at: &Scope) -> resilience::Settings {
    let mut s = resilience::Settings::default();
    match (&u.retry, u.retries) {
        (Some(_), n) if n > 0 => {
            at.at("retries").error(
                "`retries` is shorthand for `retry: { attempts: N + 1, when: [connect_failure] }`: set one of the two",
            );
        }
        (None, n) if n > 0 => {
            if i64::from(n) >= MAX_ATTEMPTS {
                at.at("retries")
                    .error(format!("at most {} retries", MAX_ATTEMPTS - 1));
            }
            s.retry = RetryPolicy {
                attempts: n.saturating_add(1).min(MAX_ATTEMPTS as u32),
                when: Conditions::of(&[Condition::ConnectFailure]),
                ..RetryPolicy::NONE
            };
        }
        _ => {}
    }
    if let Some(r) = &u.retry {
        let here = at.at("retry");
        s.retry = retry_policy(&DEFAULT_RETRY, r, &here);
        if let Some(b) = &r.budget {
            let bb = here.at("budget");
            if !(0.0..=100.0).contains(&b.percent) || b.percent.is_nan() {
                bb.at("percent")
                    .error(format!("must be from 0 to 100, got {}", b.percent));
            }
            if b.min_per_second < 0 {
                bb.at("min_per_second")
                    .error(format!("must be at least 0, got {}", b.min_per_second));
            }
            s.budget = Some((b.percent, b.min_per_second.clamp(0, 1 << 20) as u32));
        }
    }
    if let Some(o) = &u.outlier_detection {
        let ob = at.at("outlier_detection");
        positive(&ob.at("consecutive_failures"), o.consecutive_failures);
        nonzero(&ob.at("base_ejection"), o.base_ejection.0);
        if o.max_ejection.0 < o.base_ejection.0 {
            ob.at("max_ejection").error(format!(
                "must be at least `base_ejection` ({})",
                o.base_ejection
            ));
        }
        if !(0..=100).contains(&o.max_ejected_percent) {
            ob.at("max_ejected_percent").error(format!(
                "must be from 0 to 100, got {}",
                o.max_ejected_percent
            ));
        }
        if o.when.is_empty() {
            ob.at("when")
                .error("lists no failure: nothing would eject a target");
        }
        s.outlier = Some(OutlierPolicy::of(o));
    }
    if let Some(c) = &u.circuit_breaker {
        let cb = at.at("circuit_breaker");
        positive(&cb.at("max_requests"), c.max_requests);
        if c.max_requests > 1 << 20 || c.max_pending > 1 << 20 {
            cb.error("`max_requests` and `max_pending` are at most 1048576");
        }
        if c.max_pending < 0 {
            cb.at("max_pending")
                .error(format!("must be at least 0, got {}", c.max_pending));
        }
        if c.max_pending > 0 {
            nonzero(&cb.at("max_wait"), c.max_wait.0);
        }
        s.breaker = Some(c.clone());
    }
    if let Some(ss) = &u.slow_start {
        nonzero(&at.at("slow_start"), ss.0);
        if u.balance == Balance::ConsistentHash {
            at.at("slow_start").warning(
                "with `consistent_hash` a slow start moves the keys of a returning target to others until it ends",
            );
        }
        s.slow_start = Some(ss.0);
    }
    s
}

/// A retry policy: `r`'s fields over `base`'s (an upstream's `retry` over the defaults, a route's
/// over its upstream's), checked at `at`.
pub(super) fn retry_policy(base: &RetryPolicy, r: &RetryConfig, at: &Scope) -> RetryPolicy {
    let mut p = base.clone();
    if let Some(n) = r.attempts {
        if !(1..=MAX_ATTEMPTS).contains(&n) {
            at.at("attempts").error(format!(
                "must be from 1 (no retry) to {MAX_ATTEMPTS}, got {n}"
            ));
        }
        p.attempts = n.clamp(1, MAX_ATTEMPTS) as u32;
    }
    if let Some(w) = &r.when {
        p.when = Conditions::of(w);
    }
    if let Some(b) = r.non_idempotent {
        p.non_idempotent = b;
    }
    if let Some(b) = &r.backoff {
        p.backoff = b.0;
    }
    if let Some(b) = &r.max_backoff {
        p.max_backoff = b.0;
    }
    if p.max_backoff < p.backoff {
        at.at(if r.max_backoff.is_some() {
            "max_backoff"
        } else {
            "backoff"
        })
        .error(format!(
            "`max_backoff` ({:?}) is shorter than `backoff` ({:?})",
            p.max_backoff, p.backoff
        ));
    }
    if let Some(t) = &r.per_try_timeout {
        nonzero(&at.at("per_try_timeout"), t.0);
        p.per_try_timeout = Some(t.0);
    }
    if let Some(t) = &r.timeout {
        nonzero(&at.at("timeout"), t.0);
        p.timeout = Some(t.0);
        if let Some(pt) = p.per_try_timeout.filter(|pt| *pt > t.0) {
            at.at("per_try_timeout").warning(format!(
                "longer than `timeout` ({:?}): a try is cut at {:?} anyway",
                pt, t.0
            ));
        }
    }
    if p.attempts > 1 && p.when == Conditions::default() {
        at.at("when")
            .warning("lists no condition: nothing is retried");
    }
    p
}
