//! JWT authentication: named providers (keys, algorithms, issuer, audience) under `auth.jwt`, and the
//! `jwt` plugin that a route uses to require a valid token, scopes, roles and claims.
//!
//! What makes it safe:
//! - the algorithm comes from the provider's allowlist, never from the token alone: `alg: none` (in any
//!   case) does not even parse, and a token's `alg` must be allowed *and* match the family of the key
//!   that verifies it, so an HMAC token can never be checked against an RSA public key (key confusion);
//! - keys are looked up by `kid` in memory only: a `kid` is never a path or URL, and the `jku`, `x5u`
//!   and `jwk` header fields are ignored;
//! - a token whose header has `crit` is refused: it names extensions the recipient must understand, and
//!   we understand none (RFC 7515 §4.1.11);
//! - `exp` is required, `nbf` is enforced, `iss` and `aud` are checked when configured, all with an
//!   explicit leeway (default 30 s);
//! - symmetric (`oct`) keys are never taken from a JWKS URL;
//! - a JWKS URL is fetched at start and refreshed in the background; an unknown `kid` triggers a refetch
//!   at most once per `jwks_min_refetch`; when the endpoint fails the last good keys stay;
//! - a JWKS URL is `https://` (plain `http://` only to a loopback host), redirects never change the
//!   scheme (nor leave loopback for plain http) and stop after [`MAX_JWKS_REDIRECTS`], and a body over
//!   [`MAX_JWKS_BYTES`] is refused: whoever can answer for the URL chooses the keys.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::{
    BuildContext, BuildError, Decision, ExplainRequest, HeaderEdit, Phases, Plugin, PluginState,
    RequestView, Verdict,
};
use crate::config::units::HumanDuration;
use crate::error::GatewayError;

/// `auth.jwt.NAME` as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Accepted algorithms, e.g. `[RS256]`. Required: there is no default algorithm.
    pub algorithms: Vec<String>,
    /// HMAC secret (HS256/384/512), usually `${ENV}`. At least 32 bytes.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519) or certificate.
    #[serde(default)]
    pub public_key_file: Option<String>,
    /// A JSON file with one JWK or a JWKS (`{"keys": [...]}`).
    #[serde(default)]
    pub jwk_file: Option<String>,
    /// A JWKS endpoint, fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_refresh")]
    pub jwks_refresh: HumanDuration,
    /// Least time between two fetches caused by an unknown `kid`.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch: HumanDuration,
    /// Timeout of one JWKS fetch.
    #[serde(default = "default_jwks_timeout")]
    pub jwks_timeout: HumanDuration,
    /// Required `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences: the token's `aud` must contain one of them. Required in the token when set.
    #[serde(default)]
    pub audience: OneOrMany,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
    /// Also accept the token from this cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Also accept the token from this query parameter (it is then removed before proxying).
    #[serde(default)]
    pub query: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

fn default_refresh() -> HumanDuration {
    HumanDuration::secs(300)
}
fn default_min_refetch() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_jwks_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn default_leeway() -> HumanDuration {
    HumanDuration::secs(30)
}

/// One verification key.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify (its family, narrowed by a JWK's `alg` or `crv`).
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys of a provider: static ones from config and files, and the last good JWKS.
#[derive(Clone, Default)]
struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Keys that may verify a token with this `alg` and `kid`. A token with a `kid` uses the key with
    /// that id; when no key has it, keys without an id (secrets, PEM files) are tried.
    fn candidates<'a>(&'a self, alg: Algorithm, kid: Option<&str>) -> Vec<&'a Key> {
        let usable = |k: &&Key| k.algs.contains(&alg);
        if let Some(kid) = kid {
            let by_id: Vec<&Key> = self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .filter(usable)
                .collect();
            if !by_id.is_empty() {
                return by_id;
            }
        }
        self.keys
            .iter()
            .filter(|k| k.kid.is_none())
            .filter(usable)
            .collect()
    }
}

/// Why a token was refused (the `error_description` and the metric reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Multiple,
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExp,
    WrongIssuer,
    WrongAudience,
    InvalidClaims,
    /// The header has `crit`.
    CriticalExtension,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Multiple => "multiple_tokens",
            Rejection::Malformed => "malformed",
            Rejection::AlgorithmNotAllowed => "algorithm_not_allowed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::MissingExp => "missing_exp",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::InvalidClaims => "invalid_claims",
            Rejection::CriticalExtension => "critical_extension",
        }
    }
    /// The `error_description`, and the whole `WWW-Authenticate: Bearer` of the 401 (RFC 6750; no error
    /// code when no token was sent), written out so that a refusal formats nothing.
    fn texts(self) -> (&'static str, &'static str) {
        macro_rules! invalid {
            ($d:literal) => {
                (
                    $d,
                    concat!(
                        "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"",
                        $d,
                        "\""
                    ),
                )
            };
        }
        match self {
            Rejection::Missing => ("a bearer token is required", "Bearer realm=\"tollgate\""),
            Rejection::Multiple => invalid!("more than one token was sent"),
            Rejection::Malformed => invalid!("the token is malformed"),
            Rejection::AlgorithmNotAllowed => invalid!("the token's algorithm is not accepted"),
            Rejection::UnknownKey => invalid!("the token's signing key is unknown"),
            Rejection::BadSignature => invalid!("the token's signature is invalid"),
            Rejection::Expired => invalid!("the token has expired"),
            Rejection::NotYetValid => invalid!("the token is not valid yet"),
            Rejection::MissingExp => invalid!("the token has no expiry"),
            Rejection::WrongIssuer => invalid!("the token's issuer is not accepted"),
            Rejection::WrongAudience => invalid!("the token's audience is not accepted"),
            Rejection::InvalidClaims => invalid!("the token's claims are invalid"),
            Rejection::CriticalExtension => {
                invalid!("the token requires extensions (crit) that are not supported")
            }
        }
    }

    /// The 401 answer.
    pub fn to_error(self) -> GatewayError {
        let (description, www) = self.texts();
        let code = if self == Rejection::Missing {
            "unauthenticated"
        } else {
            "invalid_token"
        };
        GatewayError::new(401, code, description).with_header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(www),
        )
    }
}

/// A compiled `auth.jwt.NAME`.
pub struct Provider {
    pub name: String,
    algorithms: Vec<Algorithm>,
    static_keys: Vec<Key>,
    keys: ArcSwap<KeySet>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: Duration,
    pub cookie: Option<String>,
    pub query: Option<String>,
    jwks: Option<Jwks>,
    cache: VerifiedCache,
}

/// Tokens verified recently, so a client that sends the same token again is not checked again: a
/// signature check costs 3 µs (HS256) to 50 µs (ES256), a lookup a fraction of one. An entry is only
/// used while the token's own `exp`/`nbf` still hold (with the leeway), the whole token is compared
/// (never a hash of it), and the cache is emptied whenever the provider's keys change, so a withdrawn
/// key stops working at once. Bounded: when full, it starts over.
struct VerifiedCache {
    /// aHash, randomly keyed: a lookup hashes the whole token (hundreds of bytes) on every request,
    /// about four times faster than std's SipHash. Only verified tokens are stored, so a client
    /// cannot fill the map with colliding keys.
    map: std::sync::RwLock<std::collections::HashMap<Box<str>, Cached, ahash::RandomState>>,
}

struct Cached {
    claims: Arc<Map<String, Json>>,
    exp: u64,
    nbf: Option<u64>,
}

/// Entries the verified-token cache holds before it starts over.
pub const CACHE_ENTRIES: usize = 10_000;

impl VerifiedCache {
    fn new() -> Self {
        VerifiedCache {
            map: std::sync::RwLock::new(std::collections::HashMap::default()),
        }
    }

    fn get(&self, token: &str, leeway: Duration) -> Option<Arc<Map<String, Json>>> {
        let map = self.map.read().ok()?;
        let c = map.get(token)?;
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = leeway.as_secs();
        let fresh = now <= c.exp.saturating_add(leeway)
            && c.nbf.is_none_or(|nbf| now.saturating_add(leeway) >= nbf);
        fresh.then(|| c.claims.clone())
    }

    fn put(&self, token: &str, claims: &Arc<Map<String, Json>>) {
        // Verified tokens always have a numeric `exp` (required); anything else is not cached.
        let Some(exp) = claims.get("exp").and_then(Json::as_u64) else {
            return;
        };
        let nbf = claims.get("nbf").and_then(Json::as_u64);
        if let Ok(mut map) = self.map.write() {
            if map.len() >= CACHE_ENTRIES {
                map.clear();
            }
            map.insert(
                token.into(),
                Cached {
                    claims: claims.clone(),
                    exp,
                    nbf,
                },
            );
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
    }
}

/// JWKS fetching state of a provider.
struct Jwks {
    url: String,
    refresh: Duration,
    min_refetch: Duration,
    timeout: Duration,
    /// Single flight, and the time of the last attempt.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// When the next background refresh is due (None: now).
    next_due: std::sync::Mutex<Option<Instant>>,
}

/// Largest JWKS body accepted: real ones are a few KiB; this bounds what a broken or hostile endpoint
/// can make the gateway buffer.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Redirects a JWKS fetch follows.
pub const MAX_JWKS_REDIRECTS: usize = 3;

/// Is this URL's host loopback (127.0.0.0/8, ::1 or `localhost`)?
fn loopback_host(u: &reqwest::Url) -> bool {
    let Some(host) = u.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `jwks_url` as configured: https, or http to a loopback host (a local sidecar or test IdP), where
/// nobody on the network can swap the keys.
fn check_jwks_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback_host(&u) => Ok(()),
        "http" => Err(format!(
            "`{url}`: use https:// (http is accepted only for loopback hosts: 127.0.0.0/8, ::1, localhost), or anyone on the way could hand out their own keys"
        )),
        _ => Err("must be an https:// URL (or http:// to a loopback host)".into()),
    }
}

/// Whether a JWKS fetch may follow a redirect from `original` to `next`, `hops` being the number of
/// requests made so far. A redirect must keep the scheme (https never falls back to plain http), a
/// plain-http one must stay on loopback (the reason http was allowed), and there are at most
/// [`MAX_JWKS_REDIRECTS`].
fn redirect_verdict(
    original: &reqwest::Url,
    next: &reqwest::Url,
    hops: usize,
) -> Result<(), String> {
    if hops > MAX_JWKS_REDIRECTS {
        return Err(format!("more than {MAX_JWKS_REDIRECTS} redirects"));
    }
    if next.scheme() != original.scheme() {
        return Err(format!(
            "refusing a redirect from {}:// to {}",
            original.scheme(),
            next
        ));
    }
    if next.scheme() == "http" && !loopback_host(next) {
        return Err(format!(
            "refusing a plain-http redirect away from loopback, to {next}"
        ));
    }
    Ok(())
}

/// An error with its causes (reqwest puts the interesting part, such as a refused redirect, in the
/// source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
        next = cause.source();
    }
    out
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    // Exact, case-sensitive names as in RFC 7518; `none` is not an algorithm here.
    s.parse::<Algorithm>().ok()
}

fn family_algs(f: AlgorithmFamily) -> Vec<Algorithm> {
    f.algorithms().to_vec()
}

impl Provider {
    /// Compile a provider. `read` reads a file (a seam for tests). Errors are `(field, message)`.
    pub fn build(
        name: &str,
        cfg: &ProviderConfig,
        read: &dyn Fn(&str) -> std::io::Result<Vec<u8>>,
    ) -> Result<Provider, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let mut algorithms = Vec::new();
        if cfg.algorithms.is_empty() {
            errs.push((
                "algorithms".into(),
                "list at least one algorithm, e.g. [RS256]".into(),
            ));
        }
        for (i, a) in cfg.algorithms.iter().enumerate() {
            match parse_alg(a) {
                Some(alg) => algorithms.push((i, alg)),
                None => errs.push((
                    format!("algorithms[{i}]"),
                    format!("`{a}` is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
                )),
            }
        }
        let mut static_keys = Vec::new();
        if let Some(secret) = &cfg.secret {
            if secret.len() < 32 {
                errs.push((
                    "secret".into(),
                    format!(
                        "an HMAC secret must be at least 32 bytes (this one has {})",
                        secret.len()
                    ),
                ));
            }
            static_keys.push(Key {
                kid: None,
                algs: family_algs(AlgorithmFamily::Hmac),
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(file) = &cfg.public_key_file {
            match read(file) {
                Ok(pem) => match pem_key(&pem) {
                    Some(k) => static_keys.push(k),
                    None => errs.push((
                        "public_key_file".into(),
                        format!("`{file}` holds no RSA, EC or Ed25519 public key in PEM form"),
                    )),
                },
                Err(e) => errs.push((
                    "public_key_file".into(),
                    format!("cannot read `{file}`: {e}"),
                )),
            }
        }
        if let Some(file) = &cfg.jwk_file {
            match read(file) {
                Ok(bytes) => match parse_jwks(&bytes, true) {
                    Ok(keys) if !keys.is_empty() => static_keys.extend(keys),
                    Ok(_) => {
                        errs.push(("jwk_file".into(), format!("`{file}` holds no usable key")))
                    }
                    Err(e) => errs.push(("jwk_file".into(), format!("`{file}`: {e}"))),
                },
                Err(e) => errs.push(("jwk_file".into(), format!("cannot read `{file}`: {e}"))),
            }
        }
        let jwks = match cfg.jwks_url.as_ref().map(|u| (u, check_jwks_url(u))) {
            Some((_, Err(e))) => {
                errs.push(("jwks_url".into(), e));
                None
            }
            Some((url, Ok(()))) => Some(Jwks {
                url: url.clone(),
                refresh: cfg.jwks_refresh.0,
                min_refetch: cfg.jwks_min_refetch.0,
                timeout: cfg.jwks_timeout.0,
                last_attempt: tokio::sync::Mutex::new(None),
                next_due: std::sync::Mutex::new(None),
            }),
            None => None,
        };
        // A `jwks_url` that was refused above is a key source all the same: it was reported already.
        if cfg.secret.is_none()
            && cfg.public_key_file.is_none()
            && cfg.jwk_file.is_none()
            && cfg.jwks_url.is_none()
        {
            errs.push((
                String::new(),
                "give a key source: `secret`, `public_key_file`, `jwk_file` or `jwks_url`".into(),
            ));
        } else if cfg.jwks_url.is_none() {
            // Every allowed algorithm needs a key that can verify it, or it is a typo waiting to bite.
            for (i, alg) in &algorithms {
                if !static_keys.iter().any(|k| k.algs.contains(alg)) {
                    errs.push((
                        format!("algorithms[{i}]"),
                        format!("no configured key can verify {alg:?} tokens"),
                    ));
                }
            }
        }
        for (field, d) in [
            ("jwks_refresh", cfg.jwks_refresh),
            ("jwks_timeout", cfg.jwks_timeout),
        ] {
            if d.0.is_zero() {
                errs.push((field.into(), "must be greater than zero".into()));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Provider {
            name: name.to_string(),
            algorithms: algorithms.into_iter().map(|(_, a)| a).collect(),
            keys: ArcSwap::from_pointee(KeySet {
                keys: static_keys.clone(),
            }),
            static_keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.to_vec(),
            leeway: cfg.leeway.0,
            cookie: cfg.cookie.clone(),
            query: cfg.query.clone(),
            jwks,
            cache: VerifiedCache::new(),
        })
    }

    /// The algorithms this provider accepts.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }
    pub fn audience(&self) -> &[String] {
        &self.audience
    }
    pub fn has_jwks(&self) -> bool {
        self.jwks.is_some()
    }

    /// After a reload: start from the keys the provider being replaced fetched from the same JWKS URL,
    /// so tokens keep verifying while the new provider's first fetch is on its way.
    pub fn inherit_keys(&self, old: &Provider) {
        let (Some(new), Some(prev)) = (&self.jwks, &old.jwks) else {
            return;
        };
        if new.url != prev.url || self.algorithms != old.algorithms {
            return;
        }
        let fetched: Vec<Key> = old
            .keys
            .load()
            .keys
            .iter()
            .skip(old.static_keys.len())
            .cloned()
            .collect();
        let mut keys = self.static_keys.clone();
        keys.extend(fetched);
        self.keys.store(Arc::new(KeySet { keys }));
        self.cache.clear();
    }

    /// Verify a token. On success, its claims.
    pub async fn verify(&self, token: &str) -> Result<Arc<Map<String, Json>>, Rejection> {
        if let Some(claims) = self.cache.get(token, self.leeway) {
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached(token).await?);
        self.cache.put(token, &claims);
        Ok(claims)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Map<String, Json>, Rejection> {
        match self.verify_with_keys(token) {
            // A key we lack: fetch the JWKS (if it is due) and try once more.
            Err(Rejection::UnknownKey) if self.refetch_for_unknown_kid().await => {
                self.verify_with_keys(token)
            }
            other => other,
        }
    }

    /// Verify `token` with the keys held now (static keys, and JWKS keys already fetched), without
    /// fetching anything: what [`Provider::verify`] does between its fetches, and all that
    /// `tollgate explain` may do offline. A key the provider does not hold is `UnknownKey`.
    pub fn verify_with_keys(&self, token: &str) -> Result<Map<String, Json>, Rejection> {
        // A JWS compact serialization is base64url segments and dots (RFC 7515 §7.1).
        if !token.is_ascii() {
            return Err(Rejection::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        // Like `jku`/`x5u`/`jwk`, decided from the header alone, before any key is looked at. Any
        // `crit` names an extension we do not implement, and RFC 7515 §4.1.11 says to refuse it.
        if header.crit.is_some() {
            return Err(Rejection::CriticalExtension);
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(Rejection::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref();
        let keys = self.keys.load_full();
        let candidates = keys.candidates(header.alg, kid);
        if candidates.is_empty() {
            return Err(Rejection::UnknownKey);
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let mut last = Rejection::BadSignature;
        for k in candidates {
            match jsonwebtoken::decode::<Map<String, Json>>(token, &k.key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature
                        | K::InvalidAlgorithm
                        | K::InvalidKeyFormat
                        | K::InvalidEcdsaKey
                        | K::InvalidRsaKey(_) => Rejection::BadSignature,
                        K::ExpiredSignature => Rejection::Expired,
                        K::ImmatureSignature => Rejection::NotYetValid,
                        K::MissingRequiredClaim(c) if c == "exp" => Rejection::MissingExp,
                        K::MissingRequiredClaim(c) if c == "iss" => Rejection::WrongIssuer,
                        K::MissingRequiredClaim(c) if c == "aud" => Rejection::WrongAudience,
                        K::InvalidIssuer => Rejection::WrongIssuer,
                        K::InvalidAudience => Rejection::WrongAudience,
                        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => {
                            Rejection::Malformed
                        }
                        _ => Rejection::InvalidClaims,
                    };
                    // Only a bad signature is worth trying the next key for.
                    if last != Rejection::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Fetch the JWKS now because a token named a key we lack, unless one was fetched (or tried)
    /// less than `jwks_min_refetch` ago. Returns whether the keys may have changed.
    async fn refetch_for_unknown_kid(&self) -> bool {
        let Some(j) = &self.jwks else { return false };
        let mut last = j.last_attempt.lock().await;
        if last.is_some_and(|t| t.elapsed() < j.min_refetch) {
            // Another request may have just fetched: its keys are already in place.
            return true;
        }
        *last = Some(Instant::now());
        self.fetch(j).await.is_ok()
    }

    /// The background refresh: fetch when due. A failure keeps the last good keys and retries after
    /// `jwks_min_refetch`.
    pub async fn refresh_if_due(&self) {
        let Some(j) = &self.jwks else { return };
        let due = j.next_due.lock().map(|d| *d).unwrap_or(None);
        if due.is_some_and(|d| Instant::now() < d) {
            return;
        }
        let mut last = j.last_attempt.lock().await;
        *last = Some(Instant::now());
        let next = match self.fetch(j).await {
            Ok(()) => j.refresh,
            Err(e) => {
                log::warn!(
                    "jwt provider `{}`: JWKS fetch from {} failed, keeping the last good keys: {e}",
                    self.name,
                    j.url
                );
                j.min_refetch.max(Duration::from_secs(1))
            }
        };
        if let Ok(mut d) = j.next_due.lock() {
            *d = Some(Instant::now() + next);
        }
    }

    async fn fetch(&self, j: &Jwks) -> Result<(), String> {
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let verdict = match attempt.previous().first() {
                Some(original) => {
                    redirect_verdict(original, attempt.url(), attempt.previous().len())
                }
                None => Ok(()),
            };
            match verdict {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(j.timeout)
            .redirect(redirects)
            .build()
            .map_err(|e| error_chain(&e))?;
        let mut resp = client
            .get(&j.url)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        // Content-Length refuses an honest large answer before reading it; counting the chunks
        // refuses one that does not say (chunked) or lies.
        let too_large = || "JWKS larger than 1 MiB".to_string();
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let fetched = parse_jwks(&body, false)?;
        if fetched.is_empty() {
            return Err("the JWKS has no usable signing key".into());
        }
        let mut keys = self.static_keys.clone();
        keys.extend(fetched);
        self.keys.store(Arc::new(KeySet { keys }));
        self.cache.clear();
        log::info!("jwt provider `{}`: loaded JWKS from {}", self.name, j.url);
        Ok(())
    }
}

/// A PEM public key of any supported family.
fn pem_key(pem: &[u8]) -> Option<Key> {
    let (key, family) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (k, AlgorithmFamily::Rsa)
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (k, AlgorithmFamily::Ec)
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (k, AlgorithmFamily::Ed)
    } else {
        return None;
    };
    Some(Key {
        kid: None,
        algs: family_algs(family),
        key,
    })
}

/// Parse a JWKS (or a single JWK). Keys that cannot verify signatures are skipped; symmetric keys are
/// accepted only when `allow_symmetric` (a local file, not a URL).
fn parse_jwks(bytes: &[u8], allow_symmetric: bool) -> Result<Vec<Key>, String> {
    let v: Json = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list: Vec<Json> = match v {
        Json::Object(mut o) if o.contains_key("keys") => match o.remove("keys") {
            Some(Json::Array(a)) => a,
            _ => return Err("`keys` must be a list".into()),
        },
        Json::Object(o) => vec![Json::Object(o)],
        _ => return Err("expected a JWK or a JWKS object".into()),
    };
    let mut out = Vec::new();
    for item in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item) else {
            continue; // an unsupported key type: not ours to use
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let family_algs = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => family_algs(AlgorithmFamily::Rsa),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
            AlgorithmParameters::OctetKey(_) if allow_symmetric => {
                family_algs(AlgorithmFamily::Hmac)
            }
            AlgorithmParameters::OctetKey(_) => continue,
        };
        // A JWK that names its algorithm may verify only that one.
        let algs = match jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        {
            Some(a) if family_algs.contains(&a) => vec![a],
            Some(_) => continue,
            None if jwk.common.key_algorithm.is_some() => continue,
            None => family_algs,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(Key {
            kid: jwk.common.key_id.clone(),
            algs,
            key,
        });
    }
    Ok(out)
}

/// A claim requirement: `equals` a value, or `contains` it (in an array, or as a word of a string).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    #[serde(default)]
    pub equals: Option<Json>,
    #[serde(default)]
    pub contains: Option<Json>,
}

/// The `jwt` plugin's config.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Name under `auth.jwt`.
    pub provider: String,
    /// Every one of these scopes (from `scope`, space-separated, or `scp`, a list or string).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// At least one of these roles (from the `roles_claim`, default `roles`).
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claim name → rule, all must hold.
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimRule>,
    /// Claim name → header to send upstream with its value. Client-sent copies are always removed.
    /// A claim that is absent or cannot be a header value (null, an object, a control character) is a
    /// 401, unless the entry is `{ header: NAME, optional: true }`: an upstream that scopes its answer
    /// by the header must never see the request without it by accident.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, ForwardClaim>,
}

/// One `forward_claims` entry: a header name, or `{ header, optional }`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ForwardClaim {
    Header(String),
    Long(ForwardClaimLong),
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardClaimLong {
    pub header: String,
    #[serde(default)]
    pub optional: bool,
}

/// A claim as a header value: strings, numbers and booleans as written, a list of strings joined by
/// spaces (scopes, roles). `None` for anything else, or text a header cannot carry.
fn claim_header_value(v: Option<&Json>) -> Option<HeaderValue> {
    let text = match v? {
        Json::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        Json::Number(n) => std::borrow::Cow::Owned(n.to_string()),
        Json::Bool(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
        Json::Array(a) => {
            let parts: Option<Vec<&str>> = a.iter().map(Json::as_str).collect();
            std::borrow::Cow::Owned(parts?.join(" "))
        }
        _ => return None,
    };
    // Visible ASCII and spaces only: no control characters, nothing a backend decodes differently.
    if text.is_empty() || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

fn default_roles_claim() -> String {
    "roles".into()
}

/// The `jwt` plugin.
pub struct JwtAuth {
    provider: Arc<Provider>,
    scopes: Vec<String>,
    roles: Vec<String>,
    roles_claim: String,
    claims: Vec<(String, ClaimRule)>,
    /// (claim, header, optional)
    forward: Vec<(String, HeaderName, bool)>,
    /// The forwarded headers, removed from every request: a client never sets them itself.
    strip: Arc<[HeaderEdit]>,
    /// `WWW-Authenticate` of the 403, with the route's scopes.
    forbidden_challenge: HeaderValue,
    query: Vec<String>,
}

impl JwtAuth {
    pub fn build(cfg: JwtConfig, ctx: &BuildContext) -> Result<JwtAuth, BuildError> {
        let provider = ctx.jwt_provider(&cfg.provider)?;
        for (name, rule) in &cfg.claims {
            if rule.equals.is_none() && rule.contains.is_none() {
                return Err(BuildError::at(
                    format!("claims.{name}"),
                    "give `equals` or `contains`",
                ));
            }
        }
        let mut forward = Vec::new();
        for (claim, entry) in &cfg.forward_claims {
            let (header, optional, at) = match entry {
                ForwardClaim::Header(h) => (h, false, format!("forward_claims.{claim}")),
                ForwardClaim::Long(l) => (
                    &l.header,
                    l.optional,
                    format!("forward_claims.{claim}.header"),
                ),
            };
            forward.push((claim.clone(), super::header_name(header, &at)?, optional));
        }
        let mut www = "Bearer realm=\"tollgate\", error=\"insufficient_scope\"".to_string();
        if !cfg.scopes.is_empty() {
            www.push_str(&format!(", scope=\"{}\"", cfg.scopes.join(" ")));
        }
        Ok(JwtAuth {
            strip: forward
                .iter()
                .map(|(_, h, _)| HeaderEdit::Remove(h.clone()))
                .collect(),
            forbidden_challenge: HeaderValue::from_str(&www)
                .unwrap_or(HeaderValue::from_static("Bearer")),
            query: provider.query.iter().cloned().collect(),
            provider,
            scopes: cfg.scopes,
            roles: cfg.roles,
            roles_claim: cfg.roles_claim,
            claims: cfg.claims.into_iter().collect(),
            forward,
        })
    }

    /// Does a verified token carry what this route requires?
    fn authorize(&self, claims: &Map<String, Json>) -> Result<(), GatewayError> {
        if !self.scopes.is_empty() {
            // Only when the route asks for scopes: two claim lookups and a set.
            let granted = scopes(claims);
            if let Some(missing) = self.scopes.iter().find(|s| !granted.contains(s.as_str())) {
                return Err(self.forbidden(format!("the token lacks scope `{missing}`")));
            }
        }
        if !self.roles.is_empty() {
            let held = strings(claims.get(&self.roles_claim));
            if !self.roles.iter().any(|r| held.contains(r.as_str())) {
                return Err(self.forbidden(format!(
                    "the token has none of the roles {}",
                    self.roles.join(", ")
                )));
            }
        }
        for (name, rule) in &self.claims {
            let v = claims.get(name);
            let equals_ok = rule.equals.as_ref().is_none_or(|want| v == Some(want));
            let contains_ok = rule.contains.as_ref().is_none_or(|want| match (v, want) {
                (Some(Json::Array(a)), w) => a.contains(w),
                (Some(Json::String(s)), Json::String(w)) => s.split(' ').any(|x| x == w),
                _ => false,
            });
            let ok = equals_ok && contains_ok;
            if !ok {
                return Err(
                    self.forbidden(format!("claim `{name}` does not satisfy the route's rule"))
                );
            }
        }
        Ok(())
    }

    fn forbidden(&self, message: String) -> GatewayError {
        GatewayError::new(403, "insufficient_scope", message).with_header(
            http::header::WWW_AUTHENTICATE,
            self.forbidden_challenge.clone(),
        )
    }
}

/// Scopes granted by `scope` (space-separated string) and `scp` (list, or space-separated string).
fn scopes(claims: &Map<String, Json>) -> HashSet<&str> {
    let mut out = strings(claims.get("scp"));
    if let Some(Json::String(s)) = claims.get("scope") {
        out.extend(s.split(' ').filter(|x| !x.is_empty()));
    }
    out
}

fn strings(v: Option<&Json>) -> HashSet<&str> {
    match v {
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
        Some(Json::String(s)) => s.split(' ').filter(|x| !x.is_empty()).collect(),
        _ => HashSet::new(),
    }
}

/// Find the one token of a request: `Authorization: Bearer`, or the provider's cookie or query
/// parameter. Two or more tokens (even equal ones) are refused: which one would count is ambiguous.
pub fn extract_token<'a>(
    req: &'a pingora_http::RequestHeader,
    p: &'a Provider,
) -> Result<&'a str, Rejection> {
    let mut found: Option<&str> = None;
    let mut take = |t: &'a str| -> Result<(), Rejection> {
        if found.replace(t).is_some() {
            return Err(Rejection::Multiple);
        }
        Ok(())
    };
    for v in req.headers.get_all(http::header::AUTHORIZATION) {
        let b = v.as_bytes().trim_ascii();
        let (scheme, rest) = match memchr::memchr(b' ', b) {
            Some(i) => (&b[..i], &b[i + 1..]),
            None => (b, &b""[..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            // Another scheme is not ours, but a value that is not text is malformed all the same.
            v.to_str().map_err(|_| Rejection::Malformed)?;
            continue;
        }
        // No spaces or commas (a second credential); a header value holds no other control
        // character than a tab. Vectorised scans, not a loop over the bytes. A byte outside ASCII
        // (if the value is UTF-8 at all) is refused by `verify_with_keys`, on a cache miss: only
        // verified tokens are in the cache, so a hit needs no second scan of the token.
        let t = rest.trim_ascii();
        if t.is_empty() || memchr::memchr3(b' ', b',', b'\t', t).is_some() {
            return Err(Rejection::Malformed);
        }
        take(std::str::from_utf8(t).map_err(|_| Rejection::Malformed)?)?;
    }
    if let Some(name) = &p.cookie {
        for v in req.headers.get_all(http::header::COOKIE) {
            let Ok(s) = v.to_str() else { continue };
            for pair in s.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=') {
                    if k == name {
                        take(val)?;
                    }
                }
            }
        }
    }
    if let Some(name) = &p.query {
        for val in super::query_params(req.uri.query(), name) {
            take(val)?;
        }
    }
    found.ok_or(Rejection::Missing)
}

#[async_trait]
impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn auth_failure_reasons(&self) -> &'static [&'static str] {
        &["unauthenticated", "invalid_token", "insufficient_scope"]
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn removes_query_params(&self) -> &[String] {
        &self.query
    }

    fn explain(&self, req: &ExplainRequest<'_>) -> Option<Verdict> {
        let p = &self.provider;
        let verified;
        let (claims, how) = match req.claims {
            Some(c) => (c, "assumed verified (--token-claims)".to_string()),
            None => {
                let token = match extract_token(req.req, p) {
                    Ok(t) => t,
                    Err(Rejection::Missing) => {
                        return Some(Verdict::answer(
                            401,
                            format!("provider {}: no token → 401", p.name),
                        ))
                    }
                    Err(r) => {
                        return Some(Verdict::answer(
                            401,
                            format!("provider {}: {} → 401", p.name, r.reason()),
                        ))
                    }
                };
                verified = match p.verify_with_keys(token) {
                    Ok(c) => c,
                    Err(Rejection::UnknownKey) if p.has_jwks() => {
                        return Some(Verdict::answer(
                            401,
                            format!(
                                "provider {}: the token's key is not held offline (its JWKS is not \
                                 fetched by explain); pass --token-claims to assume a valid token",
                                p.name
                            ),
                        ))
                    }
                    Err(r) => {
                        return Some(Verdict::answer(
                            401,
                            format!("provider {}: token {} → 401", p.name, r.reason()),
                        ))
                    }
                };
                (&verified, "verified".to_string())
            }
        };
        let shown = Json::Object(claims.clone()).to_string();
        if let Err(e) = self.authorize(claims) {
            return Some(Verdict::answer(
                e.status,
                format!(
                    "provider {}: token {how} {shown}, but {}",
                    p.name, e.message
                ),
            ));
        }
        let mut headers = Vec::new();
        for (claim, header, optional) in &self.forward {
            match claim_header_value(claims.get(claim)) {
                Some(v) => headers.push((
                    header.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )),
                None if *optional => {}
                None => {
                    return Some(Verdict::answer(
                        401,
                        format!("provider {}: the token's `{claim}` claim is missing or not a plain value → 401", p.name),
                    ))
                }
            }
        }
        let mut note = format!("provider {}: token {how} {shown}", p.name);
        if !self.scopes.is_empty() {
            note.push_str(&format!("; scopes {} held", self.scopes.join(" ")));
        }
        if !self.roles.is_empty() {
            note.push_str(&format!("; a role of {} held", self.roles.join(", ")));
        }
        Some(Verdict {
            note,
            upstream_headers: headers,
            claims: Some(claims.clone()),
            ..Verdict::default()
        })
    }

    async fn request(&self, req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        // Whatever happens, a client never gets to set the identity headers itself.
        state.edit_upstream_headers(&self.strip);
        let token = match extract_token(req.req, &self.provider) {
            Ok(t) => t,
            Err(r) => return Decision::Deny(r.to_error()),
        };
        let claims = match self.provider.verify(token).await {
            Ok(c) => c,
            Err(r) => return Decision::Deny(r.to_error()),
        };
        if let Err(e) = self.authorize(&claims) {
            // The token is valid, only not enough: who it was stays known, for the access log's
            // `principal` of the 403 (no claims, no headers: nothing goes upstream).
            state.identity.subject = claims.get("sub").and_then(Json::as_str).map(str::to_string);
            return Decision::Deny(e);
        }
        for (claim, header, optional) in &self.forward {
            match claim_header_value(claims.get(claim)) {
                Some(v) => state.set_upstream_header(header.clone(), v),
                None if *optional => {}
                None => {
                    return Decision::Deny(
                        GatewayError::new(
                            401,
                            "invalid_token",
                            format!("the token's `{claim}` claim is missing or not a plain value"),
                        )
                        .with_header(
                            http::header::WWW_AUTHENTICATE,
                            HeaderValue::from_static(
                                "Bearer realm=\"tollgate\", error=\"invalid_token\"",
                            ),
                        ),
                    )
                }
            }
        }
        state.identity.subject = claims.get("sub").and_then(Json::as_str).map(str::to_string);
        state.identity.claims = Some(claims);
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: &str) -> Provider {
        let cfg: ProviderConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Provider::build("t", &cfg, &|_| Err(std::io::Error::other("no files")))
            .map_err(|e| format!("{e:?}"))
            .unwrap()
    }

    fn hs(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn explain_decides_offline_as_the_request_phase_would() {
        let mut providers = crate::plugin::Providers::default();
        providers.jwt.insert(
            "p".into(),
            Arc::new(provider(&format!(
                "{{ algorithms: [HS256], secret: {SECRET}, issuer: me, audience: api }}"
            ))),
        );
        let ctx = BuildContext::detached(&providers);
        let cfg: JwtConfig = serde_yaml_ng::from_str(
            "{ provider: p, scopes: [orders], forward_claims: { sub: X-User-Id } }",
        )
        .unwrap();
        let auth = JwtAuth::build(cfg, &ctx).unwrap();
        let ask =
            |req: &pingora_http::RequestHeader, claims: Option<&Map<String, Json>>| -> Verdict {
                auth.explain(&ExplainRequest {
                    req,
                    client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                    path: "/",
                    route: "r",
                    claims,
                    consumer: None,
                })
                .unwrap()
            };
        let bare = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        assert_eq!(ask(&bare, None).answers, Some(401));
        // A real token, verified with the static key: its claims, and the header forwarded.
        let good = hs(
            serde_json::json!({"sub": "7", "scope": "orders", "exp": now() + 60, "iss": "me", "aud": "api"}),
            Algorithm::HS256,
            SECRET,
        );
        let mut req = bare.clone();
        req.insert_header("authorization", format!("Bearer {good}"))
            .unwrap();
        let v = ask(&req, None);
        assert_eq!(v.answers, None, "{v:?}");
        assert_eq!(v.upstream_headers, vec![("x-user-id".into(), "7".into())]);
        assert_eq!(v.claims.unwrap()["sub"], "7");
        // Expired, and signed with another secret: 401 with the proxy's reason.
        let expired = hs(
            serde_json::json!({"sub": "7", "exp": now() - 3600, "iss": "me", "aud": "api"}),
            Algorithm::HS256,
            SECRET,
        );
        let mut req = bare.clone();
        req.insert_header("authorization", format!("Bearer {expired}"))
            .unwrap();
        let v = ask(&req, None);
        assert_eq!(v.answers, Some(401));
        assert!(v.note.contains("expired"), "{v:?}");
        // Assumed claims without the scope: 403, as `authorize` decides.
        let claims: Map<String, Json> =
            serde_json::from_str(r#"{"sub": "7", "scope": "admin"}"#).unwrap();
        assert_eq!(ask(&bare, Some(&claims)).answers, Some(403));
    }

    #[tokio::test]
    async fn verifies_and_rejects() {
        let p = provider(&format!(
            "{{ algorithms: [HS256], secret: {SECRET}, issuer: me, audience: api }}"
        ));
        let good = hs(
            serde_json::json!({"sub": "1", "exp": now() + 60, "iss": "me", "aud": "api"}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(p.verify(&good).await.unwrap()["sub"], "1");
        let cases = [
            (
                serde_json::json!({"exp": now() - 31, "iss": "me", "aud": "api"}),
                Rejection::Expired,
            ),
            (
                serde_json::json!({"iss": "me", "aud": "api"}),
                Rejection::MissingExp,
            ),
            (
                serde_json::json!({"exp": now() + 60, "nbf": now() + 60, "iss": "me", "aud": "api"}),
                Rejection::NotYetValid,
            ),
            (
                serde_json::json!({"exp": now() + 60, "iss": "you", "aud": "api"}),
                Rejection::WrongIssuer,
            ),
            (
                serde_json::json!({"exp": now() + 60, "iss": "me", "aud": "web"}),
                Rejection::WrongAudience,
            ),
            (
                serde_json::json!({"exp": now() + 60, "iss": "me"}),
                Rejection::WrongAudience,
            ),
        ];
        for (claims, want) in cases {
            let t = hs(claims.clone(), Algorithm::HS256, SECRET);
            assert_eq!(p.verify(&t).await.unwrap_err(), want, "{claims}");
        }
        // Within the leeway: fine.
        let t = hs(
            serde_json::json!({"exp": now() - 10, "iss": "me", "aud": "api"}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(p.verify(&t).await.is_ok());
        // Another HMAC algorithm than allowed.
        let t = hs(
            serde_json::json!({"exp": now() + 60, "iss": "me", "aud": "api"}),
            Algorithm::HS512,
            SECRET,
        );
        assert_eq!(
            p.verify(&t).await.unwrap_err(),
            Rejection::AlgorithmNotAllowed
        );
        // Wrong secret.
        let t = hs(
            serde_json::json!({"exp": now() + 60, "iss": "me", "aud": "api"}),
            Algorithm::HS256,
            "another-secret-another-secret-xx",
        );
        assert_eq!(p.verify(&t).await.unwrap_err(), Rejection::BadSignature);
        assert_eq!(
            p.verify("not.a.token").await.unwrap_err(),
            Rejection::Malformed
        );
        // A byte outside ASCII anywhere, even next to a token verified (and cached) a moment ago.
        let (head, rest) = good.split_once('.').unwrap();
        for bad in [
            format!("{good}é"),
            format!("{head}é.{rest}"),
            format!("é{good}"),
            good.replacen('.', ".é", 2),
        ] {
            assert_eq!(
                p.verify(&bad).await.unwrap_err(),
                Rejection::Malformed,
                "{bad}"
            );
        }
        assert!(p.verify(&good).await.is_ok());
    }

    #[test]
    fn config_errors() {
        let cfg: ProviderConfig =
            serde_yaml_ng::from_str("{ algorithms: [HS256, none, RS256], secret: short }").unwrap();
        let errs = Provider::build("t", &cfg, &|_| Err(std::io::Error::other("x")))
            .err()
            .unwrap();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["algorithms[1]", "secret", "algorithms[2]"],
            "{errs:?}"
        );
    }

    #[tokio::test]
    async fn a_crit_header_is_refused() {
        let p = provider(&format!("{{ algorithms: [HS256], secret: {SECRET} }}"));
        let claims = serde_json::json!({"sub": "1", "exp": now() + 60});
        for crit in [vec!["exp"], vec!["b64"], vec![]] {
            let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
            h.crit = Some(crit.iter().map(|c| c.to_string()).collect());
            let t = jsonwebtoken::encode(
                &h,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap();
            assert_eq!(
                p.verify(&t).await.unwrap_err(),
                Rejection::CriticalExtension,
                "{crit:?}"
            );
        }
        // The same token without `crit` is fine.
        assert!(p
            .verify(&hs(claims, Algorithm::HS256, SECRET))
            .await
            .is_ok());
    }

    #[test]
    fn jwks_url_is_https_unless_loopback() {
        let build = |url: &str| {
            let cfg: ProviderConfig =
                serde_yaml_ng::from_str(&format!("{{ algorithms: [RS256], jwks_url: \"{url}\" }}"))
                    .unwrap();
            Provider::build("t", &cfg, &|_| Err(std::io::Error::other("x"))).err()
        };
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.8.7/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:1/jwks",
            "http://[::1]:8080/jwks",
        ] {
            assert!(build(ok).is_none(), "{ok}: {:?}", build(ok));
        }
        for bad in [
            "http://example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://localhost.example.com/jwks",
            "http://[::ffff:10.0.0.1]/jwks",
        ] {
            let errs = build(bad).unwrap_or_default();
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].0, "jwks_url");
            assert!(
                errs[0].1.contains("use https://")
                    && errs[0].1.contains("http is accepted only for loopback"),
                "{bad}: {errs:?}"
            );
        }
        let errs = build("ftp://idp/jwks").unwrap_or_default();
        assert_eq!(errs.len(), 1, "{errs:?}");
    }

    #[test]
    fn redirects_keep_the_scheme_and_are_few() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let https = u("https://idp.example.com/jwks");
        assert!(redirect_verdict(&https, &u("https://cdn.example.com/jwks"), 1).is_ok());
        assert!(redirect_verdict(&https, &u("https://cdn.example.com/jwks"), 3).is_ok());
        let e = redirect_verdict(&https, &u("http://idp.example.com/jwks"), 1).unwrap_err();
        assert!(e.contains("from https:// to http://"), "{e}");
        assert!(redirect_verdict(&https, &u("https://cdn.example.com/jwks"), 4).is_err());
        let local = u("http://127.0.0.1:1/jwks");
        assert!(redirect_verdict(&local, &u("http://localhost:2/jwks"), 1).is_ok());
        assert!(redirect_verdict(&local, &u("https://127.0.0.1:1/jwks"), 1).is_err());
        assert!(redirect_verdict(&local, &u("http://idp.example.com/jwks"), 1).is_err());
    }

    /// An HTTP server on 127.0.0.1 that answers every request with the raw bytes a test sets.
    struct RawServer {
        addr: std::net::SocketAddr,
        answer: Arc<std::sync::Mutex<Vec<u8>>>,
        hits: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl RawServer {
        fn start() -> RawServer {
            use std::io::{Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let answer = Arc::new(std::sync::Mutex::new(Vec::new()));
            let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (a, h) = (answer.clone(), hits.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                        head.push(byte[0]);
                    }
                    let answer = a.lock().unwrap().clone();
                    // The client may hang up half-way (a refused body): nothing to do then.
                    let _ = conn.write_all(&answer);
                }
            });
            RawServer { addr, answer, hits }
        }

        fn set(&self, raw: Vec<u8>) {
            *self.answer.lock().unwrap() = raw;
        }

        fn hits(&self) -> usize {
            self.hits.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    fn ok_answer(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Chunked, so no Content-Length warns of the size.
    fn chunked_answer(body: &str) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
        for chunk in body.as_bytes().chunks(64 * 1024) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn kids(p: &Provider) -> Vec<Option<String>> {
        p.keys.load().keys.iter().map(|k| k.kid.clone()).collect()
    }

    fn jwks_provider(server: &RawServer) -> Provider {
        provider(&format!(
            "{{ algorithms: [RS256], jwks_url: \"http://{}/jwks\", jwks_timeout: 5s }}",
            server.addr
        ))
    }

    #[tokio::test]
    async fn a_jwks_over_1_mib_is_refused_and_the_keys_stay() {
        let server = RawServer::start();
        let p = jwks_provider(&server);
        let j = p.jwks.as_ref().unwrap();
        server.set(ok_answer(&fixture("jwks-rsa1.json")));
        p.fetch(j).await.unwrap();
        assert_eq!(kids(&p), [Some("rsa-1".to_string())]);
        // A valid JWKS with another key, padded to 2 MiB: with and without Content-Length.
        let big = format!(
            "{}{}",
            " ".repeat(2 * MAX_JWKS_BYTES),
            fixture("jwks-rsa2.json")
        );
        for answer in [ok_answer(&big), chunked_answer(&big)] {
            server.set(answer);
            assert_eq!(p.fetch(j).await.unwrap_err(), "JWKS larger than 1 MiB");
            assert_eq!(
                kids(&p),
                [Some("rsa-1".to_string())],
                "the last good keys stay"
            );
        }
        // Exactly 1 MiB is still fine.
        let rsa2 = fixture("jwks-rsa2.json");
        let edge = format!("{}{rsa2}", " ".repeat(MAX_JWKS_BYTES - rsa2.len()));
        server.set(chunked_answer(&edge));
        p.fetch(j).await.unwrap();
        assert_eq!(kids(&p), [Some("rsa-2".to_string())]);
    }

    #[tokio::test]
    async fn jwks_redirects_are_capped_and_keep_the_scheme() {
        let server = RawServer::start();
        let p = jwks_provider(&server);
        let j = p.jwks.as_ref().unwrap();
        let redirect = |to: &str| {
            format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .into_bytes()
        };
        // To https on the same host: refused before any connection is made.
        server.set(redirect(&format!("https://{}/jwks", server.addr)));
        let e = p.fetch(j).await.unwrap_err();
        assert!(e.contains("from http:// to https://"), "{e}");
        assert_eq!(server.hits(), 1);
        // A loop: the first request and three redirects, then it stops.
        server.set(redirect("/jwks"));
        let e = p.fetch(j).await.unwrap_err();
        assert!(e.contains("more than 3 redirects"), "{e}");
        assert_eq!(server.hits(), 1 + 1 + MAX_JWKS_REDIRECTS);
    }

    #[test]
    fn scope_forms() {
        let c: Map<String, Json> =
            serde_json::from_value(serde_json::json!({"scope": "a b", "scp": ["c"]})).unwrap();
        let s = scopes(&c);
        assert!(s.contains("a") && s.contains("b") && s.contains("c"));
    }
}
