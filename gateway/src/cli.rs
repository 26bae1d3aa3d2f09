//! Helpers of the `tollgate` command line that are worth testing on their own.

use crate::config::load;
use crate::config::units::parse_duration;

/// Mint a development token signed with a JWT provider's HMAC secret, with the provider's issuer and
/// (first) audience, so that the gateway running that config accepts it.
pub fn mint_token(
    config: &str,
    provider: Option<&str>,
    sub: &str,
    scopes: &[String],
    roles: &[String],
    claims: &[String],
    ttl: &str,
) -> Result<String, String> {
    let loaded = load::load_file(config).map_err(|d| d.to_string())?;
    if loaded.diagnostics.has_errors() {
        return Err(loaded.diagnostics.to_string());
    }
    let providers = &loaded.config.auth.jwt;
    let with_secret: Vec<&String> = providers
        .iter()
        .filter(|(_, p)| p.secret.is_some())
        .map(|(n, _)| n)
        .collect();
    let name = match provider {
        Some(p) => p.to_string(),
        None => match with_secret.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(format!("{config} has no JWT provider with a `secret`")),
            many => {
                return Err(format!(
                "{config} has several JWT providers with a secret ({}): pick one with --provider",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            }
        },
    };
    let p = providers
        .get(&name)
        .ok_or_else(|| format!("no JWT provider `{name}` in {config}"))?;
    let secret = p
        .secret
        .as_deref()
        .ok_or_else(|| format!("provider `{name}` has no `secret` to sign with"))?;
    let alg = p
        .algorithms
        .iter()
        .filter_map(|a| a.parse::<jsonwebtoken::Algorithm>().ok())
        .find(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        })
        .ok_or_else(|| format!("provider `{name}` allows no HMAC algorithm"))?;
    let ttl = parse_duration(ttl)?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut body = serde_json::Map::new();
    body.insert("sub".into(), sub.into());
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), (now + ttl.as_secs()).into());
    if let Some(iss) = &p.issuer {
        body.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = p.audience.to_vec().first() {
        body.insert("aud".into(), aud.clone().into());
    }
    if !scopes.is_empty() {
        body.insert("scope".into(), scopes.join(" ").into());
    }
    if !roles.is_empty() {
        body.insert("roles".into(), roles.to_vec().into());
    }
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim `{c}`: write name=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        body.insert(k.to_string(), v);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &body,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}
