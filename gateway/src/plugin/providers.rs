//! The built-in plugins' own config sections, compiled into [`Providers`]: `auth` (`jwt` and
//! `api_keys` providers), `redis` (the shared rate-limit store) and `rate_limits` (policies). They are
//! registered with [`Registry::builtin`](super::Registry::builtin) like a custom plugin registers its
//! own ([`Registry::register_section`](super::Registry::register_section)).
//!
//! Each provider is deserialized on its own, so a broken one hides no other's problems; one that does
//! not compile is remembered in [`Providers::failed`], so that a plugin naming it is not reported again.

use std::sync::Arc;

use serde_yaml_ng::Value;

use super::{apikey, jwt, ratelimit, Providers};
use crate::config::load::section;
use crate::config::sink::Scope;

/// `auth: { jwt: {NAME: ...}, api_keys: {NAME: ...} }`. A reload keeps the JWKS keys a provider of
/// the same name had fetched. Key files are read relative to the config file.
pub(super) fn auth(v: &Value, at: &Scope, out: &mut Providers, previous: Option<&Providers>) {
    let Value::Mapping(kinds) = v else {
        if !v.is_null() {
            at.error("expected a mapping with `jwt` and/or `api_keys`");
        }
        return;
    };
    let read = |f: &str| std::fs::read(at.config_relative(f));
    for (kind, providers) in kinds {
        let kind = kind.as_str().unwrap_or_default();
        let here = at.at(kind);
        match kind {
            "jwt" => each(providers, &here, |name, v, at| {
                let built = section::<jwt::ProviderConfig>(v.clone(), at)
                    .and_then(|c| reported(at, jwt::Provider::build(name, &c, &read)));
                match built {
                    Some(p) => {
                        if let Some(old) = previous.and_then(|s| s.jwt.get(name)) {
                            p.inherit_keys(old);
                        }
                        out.jwt.insert(name.to_string(), Arc::new(p));
                    }
                    None => {
                        out.failed.insert(name.to_string());
                    }
                }
            }),
            "api_keys" => each(providers, &here, |name, v, at| {
                match section::<apikey::KeySetConfig>(v.clone(), at)
                    .and_then(|c| reported(at, apikey::KeySet::build(name, &c)))
                {
                    Some(k) => {
                        out.api_keys.insert(name.to_string(), Arc::new(k));
                    }
                    None => {
                        out.failed.insert(name.to_string());
                    }
                }
            }),
            other => here.error_at_key(format!(
                "unknown field `{other}`, expected `jwt` or `api_keys`"
            )),
        }
    }
}

/// `redis: { url, ... }`, the store of policies with `store: redis`. An empty `redis:` is refused for
/// its missing `url`.
pub(super) fn redis(v: &Value, at: &Scope, out: &mut Providers, _previous: Option<&Providers>) {
    out.redis_configured = true;
    if let Some(c) = section::<ratelimit::RedisConfig>(v.clone(), at) {
        if let Some(store) = reported(at, ratelimit::RedisStore::build(&c)) {
            out.redis = Some(Arc::new(store));
        }
    }
}

/// `rate_limits: {NAME: policy}`. Compiled after `redis`. A reload keeps the counters of a policy that
/// counts by the same key (see [`ratelimit::Policy::build`]).
pub(super) fn rate_limits(
    v: &Value,
    at: &Scope,
    out: &mut Providers,
    previous: Option<&Providers>,
) {
    let redis = out.redis_configured;
    each(v, at, |name, v, at| {
        let old = previous.and_then(|s| s.rate_limits.get(name)).map(|p| &**p);
        match section::<ratelimit::PolicyConfig>(v.clone(), at)
            .and_then(|c| reported(at, ratelimit::Policy::build(name, &c, redis, old)))
        {
            Some(p) => {
                out.rate_limits.insert(name.to_string(), Arc::new(p));
            }
            None => {
                out.failed.insert(name.to_string());
            }
        }
    });
}

/// Each `NAME: definition` of a mapping, with the scope of the definition.
fn each(v: &Value, at: &Scope, mut f: impl FnMut(&str, &Value, &Scope)) {
    match v {
        Value::Mapping(m) => {
            for (name, item) in m {
                let name = match name {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                };
                f(&name, item, &at.at(&name));
            }
        }
        Value::Null => {}
        _ => at.error("expected a mapping of name to definition"),
    }
}

/// A provider's build result, its problems (`(field, message)`, relative to `at`) reported.
fn reported<T>(at: &Scope, built: Result<T, Vec<(String, String)>>) -> Option<T> {
    built
        .map_err(|errs| {
            for (field, msg) in errs {
                at.sub(&field).error(msg);
            }
        })
        .ok()
}
