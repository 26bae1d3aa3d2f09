//! API keys: named key sets under `auth.api_keys` (keys stored only as SHA-256 hashes) and the `api_key`
//! plugin that requires one.
//!
//! The presented key is hashed and compared with *every* stored hash in constant time (no early exit), so
//! neither the position of a match nor the number of matching bytes shows in the response time. The key
//! is removed from the request before it goes upstream (header and query parameter): services get the
//! consumer id, never the secret.

use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{
    BuildContext, BuildError, Decision, ExplainRequest, HeaderEdit, Phases, Plugin, PluginState,
    RequestView, Verdict,
};
use crate::error::GatewayError;

/// `auth.api_keys.NAME` as written.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySetConfig {
    /// Header carrying the key (default `X-Api-Key`).
    #[serde(default = "default_header")]
    pub header: String,
    /// Also accept the key from this query parameter.
    #[serde(default)]
    pub query: Option<String>,
    pub keys: Vec<KeyConfig>,
}

fn default_header() -> String {
    "x-api-key".into()
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The consumer this key belongs to (forwarded upstream, used by rate limits).
    pub id: String,
    /// Hex SHA-256 of the key (`tollgate hash-key`).
    pub sha256: String,
}

/// A compiled key set.
pub struct KeySet {
    pub name: String,
    pub header: HeaderName,
    pub query: Option<String>,
    keys: Vec<(String, [u8; 32])>,
}

impl KeySet {
    /// Compile; errors are `(field, message)`.
    pub fn build(name: &str, cfg: &KeySetConfig) -> Result<KeySet, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let header = match HeaderName::from_bytes(cfg.header.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errs.push((
                    "header".into(),
                    format!("`{}` is not a valid header name", cfg.header),
                ));
                None
            }
        };
        let mut keys = Vec::new();
        if cfg.keys.is_empty() {
            errs.push(("keys".into(), "list at least one key".into()));
        }
        for (i, k) in cfg.keys.iter().enumerate() {
            let mut digest = [0u8; 32];
            match hex::decode_to_slice(k.sha256.trim(), &mut digest) {
                Ok(()) => keys.push((k.id.clone(), digest)),
                Err(_) => errs.push((
                    format!("keys[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key; `tollgate hash-key KEY` prints it)".into(),
                )),
            }
            if k.id.is_empty() || HeaderValue::from_str(&k.id).is_err() {
                errs.push((
                    format!("keys[{i}].id"),
                    "must be a non-empty, printable id".into(),
                ));
            }
            if cfg.keys[..i].iter().any(|o| o.id == k.id) {
                errs.push((
                    format!("keys[{i}].id"),
                    format!("duplicate key id `{}`", k.id),
                ));
            }
        }
        match header {
            Some(header) if errs.is_empty() => Ok(KeySet {
                name: name.to_string(),
                header,
                query: cfg.query.clone(),
                keys,
            }),
            _ => Err(errs),
        }
    }

    /// The consumer id of `presented`, comparing against every key in constant time.
    pub fn lookup(&self, presented: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found: Option<&str> = None;
        for (id, stored) in &self.keys {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(id);
            }
        }
        found
    }
}

/// Hex SHA-256 of a key, as stored in config.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The `api_key` plugin's config.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Name under `auth.api_keys`.
    pub provider: String,
    /// Header that tells the upstream who the consumer is (client-sent copies are removed).
    #[serde(default = "default_forward")]
    pub forward_as: String,
}

fn default_forward() -> String {
    "x-consumer-id".into()
}

pub struct ApiKeyAuth {
    set: Arc<KeySet>,
    forward_as: HeaderName,
    /// The consumer header and the key header, removed from every request (a client never sets the
    /// consumer, and the secret never goes upstream).
    strip: Arc<[HeaderEdit]>,
    /// `WWW-Authenticate` of the 401.
    challenge: HeaderValue,
    query: Vec<String>,
}

impl ApiKeyAuth {
    pub fn build(cfg: ApiKeyConfig, ctx: &BuildContext) -> Result<ApiKeyAuth, BuildError> {
        let set = ctx.api_key_set(&cfg.provider)?;
        let forward_as = super::header_name(&cfg.forward_as, "forward_as")?;
        let challenge = HeaderValue::from_str(&format!(
            "ApiKey realm=\"tollgate\", header=\"{}\"",
            set.header
        ))
        .unwrap_or(HeaderValue::from_static("ApiKey"));
        Ok(ApiKeyAuth {
            strip: Arc::new([
                HeaderEdit::Remove(forward_as.clone()),
                HeaderEdit::Remove(set.header.clone()),
            ]),
            challenge,
            query: set.query.iter().cloned().collect(),
            set,
            forward_as,
        })
    }

    /// Every key the request presents (its header, and the query parameter if the set has one).
    fn presented<'a>(&'a self, req: &'a pingora_http::RequestHeader) -> Vec<&'a [u8]> {
        let mut presented: Vec<&[u8]> = req
            .headers
            .get_all(&self.set.header)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if let Some(q) = &self.set.query {
            presented.extend(super::query_params(req.uri.query(), q).map(str::as_bytes));
        }
        presented
    }

    fn unauthorized(&self, code: &'static str, message: &'static str) -> GatewayError {
        GatewayError::new(401, code, message)
            .with_header(http::header::WWW_AUTHENTICATE, self.challenge.clone())
    }
}

#[async_trait]
impl Plugin for ApiKeyAuth {
    fn name(&self) -> &'static str {
        "api_key"
    }

    fn auth_failure_reasons(&self) -> &'static [&'static str] {
        &["unauthenticated", "invalid_api_key"]
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn removes_query_params(&self) -> &[String] {
        &self.query
    }

    fn explain(&self, req: &ExplainRequest<'_>) -> Option<Verdict> {
        let set = &self.set;
        Some(match self.presented(req.req).as_slice() {
            [] => Verdict::answer(401, format!("key set {}: no API key → 401", set.name)),
            [one] => match set.lookup(one) {
                Some(id) => Verdict {
                    note: format!("key set {}: key of consumer `{id}`", set.name),
                    upstream_headers: vec![(self.forward_as.to_string(), id.to_string())],
                    consumer: Some(id.to_string()),
                    ..Verdict::default()
                },
                None => Verdict::answer(
                    401,
                    format!("key set {}: the API key is not valid → 401", set.name),
                ),
            },
            _ => Verdict::answer(
                401,
                format!("key set {}: more than one API key → 401", set.name),
            ),
        })
    }

    async fn request(&self, req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        let set = &self.set;
        state.edit_upstream_headers(&self.strip);
        let presented = self.presented(req.req);
        let key = match presented.as_slice() {
            [] => {
                return Decision::Deny(
                    self.unauthorized("unauthenticated", "an API key is required"),
                )
            }
            [one] => *one,
            _ => {
                return Decision::Deny(
                    self.unauthorized("invalid_api_key", "more than one API key was sent"),
                )
            }
        };
        match set.lookup(key) {
            Some(id) => {
                if let Ok(v) = HeaderValue::from_str(id) {
                    state.set_upstream_header(self.forward_as.clone(), v);
                }
                state.identity.consumer = Some(id.to_string());
                Decision::Continue
            }
            None => {
                Decision::Deny(self.unauthorized("invalid_api_key", "the API key is not valid"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_hash() {
        let cfg = KeySetConfig {
            header: "x-api-key".into(),
            query: None,
            keys: vec![
                KeyConfig {
                    id: "acme".into(),
                    sha256: hash_key("acme-key"),
                },
                KeyConfig {
                    id: "globex".into(),
                    sha256: hash_key("globex-key"),
                },
            ],
        };
        let set = KeySet::build("p", &cfg).unwrap();
        assert_eq!(set.lookup(b"globex-key"), Some("globex"));
        assert_eq!(set.lookup(b"acme-key"), Some("acme"));
        assert_eq!(set.lookup(b"acme-kez"), None);
        assert_eq!(set.lookup(b""), None);
        let bad = KeySetConfig {
            keys: vec![KeyConfig {
                id: "".into(),
                sha256: "zz".into(),
            }],
            ..cfg
        };
        let errs = KeySet::build("p", &bad).err().unwrap();
        assert_eq!(errs.len(), 2);
    }
}
