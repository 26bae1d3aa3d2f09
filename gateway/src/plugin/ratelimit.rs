//! Rate limits: named policies under `rate_limits`, enforced by the `rate_limit` plugin, counted in
//! this process (pingora-limits) or in Redis, shared by every gateway instance.
//!
//! A window policy (`requests` per `per`, plus `burst`) is a sliding window: the count of the current
//! fixed window plus the previous one's, weighted by how much of it still overlaps the last `per`. Both
//! stores use exactly this arithmetic, so a policy means the same whether it is local or shared.
//! - `store: local` counts in a pingora-limits `Rate` (a count-min sketch with a fixed memory size per
//!   policy). Each request is counted with one atomic increment that returns its own count, so
//!   concurrent requests can never all see room for themselves; a hash collision can only make a count
//!   higher than the truth. It may refuse slightly early, never late.
//! - `store: redis` runs one Lua script per request that checks every Redis policy of the route and,
//!   only if all pass, counts in all of them, atomically, with the Redis server's clock. Any number of
//!   gateway instances then enforce one limit. Each call has a deadline (`redis.timeout`, default 50 ms);
//!   after a failure Redis is not asked again for `redis.retry_interval`, so no request waits on a dead
//!   server. What happens then is the policy's explicit `on_error`: `fail_open` (proxy, log, count) or
//!   `fail_closed` (503).
//!
//! A concurrency policy (`concurrency: N`) caps requests in flight per key with a pingora-limits
//! `Inflight`; the slot is held until the request ends.
//!
//! Several policies on a route must all pass, and a refusal by one takes nothing from the others: local
//! counts already taken are given back, and the Redis script writes nothing unless every check passes.
//!
//! Keys: `client_ip` (after `trusted_proxies`, so a spoofed `X-Forwarded-For` changes nothing),
//! `jwt_claim:NAME`, `api_key` (the consumer id), `header:NAME`, or `route` (the route as a whole). A
//! request without the key's value (no token, no header) is counted by its client IP instead.
//! - An IPv6 client is counted by its network (`ipv6_prefix`, default /64), not its address: one host
//!   usually has a whole /64 to pick addresses from, so counting per address would let it reset its
//!   limit at will. IPv4 (and IPv4-mapped IPv6) is counted per address.
//! - A value the client chooses (a header, a claim) longer than [`MAX_KEY_VALUE`] bytes is counted
//!   under its SHA-256, so a client cannot make the gateway keep (or Redis store) keys of any size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_limits::inflight::Inflight;
use pingora_limits::rate::Rate;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    BuildContext, BuildError, Decision, ExplainRequest, Phases, Plugin, PluginState, RequestView,
    Verdict,
};
use crate::config::units::HumanDuration;
use crate::error::GatewayError;

/// `redis:` as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// Deadline of one rate-limit call.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Multiplexed connections to keep.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// After a failure, how long Redis is considered down (calls fail at once) before it is tried again.
    #[serde(default = "default_retry")]
    pub retry_interval: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::millis(50)
}
fn default_pool() -> usize {
    4
}
fn default_retry() -> HumanDuration {
    HumanDuration::secs(1)
}

#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Local,
    Redis,
}

#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Let the request through (and log and count the failure).
    FailOpen,
    /// Answer 503.
    FailClosed,
}

/// `rate_limits.NAME` as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Requests allowed per `per`.
    #[serde(default)]
    pub requests: Option<u64>,
    /// The window: `1s`, `1m`, `1h`...
    #[serde(default)]
    pub per: Option<HumanDuration>,
    /// Extra requests allowed in a window on top of `requests`.
    #[serde(default)]
    pub burst: u64,
    /// Or: at most this many requests in flight per key.
    #[serde(default)]
    pub concurrency: Option<u64>,
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default)]
    pub store: StoreKind,
    /// Required with `store: redis`.
    #[serde(default)]
    pub on_error: Option<FailMode>,
    /// The IPv6 network (prefix length, 1..=128) a client address is counted by.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: i64,
}

fn default_key() -> String {
    "client_ip".into()
}
fn default_ipv6_prefix() -> i64 {
    64
}

/// Longest client-chosen key value (header, claim) used as it is; longer ones are hashed.
pub const MAX_KEY_VALUE: usize = 256;

/// `kind:value`, or `kind-sha256:HEX` for a value longer than [`MAX_KEY_VALUE`]. The two prefixes
/// differ, so a short value can never land in the bucket of a hashed one.
fn client_value(kind: &str, raw: &[u8]) -> String {
    if raw.len() > MAX_KEY_VALUE {
        format!("{kind}-sha256:{}", hex::encode(Sha256::digest(raw)))
    } else {
        // Per request on the common path: one allocation, no formatting machinery.
        let value = String::from_utf8_lossy(raw);
        let mut key = String::with_capacity(kind.len() + 1 + value.len());
        key.push_str(kind);
        key.push(':');
        key.push_str(&value);
        key
    }
}

/// The key of a client address: IPv4 per address, IPv6 per network of `ipv6_prefix` bits. An
/// IPv4-mapped IPv6 address (a dual-stack listener) is the IPv4 client it stands for.
fn ip_value(ip: std::net::IpAddr, ipv6_prefix: u8) -> String {
    match ip.to_canonical() {
        // The default key, on every request: written digit by digit (`AddrBuf`), not through `Display`.
        v4 @ std::net::IpAddr::V4(_) => {
            let mut buf = crate::headers::AddrBuf::new();
            ["ip:", std::str::from_utf8(buf.ip(v4)).unwrap_or_default()].concat()
        }
        std::net::IpAddr::V6(a) => match ipnet::Ipv6Net::new(a, ipv6_prefix) {
            Ok(net) if ipv6_prefix < 128 => format!("ip:{}", net.trunc()),
            _ => format!("ip:{a}"),
        },
    }
}

/// What a policy counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    ClientIp,
    JwtClaim(String),
    ApiKey,
    Header(HeaderName),
    Route,
}

impl KeySource {
    pub fn parse(s: &str) -> Result<KeySource, String> {
        match s {
            "client_ip" => return Ok(KeySource::ClientIp),
            "api_key" => return Ok(KeySource::ApiKey),
            "route" => return Ok(KeySource::Route),
            _ => {}
        }
        if let Some(c) = s.strip_prefix("jwt_claim:").filter(|c| !c.is_empty()) {
            return Ok(KeySource::JwtClaim(c.to_string()));
        }
        if let Some(h) = s.strip_prefix("header:") {
            return HeaderName::from_bytes(h.trim().as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("`{h}` is not a valid header name"));
        }
        Err(format!(
            "`{s}` is not a key: use client_ip, jwt_claim:NAME, api_key, header:NAME or route"
        ))
    }

    /// The value to count this request under. The route and the consumer id come from the config;
    /// headers and claims from the client, so those are bounded by [`client_value`].
    fn value(&self, req: &RequestView<'_>, state: &PluginState, ipv6_prefix: u8) -> String {
        let found =
            match self {
                KeySource::ClientIp => None,
                KeySource::Route => return format!("route:{}", req.route),
                KeySource::ApiKey => state
                    .identity
                    .consumer
                    .as_ref()
                    .map(|c| format!("consumer:{c}")),
                KeySource::JwtClaim(c) => state
                    .identity
                    .claims
                    .as_ref()
                    .and_then(|m| m.get(c))
                    .map(|v| match v {
                        serde_json::Value::String(s) => client_value("claim", s.as_bytes()),
                        other => client_value("claim", other.to_string().as_bytes()),
                    }),
                KeySource::Header(h) => req
                    .req
                    .headers
                    .get(h)
                    .map(|v| client_value("header", v.as_bytes())),
            };
        found.unwrap_or_else(|| ip_value(req.client_ip, ipv6_prefix))
    }
}

enum Kind {
    Window {
        /// `requests + burst`.
        limit: u64,
        per: Duration,
        /// For `store: local`. Shared with the same policy of the config a reload replaced.
        local: Option<Arc<Rate>>,
    },
    Concurrency {
        max: u64,
        /// Shared with the same policy of the config a reload replaced.
        inflight: Arc<Inflight>,
    },
}

/// A compiled policy.
pub struct Policy {
    pub name: String,
    kind: Kind,
    key: KeySource,
    /// IPv6 clients are counted per network of this many bits.
    ipv6_prefix: u8,
    store: StoreKind,
    on_error: FailMode,
    /// `"name";q=N;w=S` for `RateLimit-Policy`.
    policy_header: String,
    /// Its metric series, bound when the snapshot is installed (compiling registers none).
    pub series: crate::metrics::PolicySeries,
}

/// Slots of the count-min sketch of a local window policy: one hash (so an increment returns an exact
/// count for the key, never a shared minimum), 64 Ki counters per window half (1 MiB per policy).
const LOCAL_SLOTS: usize = 1 << 16;

impl Policy {
    /// Compile; errors are `(field, message)`. `previous` is the policy of this name in the config being
    /// replaced (a reload): when it counts the same thing (same key, same window, or both concurrency
    /// caps) its counters are kept, so a reload neither hands out fresh quota nor forgets requests in
    /// flight. A changed limit applies to the counts so far.
    pub fn build(
        name: &str,
        cfg: &PolicyConfig,
        redis: bool,
        previous: Option<&Policy>,
    ) -> Result<Policy, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let key = KeySource::parse(&cfg.key)
            .map_err(|e| errs.push(("key".to_string(), e)))
            .ok();
        let previous = previous.filter(|p| Some(&p.key) == key.as_ref());
        let ipv6_prefix = match u8::try_from(cfg.ipv6_prefix) {
            Ok(n @ 1..=128) => n,
            _ => {
                errs.push((
                    "ipv6_prefix".into(),
                    format!(
                        "must be a prefix length from 1 to 128 (the IPv6 network a client is counted by), got {}",
                        cfg.ipv6_prefix
                    ),
                ));
                64
            }
        };
        let kind = match (cfg.requests, cfg.per, cfg.concurrency) {
            (Some(requests), Some(per), None) => {
                if requests == 0 {
                    errs.push(("requests".into(), "must be at least 1".into()));
                }
                if per.0 < Duration::from_secs(1) {
                    errs.push(("per".into(), "must be at least 1s".into()));
                }
                let kept = previous.and_then(|p| match &p.kind {
                    Kind::Window {
                        per: old,
                        local: Some(rate),
                        ..
                    } if *old == per.0 => Some(rate.clone()),
                    _ => None,
                });
                let local = (cfg.store == StoreKind::Local).then(|| {
                    kept.unwrap_or_else(|| {
                        Arc::new(Rate::new_with_estimator_config(per.0, 1, LOCAL_SLOTS))
                    })
                });
                Some(Kind::Window {
                    limit: requests + cfg.burst,
                    per: per.0,
                    local,
                })
            }
            (None, None, Some(max)) => {
                if max == 0 {
                    errs.push(("concurrency".into(), "must be at least 1".into()));
                }
                if cfg.store == StoreKind::Redis {
                    errs.push((
                        "store".into(),
                        "a concurrency cap is counted locally; remove `store: redis`".into(),
                    ));
                }
                let kept = previous.and_then(|p| match &p.kind {
                    Kind::Concurrency { inflight, .. } => Some(inflight.clone()),
                    _ => None,
                });
                Some(Kind::Concurrency {
                    max,
                    inflight: kept.unwrap_or_else(|| Arc::new(Inflight::new())),
                })
            }
            _ => {
                errs.push((String::new(), "give `requests` and `per` (a rate), or `concurrency` (a cap on requests in flight)".into()));
                None
            }
        };
        let on_error = match (cfg.store, cfg.on_error) {
            (StoreKind::Redis, None) => {
                errs.push((
                    "on_error".into(),
                    "say what happens when Redis fails: `fail_open` or `fail_closed`".into(),
                ));
                FailMode::FailOpen
            }
            (_, m) => m.unwrap_or(FailMode::FailOpen),
        };
        if cfg.store == StoreKind::Redis && !redis {
            errs.push((
                "store".into(),
                "`store: redis` needs a top-level `redis: { url: ... }`".into(),
            ));
        }
        let (Some(key), Some(kind)) = (key, kind) else {
            return Err(errs);
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let policy_header = match &kind {
            Kind::Window { limit, per, .. } => format!("\"{name}\";q={limit};w={}", per.as_secs()),
            Kind::Concurrency { max, .. } => format!("\"{name}\";q={max}"),
        };
        Ok(Policy {
            name: name.to_string(),
            kind,
            key,
            ipv6_prefix,
            store: cfg.store,
            on_error,
            policy_header,
            series: Default::default(),
        })
    }
}

/// The state of one policy for this request, for the `RateLimit` headers.
#[derive(Clone)]
pub struct Quota {
    pub policy: Arc<Policy>,
    pub remaining: u64,
    pub reset_secs: u64,
}

/// The sliding-window arithmetic, shared by both stores. `prev` and `curr` are the counts of the previous
/// and current fixed windows, `curr` *including* this request; `frac` is how far into the current window
/// we are (0..1). Returns whether it fits, how many remain after it, seconds until the current window
/// ends, and (when it does not fit) seconds until it would.
pub fn window(prev: u64, curr: u64, frac: f64, limit: u64, per: Duration) -> (bool, u64, u64, u64) {
    let w = per.as_secs_f64();
    let est = prev as f64 * (1.0 - frac) + curr as f64;
    let reset = (w * (1.0 - frac)).ceil().max(1.0) as u64;
    if est <= limit as f64 {
        let remaining = (limit as f64 - est).floor().max(0.0) as u64;
        return (true, remaining, reset, 0);
    }
    let before = curr.saturating_sub(1) as f64;
    let room = limit as f64 - 1.0;
    let wait = if before <= room && prev > 0 {
        // Room comes back within this window as the previous one slides out.
        w * ((1.0 - frac) - (room - before) / prev as f64)
    } else if before > 0.0 {
        // Not before the next window, as this one's count slides out.
        w * (1.0 - frac) + w * (1.0 - room / before).max(0.0)
    } else {
        w * (1.0 - frac)
    };
    (false, 0, reset, wait.ceil().max(1.0) as u64)
}

/// The shared store: a few multiplexed Redis connections, created on first use, with a deadline per call
/// and a short "down" period after a failure.
pub struct RedisStore {
    client: redis::Client,
    conns: OnceLock<Vec<redis::aio::ConnectionManager>>,
    next: AtomicU64,
    pool_size: usize,
    timeout: Duration,
    retry_interval: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is considered down.
    down_until: AtomicU64,
    script: redis::Script,
}

/// Check every key (`KEYS[i]`, window `ARGV[2i-1]` ms, limit `ARGV[2i]`) and count in all of them only if
/// all fit. Returns `{1, prev1, curr1, frac1, ...}` or `{0, i, prev, curr, frac}` for the first that
/// does not fit (`curr` there excludes the refused request).
const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {1}
local cur = {}
for i = 1, #KEYS do
  local w = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  local idx = math.floor(now / w)
  local frac = now - idx * w
  local ck = KEYS[i] .. ':' .. idx
  local curr = tonumber(redis.call('GET', ck) or '0')
  local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (idx - 1)) or '0')
  if prev * (w - frac) / w + curr + 1 > limit then
    return {0, i, prev, curr, frac}
  end
  cur[i] = ck
  out[#out + 1] = prev
  out[#out + 1] = curr + 1
  out[#out + 1] = frac
end
for i = 1, #KEYS do
  redis.call('INCR', cur[i])
  redis.call('PEXPIRE', cur[i], tonumber(ARGV[2 * i - 1]) * 2 + 1000)
end
return out
"#;

impl RedisStore {
    pub fn build(cfg: &RedisConfig) -> Result<RedisStore, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| errs.push(("url".into(), format!("not a Redis URL: {e}"))))
            .ok();
        if cfg.timeout.0.is_zero() {
            errs.push(("timeout".into(), "must be greater than zero".into()));
        }
        if cfg.pool_size == 0 {
            errs.push(("pool_size".into(), "must be at least 1".into()));
        }
        match client {
            Some(client) if errs.is_empty() => Ok(RedisStore {
                client,
                conns: OnceLock::new(),
                next: AtomicU64::new(0),
                pool_size: cfg.pool_size,
                timeout: cfg.timeout.0,
                retry_interval: cfg.retry_interval.0,
                epoch: Instant::now(),
                down_until: AtomicU64::new(0),
                script: redis::Script::new(SCRIPT),
            }),
            _ => Err(errs),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        if self.conns.get().is_none() {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(self.retry_interval);
            let mut v = Vec::with_capacity(self.pool_size);
            for _ in 0..self.pool_size {
                v.push(
                    redis::aio::ConnectionManager::new_lazy_with_config(
                        self.client.clone(),
                        config.clone(),
                    )
                    .map_err(|e| e.to_string())?,
                );
            }
            let _ = self.conns.set(v);
        }
        let conns = self.conns.get().ok_or("no connections")?;
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % conns.len();
        Ok(conns[i].clone())
    }

    /// Run the script over `(key, window, limit)`. `Ok(Ok(counts))`: all fit, `(prev, curr, frac)` each;
    /// `Ok(Err((i, prev, curr, frac)))`: the i-th (0-based) does not fit; `Err`: Redis failed.
    #[allow(clippy::type_complexity)]
    pub async fn check(
        &self,
        items: &[(String, Duration, u64)],
    ) -> Result<Result<Vec<(u64, u64, f64)>, (usize, u64, u64, f64)>, String> {
        if self.now_ms() < self.down_until.load(Ordering::Relaxed) {
            return Err("Redis is marked down after a recent failure".into());
        }
        let result = self.call(items).await;
        if result.is_err() {
            self.down_until.store(
                self.now_ms() + self.retry_interval.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        let v = result?;
        let window_ms = |i: usize| items[i].1.as_millis().max(1) as f64;
        match v.first() {
            Some(1) => Ok(Ok(v[1..]
                .chunks(3)
                .enumerate()
                .map(|(i, c)| {
                    (
                        c[0].max(0) as u64,
                        c[1].max(0) as u64,
                        c[2] as f64 / window_ms(i),
                    )
                })
                .collect())),
            Some(0) if v.len() == 5 => {
                let i = (v[1].max(1) - 1) as usize;
                Ok(Err((
                    i,
                    v[2].max(0) as u64,
                    v[3].max(0) as u64,
                    v[4] as f64 / window_ms(i),
                )))
            }
            _ => Err(format!(
                "unexpected answer from the rate-limit script: {v:?}"
            )),
        }
    }

    async fn call(&self, items: &[(String, Duration, u64)]) -> Result<Vec<i64>, String> {
        let mut conn = self.connection()?;
        let mut inv = self.script.prepare_invoke();
        for (key, per, limit) in items {
            inv.key(key).arg(per.as_millis() as u64).arg(*limit);
        }
        match tokio::time::timeout(self.timeout, inv.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// The `rate_limit` plugin's config: a policy name, a list, or `{ policies: [...], legacy_headers }`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RateLimitConfig {
    One(String),
    Many(Vec<String>),
    Full(FullConfig),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    pub policies: Vec<String>,
    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset` (the most restrictive policy).
    #[serde(default)]
    pub legacy_headers: bool,
}

pub struct RateLimit {
    policies: Vec<Arc<Policy>>,
    redis: Option<Arc<RedisStore>>,
    legacy: bool,
    /// `RateLimit-Policy` of every policy, joined when built.
    policy_value: Option<HeaderValue>,
    /// `RateLimit` when there is no quota state (a refusal): every policy with nothing remaining.
    refused_value: Option<HeaderValue>,
}

/// This request's quotas and concurrency slots, shared by the chain's `rate_limit`s (each picks its own
/// policies' quotas). Dropping it, when the request ends, gives the slots back.
#[derive(Default)]
struct Taken {
    quotas: Vec<Quota>,
    held: Vec<pingora_limits::inflight::Guard>,
}

impl RateLimit {
    pub fn build(cfg: RateLimitConfig, ctx: &BuildContext) -> Result<RateLimit, BuildError> {
        let (names, legacy) = match cfg {
            RateLimitConfig::One(n) => (vec![n], false),
            RateLimitConfig::Many(v) => (v, false),
            RateLimitConfig::Full(f) => (f.policies, f.legacy_headers),
        };
        if names.is_empty() {
            return Err(BuildError::new("name at least one policy"));
        }
        let mut policies = Vec::new();
        let mut broken = false;
        for n in &names {
            match ctx.rate_limits.get(n) {
                Some(p) => policies.push(p.clone()),
                // Reported where it is defined; the other names are still checked.
                None if ctx.failed.contains(n) => broken = true,
                None => {
                    let known: Vec<&str> = ctx.rate_limits.keys().map(String::as_str).collect();
                    return Err(BuildError::new(format!(
                        "unknown rate-limit policy `{n}` (defined under rate_limits: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        }
        if broken {
            return Err(BuildError::already_reported());
        }
        let redis = if policies.iter().any(|p| p.store == StoreKind::Redis) {
            ctx.redis.clone()
        } else {
            None
        };
        let join = |v: Vec<String>| HeaderValue::from_str(&v.join(", ")).ok();
        Ok(RateLimit {
            policy_value: join(policies.iter().map(|p| p.policy_header.clone()).collect()),
            refused_value: join(
                policies
                    .iter()
                    .map(|p| format!("\"{}\";r=0", p.name))
                    .collect(),
            ),
            policies,
            redis,
            legacy,
        })
    }

    fn refused(policy: &Policy, retry_after: u64) -> GatewayError {
        policy.series.rejected();
        GatewayError::new(
            429,
            "rate_limited",
            format!(
                "rate limit `{}` exceeded; retry in {retry_after} s",
                policy.name
            ),
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after))
    }
}

/// Local window counts taken so far, to give back if a later policy refuses.
struct GiveBack<'a> {
    /// Inline (no allocation) for the usual one or two policies: it lives only for the request phase.
    local: smallvec::SmallVec<[(&'a Rate, String); 2]>,
}

impl Drop for GiveBack<'_> {
    fn drop(&mut self) {
        for (rate, key) in &self.local {
            rate.observe(key, -1);
        }
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::RESPONSE
    }

    /// The policies and the key each would count this request under, without counting it (whether
    /// it is within its quota depends on traffic that an offline answer cannot know).
    fn explain(&self, req: &ExplainRequest<'_>) -> Option<Verdict> {
        let view = RequestView {
            req: req.req,
            client_ip: req.client_ip,
            path: req.path,
            route: req.route,
            request_id: "explain",
        };
        let mut state = PluginState::default();
        state.identity.claims = req.claims.map(|c| Arc::new(c.clone()));
        state.identity.consumer = req.consumer.map(str::to_string);
        let each: Vec<String> = self
            .policies
            .iter()
            .map(|p| {
                let key = p.key.value(&view, &state, p.ipv6_prefix);
                let what = match &p.kind {
                    Kind::Window { limit, per, .. } => {
                        format!("{limit} per {}s", per.as_secs())
                    }
                    Kind::Concurrency { max, .. } => format!("{max} in flight"),
                };
                let store = match p.store {
                    StoreKind::Local => "local",
                    StoreKind::Redis => "redis",
                };
                format!("{} ({what}, {store}) by key {key}", p.name)
            })
            .collect();
        Some(Verdict::pass(format!(
            "counts {}; 429 once over",
            each.join(", ")
        )))
    }

    async fn request(&self, req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        let mut taken = GiveBack {
            local: smallvec::SmallVec::new(),
        };
        let mut guards = Vec::new();
        let mut quotas = Vec::with_capacity(self.policies.len());
        // Redis window policies: (policy, key, window, limit), checked together in one call below.
        let mut shared: Vec<(&Arc<Policy>, String, Duration, u64)> = Vec::new();
        for p in &self.policies {
            let key = p.key.value(req, state, p.ipv6_prefix);
            match &p.kind {
                Kind::Window {
                    limit,
                    per,
                    local: Some(rate),
                    ..
                } => {
                    let curr = rate.observe(&key, 1).max(0) as u64;
                    let (prev, frac) = rate.rate_with(&key, |c| {
                        (c.prev_samples.max(0) as u64, c.current_interval_fraction)
                    });
                    // Counted: given back if this or a later policy refuses.
                    taken.local.push((rate, key));
                    let (ok, remaining, reset, retry) = window(prev, curr, frac, *limit, *per);
                    if !ok {
                        return Decision::Deny(Self::refused(p, retry));
                    }
                    quotas.push(Quota {
                        policy: p.clone(),
                        remaining,
                        reset_secs: reset,
                    });
                }
                Kind::Window {
                    limit,
                    per,
                    local: None,
                } => shared.push((p, format!("tollgate:rl:{}:{key}", p.name), *per, *limit)),
                Kind::Concurrency { max, inflight } => {
                    let (guard, n) = inflight.incr(&key, 1);
                    if n.max(0) as u64 > *max {
                        return Decision::Deny(Self::refused(p, 1));
                    }
                    guards.push(guard);
                    quotas.push(Quota {
                        policy: p.clone(),
                        remaining: max - n.max(0) as u64,
                        reset_secs: 0,
                    });
                }
            }
        }
        if let (false, Some(store)) = (shared.is_empty(), &self.redis) {
            let items: Vec<(String, Duration, u64)> = shared
                .iter()
                .map(|(_, k, per, limit)| (k.clone(), *per, *limit))
                .collect();
            match store.check(&items).await {
                Ok(Ok(counts)) => {
                    for ((p, _, per, limit), (prev, curr, frac)) in shared.iter().zip(counts) {
                        let (_, remaining, reset, _) = window(prev, curr, frac, *limit, *per);
                        quotas.push(Quota {
                            policy: (*p).clone(),
                            remaining,
                            reset_secs: reset,
                        });
                    }
                }
                Ok(Err((j, prev, curr, frac))) => {
                    let (p, _, per, limit) = &shared[j];
                    let (_, _, _, retry) = window(prev, curr + 1, frac, *limit, *per);
                    return Decision::Deny(Self::refused(p, retry));
                }
                Err(e) => {
                    for (p, ..) in &shared {
                        p.series.store_error();
                    }
                    let closed = shared
                        .iter()
                        .find(|(p, ..)| p.on_error == FailMode::FailClosed);
                    if let Some((p, ..)) = closed {
                        log::warn!(
                            "request {}: rate limit `{}`: Redis failed ({e}); failing closed",
                            req.request_id,
                            p.name
                        );
                        return Decision::Deny(GatewayError::new(
                            503,
                            "ratelimit_unavailable",
                            "the rate-limit store is unavailable; try again",
                        ));
                    }
                    log::warn!(
                        "request {}: rate limit: Redis failed ({e}); failing open",
                        req.request_id
                    );
                }
            }
        }
        // Everything passed: keep what was counted.
        taken.local.clear();
        let kept = state.slot_or_insert_with(Taken::default);
        // Moved in when the slot is new (one chain's rate limits: the usual case), not copied.
        if kept.held.is_empty() {
            kept.held = guards;
        } else {
            kept.held.extend(guards);
        }
        if kept.quotas.is_empty() {
            kept.quotas = quotas;
        } else {
            kept.quotas.extend(quotas);
        }
        Decision::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, _req: &RequestHeader, state: &PluginState) {
        // This plugin's quotas (a chain may have several rate limits), walked where they are.
        let mine = || {
            state
                .slot::<Taken>()
                .map(|t| &t.quotas[..])
                .unwrap_or_default()
                .iter()
                .filter(|q| self.policies.iter().any(|p| Arc::ptr_eq(p, &q.policy)))
        };
        // Straight into the head's map by parsed name (see `headers::edit_response`).
        crate::headers::edit_response(resp, |resp| {
            let h = &mut resp.headers;
            if let Some(v) = &self.policy_value {
                h.append(RATELIMIT_POLICY, v.clone());
            }
            // On a refusal there is no quota state: the policies, with nothing remaining.
            let status = if mine().next().is_none() {
                self.refused_value.clone()
            } else {
                // One buffer for the whole value (per response on the common path).
                let mut v = String::with_capacity(self.policies.len() * 32);
                let mut n = itoa::Buffer::new();
                for (i, q) in mine().enumerate() {
                    if i > 0 {
                        v.push_str(", ");
                    }
                    v.push('"');
                    v.push_str(&q.policy.name);
                    v.push_str("\";r=");
                    v.push_str(n.format(q.remaining));
                    if let Kind::Window { .. } = q.policy.kind {
                        v.push_str(";t=");
                        v.push_str(n.format(q.reset_secs));
                    }
                }
                HeaderValue::try_from(v).ok()
            };
            if let Some(v) = status {
                h.append(RATELIMIT, v);
            }
            if self.legacy {
                let tightest = mine().min_by_key(|q| q.remaining);
                let (limit, remaining, reset) = match tightest {
                    Some(q) => (limit_of(&q.policy), q.remaining, q.reset_secs),
                    None => (
                        self.policies.first().map(|p| limit_of(p)).unwrap_or(0),
                        0,
                        0,
                    ),
                };
                h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
                h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
                h.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
            }
        });
    }
}

fn limit_of(p: &Policy) -> u64 {
    match p.kind {
        Kind::Window { limit, .. } => limit,
        Kind::Concurrency { max, .. } => max,
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Compile `rate_limits` (and `redis`) into the build context.
#[cfg(test)]
mod tests {
    use super::super::tests::view;
    use super::*;

    #[test]
    fn client_addresses_are_keyed_as_their_text() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(ip_value(ip("192.0.2.1"), 64), "ip:192.0.2.1");
        assert_eq!(ip_value(ip("10.200.0.255"), 64), "ip:10.200.0.255");
        // The same text as `Display`, so keys (and Redis keys) are what they were.
        for a in ["0.0.0.0", "255.255.255.255", "10.0.0.10", "100.1.20.3"]
            .map(|a| a.parse::<std::net::Ipv4Addr>().unwrap())
            .into_iter()
            .chain((0..100).map(|_| std::net::Ipv4Addr::from(fastrand::u32(..))))
        {
            assert_eq!(ip_value(a.into(), 64), format!("ip:{a}"));
        }
        // An IPv4-mapped IPv6 client is the IPv4 one.
        assert_eq!(ip_value(ip("::ffff:192.0.2.1"), 64), "ip:192.0.2.1");
        assert_eq!(
            ip_value(ip("2001:db8:1:2:3:4:5:6"), 64),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            ip_value(ip("2001:db8:1:2:3:4:5:6"), 128),
            "ip:2001:db8:1:2:3:4:5:6"
        );
    }

    #[test]
    fn window_arithmetic() {
        let min = Duration::from_secs(60);
        // Six in a fresh window of six: the sixth fits with none left; the seventh waits for the window.
        assert_eq!(window(0, 6, 0.0, 6, min), (true, 0, 60, 0));
        let (ok, _, _, retry) = window(0, 7, 0.5, 6, min);
        assert!(!ok);
        assert!((30..=60).contains(&retry), "{retry}");
        // The previous window's count slides out.
        let (ok, remaining, _, _) = window(10, 1, 0.9, 6, min);
        assert!(ok);
        assert_eq!(remaining, 4);
        assert!(!window(10, 1, 0.1, 6, min).0);
        let (_, _, _, retry) = window(10, 1, 0.1, 6, min);
        // Room returns when 10 * (1 - f) <= 5: f >= 0.5, i.e. 24 s from f = 0.1.
        assert_eq!(retry, 24);
    }

    #[test]
    fn keys_and_policy_errors() {
        assert_eq!(
            KeySource::parse("jwt_claim:sub"),
            Ok(KeySource::JwtClaim("sub".into()))
        );
        assert!(KeySource::parse("jwt_claim:").is_err());
        assert!(KeySource::parse("cookie:x").is_err());
        let cfg: PolicyConfig =
            serde_yaml_ng::from_str("{ requests: 5, per: 1m, store: redis }").unwrap();
        let errs = Policy::build("p", &cfg, false, None).err().unwrap();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["on_error", "store"]);
        let cfg: PolicyConfig = serde_yaml_ng::from_str("{ requests: 5 }").unwrap();
        assert!(Policy::build("p", &cfg, false, None).is_err());
        for bad in ["0", "129", "-1", "100000"] {
            let cfg: PolicyConfig =
                serde_yaml_ng::from_str(&format!("{{ requests: 5, per: 1m, ipv6_prefix: {bad} }}"))
                    .unwrap();
            let errs = Policy::build("p", &cfg, false, None).err().unwrap();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].0, "ipv6_prefix");
            assert!(errs[0].1.contains("from 1 to 128"), "{errs:?}");
        }
    }

    /// A `rate_limit` plugin with the one policy `p` written as `policy`.
    fn limiter(policy: &str) -> RateLimit {
        let cfg: PolicyConfig = serde_yaml_ng::from_str(policy).unwrap();
        let p = Policy::build("p", &cfg, false, None)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        let mut providers = super::super::Providers::default();
        providers.rate_limits.insert("p".into(), Arc::new(p));
        RateLimit::build(
            RateLimitConfig::One("p".into()),
            &BuildContext::detached(&providers),
        )
        .map_err(|e| e.message)
        .unwrap()
    }

    fn view_req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        req
    }

    /// Does `rl` let a request from `ip` through?
    async fn admits(rl: &RateLimit, ip: &str) -> bool {
        let req = view_req(&[]);
        let mut state = PluginState::default();
        matches!(
            rl.request(&view(&req, ip), &mut state).await,
            Decision::Continue
        )
    }

    #[tokio::test]
    async fn ipv6_clients_are_counted_per_network() {
        // One request per key: a second one from the same key is refused.
        let rl = limiter("{ requests: 1, per: 1h }");
        assert!(admits(&rl, "2001:db8:1:2::1").await);
        assert!(
            !admits(&rl, "2001:db8:1:2:ffff:ffff:ffff:ffff").await,
            "same /64: same client"
        );
        assert!(admits(&rl, "2001:db8:1:3::1").await, "another /64");
        // IPv4 is per address, and an IPv4-mapped address is that IPv4 client.
        assert!(admits(&rl, "192.0.2.1").await);
        assert!(!admits(&rl, "::ffff:192.0.2.1").await);
        assert!(admits(&rl, "192.0.2.2").await);

        let rl = limiter("{ requests: 1, per: 1h, ipv6_prefix: 128 }");
        assert!(admits(&rl, "2001:db8:1:2::1").await);
        assert!(admits(&rl, "2001:db8:1:2::2").await, "/128: per address");
        assert!(!admits(&rl, "2001:db8:1:2::2").await);

        let rl = limiter("{ requests: 1, per: 1h, ipv6_prefix: 48 }");
        assert!(admits(&rl, "2001:db8:1:2::1").await);
        assert!(!admits(&rl, "2001:db8:1:3::1").await, "same /48");
        assert!(admits(&rl, "2001:db8:2::1").await);

        // The fallback of a key whose value is missing is the same network.
        let rl = limiter("{ requests: 1, per: 1h, key: \"header:X-Tenant\" }");
        assert!(admits(&rl, "2001:db8:1:2::1").await);
        assert!(!admits(&rl, "2001:db8:1:2::2").await);
    }

    #[test]
    fn long_client_values_are_hashed() {
        let state = PluginState::default();
        let key = KeySource::Header(HeaderName::from_static("x-tenant"));
        let value_of = |v: &str| {
            let req = view_req(&[("x-tenant", v)]);
            key.value(&view(&req, "192.0.2.1"), &state, 64)
        };
        // Short values are used as they are (what counted before still counts the same).
        assert_eq!(value_of("acme"), "header:acme");
        let edge = "e".repeat(MAX_KEY_VALUE);
        assert_eq!(value_of(&edge), format!("header:{edge}"));
        // Long ones: bounded, and two different values stay two keys.
        let a = format!("{}a", "x".repeat(10 * 1024));
        let b = format!("{}b", "x".repeat(10 * 1024));
        let (ka, kb) = (value_of(&a), value_of(&b));
        assert!(
            ka.starts_with("header-sha256:") && ka.len() == 14 + 64,
            "{ka}"
        );
        assert_ne!(ka, kb);
        assert_eq!(ka, value_of(&a), "the same value, the same key");
        // Claims too.
        let mut state = PluginState::default();
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({ "sub": "y".repeat(5000) })).unwrap();
        state.identity.claims = Some(Arc::new(claims));
        let req = view_req(&[]);
        let k = KeySource::JwtClaim("sub".into()).value(&view(&req, "192.0.2.1"), &state, 64);
        assert!(k.starts_with("claim-sha256:") && k.len() == 13 + 64, "{k}");
    }
}
