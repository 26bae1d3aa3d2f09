//! The config's JSON Schema (`tollgate schema`, shipped as `config/tollgate.schema.json`): derived from
//! the raw types ([`super::raw`]) and the built-in plugins' config types, so descriptions are their doc
//! comments and defaults their serde defaults. Editors use it to complete and check fields; the loader
//! stays the authority (it checks what a schema cannot: names that must exist, ranges, regexes).

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::config::raw;
use crate::plugin::{apikey, body_limit, cors, header_transform, ip_filter, jwt, ratelimit};

/// The whole file: the core sections and the built-in plugins' top-level sections.
struct TollgateConfig;

/// One entry of a `plugins:` list: a bare name or `{name: config}` of a built-in plugin.
struct PluginEntry;

/// The built-in plugins' names with their config's schema (the `builtin_plugins_are_all_in_the_schema`
/// test keeps this in step with [`crate::plugin::Registry::builtin`]).
fn builtin_plugins(g: &mut SchemaGenerator) -> Vec<(&'static str, Schema)> {
    vec![
        ("api_key", g.subschema_for::<apikey::ApiKeyConfig>()),
        (
            "body_limit",
            g.subschema_for::<body_limit::BodyLimitConfig>(),
        ),
        ("cors", g.subschema_for::<cors::CorsConfig>()),
        (
            "headers",
            g.subschema_for::<header_transform::HeaderTransformConfig>(),
        ),
        ("ip_filter", g.subschema_for::<ip_filter::IpFilterConfig>()),
        ("jwt", g.subschema_for::<jwt::JwtConfig>()),
        (
            "rate_limit",
            g.subschema_for::<ratelimit::RateLimitConfig>(),
        ),
    ]
}

impl JsonSchema for PluginEntry {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PluginEntry".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let plugins = builtin_plugins(g);
        let names: Vec<&str> = plugins.iter().map(|(n, _)| *n).collect();
        let mut one_of = vec![json_schema!({
            "description": "A plugin with its default config.",
            "enum": names,
        })];
        for (name, config) in plugins {
            one_of.push(json_schema!({
                "type": "object",
                "properties": { name: config },
                "required": [name],
                "additionalProperties": false,
            }));
        }
        json_schema!({
            "description": "A plugin: its name, or `{name: config}` (a single key).",
            "oneOf": one_of,
        })
    }
}

impl JsonSchema for TollgateConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TollgateConfig".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let server = g.subschema_for::<raw::ServerConfig>();
        let upstream = g.subschema_for::<raw::UpstreamConfig>();
        let route = g.subschema_for::<raw::RouteConfig>();
        // Defines `PluginEntry`, which `raw::plugin_entries` refers to.
        let entry = g.subschema_for::<PluginEntry>();
        let tracing = g.subschema_for::<raw::TracingConfig>();
        let include = crate::config::include::include_schema(g);
        let jwt_provider = g.subschema_for::<jwt::ProviderConfig>();
        let key_set = g.subschema_for::<apikey::KeySetConfig>();
        let redis = g.subschema_for::<ratelimit::RedisConfig>();
        let policy = g.subschema_for::<ratelimit::PolicyConfig>();
        json_schema!({
            "title": "Tollgate config",
            "description": "The config file of the Tollgate API gateway (see the README's Configuration reference).",
            "type": "object",
            "properties": {
                "server": server,
                "upstreams": {
                    "description": "Upstreams by name: where routes send requests.",
                    "type": "object",
                    "additionalProperties": upstream,
                },
                "routes": {
                    "description": "Routes, matched by the router's documented priority.",
                    "type": "array",
                    "items": route,
                },
                "plugins": {
                    "description": "Plugins every route runs, before its own.",
                    "type": ["array", "null"],
                    "items": entry,
                },
                "tracing": tracing,
                "include": include,
                "auth": {
                    "description": "Authentication providers the `jwt` and `api_key` plugins name.",
                    "type": ["object", "null"],
                    "properties": {
                        "jwt": {
                            "description": "JWT providers by name.",
                            "type": ["object", "null"],
                            "additionalProperties": jwt_provider,
                        },
                        "api_keys": {
                            "description": "API key sets by name.",
                            "type": ["object", "null"],
                            "additionalProperties": key_set,
                        },
                    },
                    "additionalProperties": false,
                },
                "redis": redis,
                "rate_limits": {
                    "description": "Rate-limit policies by name, which `rate_limit` plugins name.",
                    "type": ["object", "null"],
                    "additionalProperties": policy,
                },
            },
            "additionalProperties": false,
        })
    }
}

/// The schema as `tollgate schema` prints it (and `config/tollgate.schema.json` holds it).
pub fn schema() -> serde_json::Value {
    let g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    g.into_root_schema_for::<TollgateConfig>().to_value()
}

/// [`schema`] as pretty JSON with a final newline.
pub fn schema_json() -> String {
    let mut s = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_plugins_are_all_in_the_schema() {
        let mut g = SchemaGenerator::default();
        let mut ours: Vec<&str> = builtin_plugins(&mut g).iter().map(|(n, _)| *n).collect();
        ours.sort_unstable();
        assert_eq!(ours, crate::plugin::Registry::builtin().names());
    }
}
