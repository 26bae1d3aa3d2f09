//! A plugin of your own, registered next to the built-ins and configured from YAML like them.
//!
//! `tenant_header` refuses requests without an `X-Tenant` header from its allowed list, and tells the
//! upstream which tenant it is. Run it with a config whose route says
//! `plugins: [{ tenant_header: { allow: [acme, globex] } }]`:
//!
//! ```sh
//! cargo run --example custom_plugin -- run -c gateway/examples/custom-plugin.yaml
//! ```

use async_trait::async_trait;
use serde::Deserialize;
use tollgate::error::GatewayError;
use tollgate::plugin::{
    BuildContext, BuildError, Decision, Plugin, PluginState, Registry, RequestView,
};

/// The plugin's config, straight from YAML. `deny_unknown_fields` makes typos load-time errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    allow: Vec<String>,
}

struct TenantHeader {
    allow: Vec<String>,
}

#[async_trait]
impl Plugin for TenantHeader {
    fn name(&self) -> &'static str {
        "tenant_header"
    }

    async fn request(&self, req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        let tenant = req
            .req
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok());
        match tenant {
            Some(t) if self.allow.iter().any(|a| a == t) => {
                if let Ok(v) = http::HeaderValue::from_str(t) {
                    state
                        .set_upstream_header(http::HeaderName::from_static("x-tenant-verified"), v);
                }
                Decision::Continue
            }
            _ => Decision::Deny(GatewayError::new(
                403,
                "unknown_tenant",
                "send a known X-Tenant",
            )),
        }
    }
}

/// The whole `tollgate` command line (`run`, `validate`, `routes`, ...) with `tenant_header` known
/// beside the built-ins: `validate` checks its config, and reloads keep it.
fn main() -> std::process::ExitCode {
    let mut registry = Registry::builtin();
    registry.register("tenant_header", |cfg: TenantConfig, _ctx: &BuildContext| {
        if cfg.allow.is_empty() {
            return Err(BuildError::at("allow", "list at least one tenant"));
        }
        Ok(TenantHeader { allow: cfg.allow })
    });
    tollgate::cli::main_with(registry)
}
