//! The config file as written: serde types that mirror the YAML one to one.
//!
//! Every struct denies unknown fields, so a typo is a load-time error rather than a setting that silently
//! never applies. Defaults live here, next to the field they belong to, and are repeated in the README's
//! config reference. These types are turned into validated runtime types by `crate::snapshot`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use super::types::{Addr, Cidr, MethodName};
use super::units::{ByteSize, HumanDuration};

/// The whole file. Sections are deserialized one by one by the loader so that a problem in one does not
/// hide problems in another; this type documents the shape and is what the loader assembles.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub server: ServerConfig,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// Plugins every route runs, before its own (entries as written; built by the plugin registry).
    pub plugins: Vec<serde_yaml_ng::Value>,
    /// Every other top-level section as written (`auth`, `rate_limits`, `redis`, or a custom plugin's):
    /// the plugins that own them register them with the registry
    /// ([`crate::plugin::Registry::register_section`]), which compiles them into the providers their
    /// plugins refer to. The raw layer imports nothing from the plugins; a section nobody registered
    /// is an unknown field, reported by the compiler.
    pub sections: BTreeMap<String, Value>,
    /// Span export (OTLP).
    pub tracing: Option<TracingConfig>,
    /// Upstreams whose definition did not parse (already reported), so routes naming them are not
    /// reported a second time as referring to an unknown upstream.
    pub broken_upstreams: std::collections::BTreeSet<String>,
}

/// The schema of a `plugins:` list, whose entries are YAML values here: a reference to `PluginEntry`,
/// which `crate::schema` defines from the plugins' config types (the raw layer imports no plugin).
pub fn plugin_entries(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "array", "items": { "$ref": "#/$defs/PluginEntry" } })
}

/// Top-level keys of the core config; the others belong to plugins ([`RawConfig::sections`]).
pub const CORE_KEYS: &[&str] = &[
    "server",
    "upstreams",
    "routes",
    "plugins",
    "tracing",
    "include",
];

/// `tracing:`: export one span per request to an OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP traces endpoint, e.g. `http://otel-collector:4318/v1/traces` (JSON encoding).
    pub otlp_endpoint: String,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Deadline of one export call.
    #[serde(default = "default_export_timeout")]
    pub timeout: HumanDuration,
}

fn default_service_name() -> String {
    "tollgate".into()
}

fn default_export_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses of the public listener(s).
    pub listen: Vec<Addr>,
    /// Worker threads per listener service. Default: the number of CPUs.
    pub threads: Option<NonZeroUsize>,
    /// CIDRs (or single IPs) whose `X-Forwarded-For` is believed. Everyone else's is replaced.
    pub trusted_proxies: Vec<Cidr>,
    /// Read the client's address from a PROXY protocol header (v1 or v2) that a TCP load balancer
    /// sends first on each connection to the public listeners.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    pub access_log: AccessLogConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub admin: AdminConfig,
    pub reload: ReloadConfig,
    /// Unix socket through which a new `tollgate run --upgrade` takes over the listening sockets.
    /// Default: in a private directory, see `crate::upgrade::default_path`.
    pub upgrade_sock: Option<String>,
    /// HTTPS listeners and their certificate.
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 in clear (prior knowledge) on the plain listeners too, for gRPC clients without
    /// TLS; HTTP/1.1 clients are served as before.
    pub h2c: bool,
    /// Bridge gRPC-Web (`application/grpc-web*`, from browsers) to gRPC upstreams: the request goes up
    /// as gRPC, the answer and its trailers come back as gRPC-Web.
    pub grpc_web: bool,
    /// Compress upstream answers for clients that accept it (every route that has no `compression`
    /// of its own). Default: off.
    pub compression: Option<CompressionConfig>,
    /// Answer every request on the plain listeners with a redirect to the same URL over HTTPS
    /// (requests a trusted proxy says came over HTTPS, by `X-Forwarded-Proto`, are served).
    pub https_redirect: Option<HttpsRedirectConfig>,
    /// `Strict-Transport-Security` on every answer sent over HTTPS (never over plain HTTP, RFC 6797
    /// §7.2).
    pub hsts: Option<HstsConfig>,
}

/// `server.https_redirect`: where plain-HTTP requests are sent.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsRedirectConfig {
    /// The port clients reach HTTPS on (left out of the URL when 443). Default: the port of the first
    /// `server.tls.listen` address; required without one (TLS ended by a balancer in front).
    pub port: Option<u16>,
    /// 308 (default: the method and body are kept, RFC 9110 §15.4.9) or 301.
    pub status: u16,
}

impl Default for HttpsRedirectConfig {
    fn default() -> Self {
        HttpsRedirectConfig {
            port: None,
            status: 308,
        }
    }
}

/// `server.hsts`: the `Strict-Transport-Security` policy (RFC 6797).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// How long browsers keep to HTTPS for this host (e.g. `365d`).
    pub max_age: HumanDuration,
    /// The policy covers the host's subdomains too.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Ask to be put on browsers' preload list (needs `include_subdomains` and at least a year).
    #[serde(default)]
    pub preload: bool,
}

/// `compression:` (under `server`, or a route's, which replaces the server's as a whole): gzip, brotli
/// and zstd by the client's `Accept-Encoding`, for answers of compressible types, not already encoded.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// `false` turns compression off (e.g. for one route under a server-wide section).
    pub enabled: bool,
    /// The codings offered, in the gateway's order of preference when the client weighs several the
    /// same.
    pub algorithms: Vec<CompressionAlgorithm>,
    /// 1 (fastest) to 9 (smallest), for every algorithm.
    pub level: u32,
    /// Answers whose `Content-Length` is below this are sent as they are (a few hundred bytes gain
    /// nothing); an answer of unknown length is compressed.
    pub min_size: ByteSize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            algorithms: vec![
                CompressionAlgorithm::Zstd,
                CompressionAlgorithm::Br,
                CompressionAlgorithm::Gzip,
            ],
            level: 6,
            min_size: ByteSize(1024),
        }
    }
}

/// A content coding the gateway can compress with.
#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CompressionAlgorithm {
    Gzip,
    /// Brotli.
    #[serde(alias = "brotli")]
    Br,
    Zstd,
}

/// `server.proxy_protocol`: who may send a PROXY protocol header.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    /// The load balancers' addresses (CIDRs or single IPs). A connection from one of them must start
    /// with a header; from anyone else none is read (its client address is the connection's own).
    pub from: Vec<Cidr>,
}

/// `server.tls`: where to terminate TLS, with which certificate (reloadable, like everything else).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Addresses of the HTTPS listener(s).
    pub listen: Vec<Addr>,
    /// PEM certificate chain, leaf first (relative paths are relative to the config file).
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// More certificates, each served to clients that ask (SNI) for one of its DNS names; `cert` is
    /// served to the others.
    #[serde(default)]
    pub certificates: Vec<CertPairConfig>,
}

/// One certificate chain and its key.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertPairConfig {
    pub cert: String,
    pub key: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![Addr(SocketAddr::from(([0, 0, 0, 0], 8080)))],
            threads: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: None,
            access_log: AccessLogConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            admin: AdminConfig::default(),
            reload: ReloadConfig::default(),
            upgrade_sock: None,
            tls: None,
            h2c: false,
            grpc_web: false,
            compression: None,
            https_redirect: None,
            hsts: None,
        }
    }
}

/// The admin listener: health, metrics, and (with a token) the admin API.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Its own address; never one of the public listeners.
    pub listen: Addr,
    /// Bearer token for `/admin/*` (at least 16 characters); `/admin/*` is off without one.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: Addr(SocketAddr::from(([127, 0, 0, 1], 9090))),
            token: None,
        }
    }
}

/// Reloading the config file when it changes (SIGHUP and `POST /admin/reload` always work).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    pub watch: bool,
    /// How often the file is checked for a change.
    pub interval: HumanDuration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: HumanDuration::secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// File to append to; stdout when absent.
    pub path: Option<String>,
    /// Only `json` today; the field exists so that adding a format is not a breaking change.
    pub format: AccessLogFormat,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: None,
            format: AccessLogFormat::Json,
        }
    }
}

#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    Json,
}

/// Request limits. Defaults follow Envoy's: 60 KiB of headers, 100 headers, 8 KiB of URL.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_header_bytes: ByteSize,
    pub max_headers: usize,
    pub max_uri_bytes: ByteSize,
    /// Total time a client has to send its request line and headers (per request).
    pub header_read_timeout: HumanDuration,
    /// How long an idle keep-alive client connection is kept open (whole seconds for HTTP/1: a part
    /// of a second is rounded up). Must be greater than zero.
    pub keepalive_timeout: HumanDuration,
    /// How long an upgraded connection (a WebSocket after `101`) may pass no byte in either direction
    /// before both sides are closed. No head deadline, body limit or upstream read timeout applies to
    /// a tunnel.
    pub tunnel_idle_timeout: HumanDuration,
    /// Answers being compressed at once, gateway-wide; past it answers go out as they are. Each
    /// encoder holds a few MiB (brotli's and zstd's windows and tables) for as long as its answer
    /// streams, so this bounds what slow readers can make the gateway hold.
    pub max_compressing: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: ByteSize(60 * 1024),
            max_headers: 100,
            max_uri_bytes: ByteSize(8 * 1024),
            header_read_timeout: HumanDuration::secs(10),
            keepalive_timeout: HumanDuration::secs(60),
            tunnel_idle_timeout: HumanDuration::secs(3600),
            max_compressing: 256,
        }
    }
}

/// Graceful shutdown and upgrade: after SIGTERM (or SIGQUIT, once the sockets are handed over) the
/// gateway stops accepting, and exits as soon as no request is in flight, or after `timeout`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// The longest in-flight requests are given to finish.
    pub timeout: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: HumanDuration::secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub balance: Balance,
    /// What consistent hashing hashes: `client_ip`, `header:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Extra attempts after a failed *connect* (nothing was sent, so replay is always safe). Shorthand
    /// for `retry: { attempts: retries + 1, when: [connect_failure] }`; not together with `retry`.
    #[serde(default)]
    pub retries: u32,
    /// Which failed tries are tried again, and within what time and budget (routes may override).
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Passive health: targets that fail in a row are taken out for a while.
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    /// Caps on the requests this upstream holds at once; over them, `503 upstream_overloaded` at once.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// A target that joins or comes back (added, healthy again, no longer ejected) gets a share of
    /// traffic that grows from 10 % to its full share over this time.
    #[serde(default)]
    pub slow_start: Option<HumanDuration>,
    /// Keep the client's Host header instead of the target's address.
    #[serde(default)]
    pub preserve_host: bool,
    /// How often targets given by name are resolved again (every address of a name is a target).
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// Speak TLS to the targets (certificates are always verified).
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// The HTTP version spoken to the targets: `http1` (default), `h2` (over TLS, by ALPN), `h2c`
    /// (HTTP/2 in clear, prior knowledge: gRPC servers), `auto` (h2 when TLS's ALPN offers it).
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP/2 connection settings (with `protocol: h2`, `h2c` or `auto`).
    #[serde(default)]
    pub h2: H2Config,
}

/// `upstreams.NAME.protocol`.
#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http1,
    H2,
    H2c,
    Auto,
}

/// `upstreams.NAME.h2`: how HTTP/2 connections to the targets are used.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct H2Config {
    /// Requests multiplexed on one connection at once (then another connection is opened).
    pub max_concurrent_streams: i64,
    /// A PING this often on an idle connection keeps it (and finds a dead one). Default: none.
    pub ping_interval: Option<HumanDuration>,
    /// Per-stream receive window. Default 8 MiB (Pingora's).
    pub stream_window: Option<ByteSize>,
    /// Per-connection receive window. Default: Pingora's.
    pub connection_window: Option<ByteSize>,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            max_concurrent_streams: 100,
            ping_interval: None,
            stream_window: None,
            connection_window: None,
        }
    }
}

/// `upstreams.NAME.tls`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Name to send (SNI) and to verify the certificate against. Default: the target's host.
    pub sni: Option<String>,
    /// PEM file of the CA(s) to trust instead of the system's (relative to the config file).
    pub ca: Option<String>,
}

fn default_dns_refresh() -> HumanDuration {
    HumanDuration::secs(30)
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub addr: String,
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Every target in turn, weights ignored.
    #[default]
    RoundRobin,
    /// Round robin in proportion to each target's `weight`.
    Weighted,
    /// Ketama consistent hashing on `hash_on`.
    ConsistentHash,
    /// The less busy of two targets picked at random (fewest requests in flight per unit of weight).
    LeastRequest,
    /// Like `least_request`, with each target's requests in flight weighted by its recent latency
    /// (a peak-sensitive moving average): slow targets get less.
    Ewma,
}

/// One condition of `retry.when` or `outlier_detection.when`: `connect_failure`, `reset`, `timeout`,
/// `5xx`, or a status code from 500 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No connection: refused, unreachable, connect timeout, TLS handshake failure.
    ConnectFailure,
    /// The connection broke before the whole response head arrived.
    Reset,
    /// The upstream sent no byte within the read timeout (or `per_try_timeout`).
    Timeout,
    /// Any 5xx answer.
    AnyServerError,
    /// This status from the upstream.
    Status(u16),
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, Visitor};
        struct V;
        impl Visitor<'_> for V {
            type Value = Condition;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "`connect_failure`, `reset`, `timeout`, `5xx` or a status from 500 to 599",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Condition, E> {
                match v {
                    "connect_failure" => Ok(Condition::ConnectFailure),
                    "reset" => Ok(Condition::Reset),
                    "timeout" => Ok(Condition::Timeout),
                    "5xx" => Ok(Condition::AnyServerError),
                    s => match s.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "`{s}` is not a condition: use `connect_failure`, `reset`, `timeout`, `5xx` or a status from 500 to 599"
                        ))),
                    },
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Condition, E> {
                match v {
                    500..=599 => Ok(Condition::Status(v as u16)),
                    _ => Err(E::custom(format!(
                        "status {v} is not a server error: only 500 to 599 are failures"
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Condition, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::custom(format!("status {v} is not a server error"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Condition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Condition".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`connect_failure`, `reset`, `timeout`, `5xx` or a status from 500 to 599.",
            "oneOf": [
                { "enum": ["connect_failure", "reset", "timeout", "5xx"] },
                { "type": "integer", "minimum": 500, "maximum": 599 },
                { "type": "string", "pattern": "^5[0-9][0-9]$" }
            ]
        })
    }
}

/// As written: the schema's defaults.
impl serde::Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Condition::ConnectFailure => s.serialize_str("connect_failure"),
            Condition::Reset => s.serialize_str("reset"),
            Condition::Timeout => s.serialize_str("timeout"),
            Condition::AnyServerError => s.serialize_str("5xx"),
            Condition::Status(n) => s.serialize_u16(*n),
        }
    }
}

/// `upstreams.NAME.retry` and `routes[].retry` (whose fields override the upstream's, one by one).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included (`1`: no retry). Default 2.
    pub attempts: Option<i64>,
    /// What is tried again. Default `[connect_failure, reset]`. (`when`, not `on`: YAML 1.1 tools read
    /// a bare `on` as `true`.)
    pub when: Option<Vec<Condition>>,
    /// Retry methods that are not idempotent (POST, PATCH) too: only for upstreams that make repeats
    /// harmless (an `Idempotency-Key`). Default false: a `POST` is never sent twice.
    pub non_idempotent: Option<bool>,
    /// The first retry waits a random time up to this; each next one up to twice as long. Default 25ms.
    pub backoff: Option<HumanDuration>,
    /// The longest wait before a retry. Default 250ms.
    pub max_backoff: Option<HumanDuration>,
    /// The longest wait for any read from the upstream during one try (the response head, mostly).
    /// Default: the upstream's `timeouts.read`.
    pub per_try_timeout: Option<HumanDuration>,
    /// The request's time for its tries: no try starts after it (`504`), and each try's connect,
    /// writes and every read end by it. Default: none.
    pub timeout: Option<HumanDuration>,
    /// Retries at most this share of requests (per upstream, over the last 10 s), so that retries
    /// cannot multiply an outage. Only on the upstream; default 20 % and 10 a second.
    pub budget: Option<RetryBudgetConfig>,
}

/// `upstreams.NAME.retry.budget`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries allowed per 100 requests.
    pub percent: f64,
    /// Retries allowed per second whatever the traffic, so that a quiet upstream can still retry.
    pub min_per_second: i64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: 20.0,
            min_per_second: 10,
        }
    }
}

/// `upstreams.NAME.outlier_detection`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Failures in a row that eject a target.
    pub consecutive_failures: i64,
    /// What counts as a failure.
    pub when: Vec<Condition>,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection: HumanDuration,
    /// The longest an ejection lasts.
    pub max_ejection: HumanDuration,
    /// The largest share of the upstream's targets out at once (at least one may always be).
    pub max_ejected_percent: i64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            when: vec![
                Condition::ConnectFailure,
                Condition::Reset,
                Condition::Timeout,
                Condition::AnyServerError,
            ],
            base_ejection: HumanDuration::secs(30),
            max_ejection: HumanDuration::secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `upstreams.NAME.circuit_breaker`. Over HTTP/1.1 each request in flight holds one upstream
/// connection, so `max_requests` caps this upstream's connections in use too.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Requests in flight to this upstream at once.
    pub max_requests: i64,
    /// Requests that may wait for a free slot; the next one is refused at once. Default 0.
    #[serde(default)]
    pub max_pending: i64,
    /// How long a request waits for a slot before it is refused. Default 1s.
    #[serde(default = "default_max_wait")]
    pub max_wait: HumanDuration,
}

fn default_max_wait() -> HumanDuration {
    HumanDuration::secs(1)
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` (a `GET` of `path`, healthy on 200) or `grpc` (`grpc.health.v1.Health/Check` for
    /// `service`, healthy on `SERVING`; needs an HTTP/2 `protocol`).
    pub kind: CheckKind,
    /// The service a `grpc` check asks about (`""`: the server as a whole).
    pub service: String,
    pub path: String,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    /// Consecutive successes before a target is healthy again.
    pub healthy: i64,
    /// Consecutive failures before a target is taken out.
    pub unhealthy: i64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Http,
            service: String::new(),
            path: "/healthz".into(),
            interval: HumanDuration::secs(5),
            timeout: HumanDuration::secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

/// `health_check.kind`.
#[derive(
    Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    Http,
    Grpc,
}

/// Upstream timeouts. Pingora has no read timeout by default; a gateway must, or a hung service holds
/// client connections forever.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    pub connect: HumanDuration,
    pub read: HumanDuration,
    pub write: HumanDuration,
    /// How long an idle pooled upstream connection is kept.
    pub idle: HumanDuration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: HumanDuration::secs(2),
            read: HumanDuration::secs(30),
            write: HumanDuration::secs(30),
            idle: HumanDuration::secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// The upstream the request is proxied to. A route has either this or `compose`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Answer by calling several upstreams and merging their JSON (a composition route).
    #[serde(default)]
    pub compose: Option<ComposeConfig>,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// New upstream path; `{name}` is replaced by a captured template parameter or regex group.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Overrides the upstream's `preserve_host` for this route.
    #[serde(default)]
    pub preserve_host: Option<bool>,
    /// Overrides the upstream's `retry`, field by field (e.g. `non_idempotent: true` for one route).
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// This route's response compression, in place of `server.compression`.
    #[serde(default)]
    pub compression: Option<CompressionConfig>,
    /// This route's plugins, run after the global ones.
    #[serde(default)]
    #[schemars(schema_with = "plugin_entries")]
    pub plugins: Vec<serde_yaml_ng::Value>,
    /// Position in the file's `routes:` list, set by the loader. A route that does not parse is left
    /// out of [`RawConfig::routes`], so the list position is not the file position.
    #[serde(skip)]
    pub index: usize,
}

#[derive(Debug, Clone, Deserialize, Default, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host or `*.example.com`; any host when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Exact path, or a template when it holds `{param}` segments.
    #[serde(default)]
    pub path: Option<String>,
    /// Segment-aware prefix: `/api` matches `/api` and `/api/x`, never `/apix`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// A regular expression over the normalized path, anchored at both ends.
    #[serde(default)]
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<MethodName>,
    /// Header name → exact value the request must carry.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `routes[].compose`: the calls of a composition route and the answer made of them.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposeConfig {
    /// Named calls. A call runs as soon as the calls its templates refer to have answered.
    pub calls: BTreeMap<String, CallConfig>,
    /// The answer's JSON object; strings `"{ref}"` are replaced by the value they refer to. Default:
    /// one field per call, holding its JSON.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub response: Option<Value>,
    /// Deadline of the whole composition, all calls included.
    #[serde(default = "default_compose_timeout")]
    pub timeout: HumanDuration,
    /// Calls in flight at once for one request (fan-outs included).
    #[serde(default = "default_compose_concurrency")]
    pub concurrency: usize,
}

fn default_compose_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

fn default_compose_concurrency() -> usize {
    16
}

/// `routes[].compose.calls.NAME`: one call to an upstream.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    pub upstream: String,
    /// `GET` or `HEAD`: see the README on why writes are not composed.
    #[serde(default = "default_call_method")]
    pub method: MethodName,
    /// Path and query template, e.g. `/users/{order.user_id}` or `/orders?user={claims.sub}`.
    pub path: String,
    /// Request headers, each a template (e.g. `accept-language: "{header.accept-language|en}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deadline of this call (each call of a fan-out). Default: the upstream's read timeout, within the
    /// composition's `timeout`.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// A required call that fails fails the whole answer; an optional one leaves `null` and an entry
    /// in `errors`.
    #[serde(default = "yes")]
    pub required: bool,
    /// Most calls a fan-out (`[]` in the path) may make; more elements fail the call.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Largest response body accepted from this call.
    #[serde(default = "default_call_body")]
    pub max_body: ByteSize,
}

fn default_call_method() -> MethodName {
    MethodName(http::Method::GET)
}

fn yes() -> bool {
    true
}

fn default_max_calls() -> usize {
    100
}

fn default_call_body() -> ByteSize {
    ByteSize(1024 * 1024)
}
