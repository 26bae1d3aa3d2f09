//! The plugins' named providers (`auth.jwt`, `auth.api_keys`, `rate_limits`, `redis`) and the plugin
//! chains (`plugins:` and each route's).
//!
//! The raw config keeps the provider sections as written; their types belong to the plugins, so they are
//! deserialized here, each provider on its own, with its problems reported at its place. A provider that
//! does not compile is remembered as failed, so that a plugin naming it is not reported again.

use std::sync::Arc;

use serde_yaml_ng::Value;

use super::config_relative;
use crate::config::load::section;
use crate::config::raw::RawConfig;
use crate::config::sink::Scope;
use crate::plugin::{apikey, jwt, ratelimit, Plugin, Providers, Registry};
use crate::snapshot::Snapshot;

/// Compile every provider (`root` is the file's scope). A reload takes over what `previous` learned:
/// JWKS keys of a provider of the same name, and the counters of a rate-limit policy that counts by
/// the same key (see [`ratelimit::Policy::build`]).
pub(super) fn providers(cfg: &RawConfig, root: &Scope, previous: Option<&Snapshot>) -> Providers {
    let mut out = Providers::default();
    let read = |f: &str| std::fs::read(config_relative(root, f));
    let auth = root.at("auth");
    for (name, v) in &cfg.auth.jwt {
        let at = auth.at("jwt").at(name);
        let built = section::<jwt::ProviderConfig>(v.clone(), &at)
            .and_then(|c| reported(&at, jwt::Provider::build(name, &c, &read)));
        match built {
            Some(p) => {
                if let Some(old) = previous.and_then(|s| s.jwt.get(name)) {
                    p.inherit_keys(old);
                }
                out.jwt.insert(name.clone(), Arc::new(p));
            }
            None => {
                out.failed.insert(name.clone());
            }
        }
    }
    for (name, v) in &cfg.auth.api_keys {
        let at = auth.at("api_keys").at(name);
        match section::<apikey::KeySetConfig>(v.clone(), &at)
            .and_then(|c| reported(&at, apikey::KeySet::build(name, &c)))
        {
            Some(k) => {
                out.api_keys.insert(name.clone(), Arc::new(k));
            }
            None => {
                out.failed.insert(name.clone());
            }
        }
    }
    let redis = cfg.redis.as_ref().and_then(|v| {
        let at = root.at("redis");
        section::<ratelimit::RedisConfig>(v.clone(), &at).inspect(|c| {
            if let Some(store) = reported(&at, ratelimit::RedisStore::build(c)) {
                out.redis = Some(Arc::new(store));
            }
        })
    });
    for (name, v) in &cfg.rate_limits {
        let at = root.at("rate_limits").at(name);
        let old = previous.and_then(|s| s.rate_limits.get(name)).map(|p| &**p);
        match section::<ratelimit::PolicyConfig>(v.clone(), &at).and_then(|c| {
            reported(
                &at,
                ratelimit::Policy::build(name, &c, redis.is_some(), old),
            )
        }) {
            Some(p) => {
                out.rate_limits.insert(name.clone(), Arc::new(p));
            }
            None => {
                out.failed.insert(name.clone());
            }
        }
    }
    out
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

/// Build a list of plugin entries (`at` is `plugins` or `routes[3].plugins`); problems are reported at
/// each entry, and the entries that built are returned.
pub(super) fn chain(
    entries: &[Value],
    at: &Scope,
    registry: &Registry,
    providers: &Providers,
) -> Vec<Arc<dyn Plugin>> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| registry.build_at(entry, providers, &at.idx(i)))
        .collect()
}
