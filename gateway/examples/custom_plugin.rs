//! A plugin of your own, registered next to the built-ins and configured from YAML like them.
//!
//! `tenant_header` refuses requests without an `X-Tenant` header from its allowed list and tells the
//! upstream which tenant it is (request phase); sends a tenant with a backend of its own there
//! (upstream-selection phase); can hide the upstream's error pages behind one JSON answer
//! (upstream-response phase); and counts the body bytes each tenant is sent (response-body and log
//! phases). What it knows about a request is kept in a typed slot. Run it with a config whose route says
//! `plugins: [{ tenant_header: { allow: [acme, globex] } }]`:
//!
//! ```sh
//! cargo run --example custom_plugin -- run -c gateway/examples/custom-plugin.yaml
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use tollgate::error::GatewayError;
use tollgate::plugin::{
    BuildContext, BuildError, Decision, Phases, Pick, Plugin, PluginState, Registry, RequestView,
    UpstreamView,
};

/// The plugin's config, straight from YAML. `deny_unknown_fields` makes typos load-time errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    allow: Vec<String>,
    /// Tenants served by a backend of their own, by address.
    #[serde(default)]
    pin: BTreeMap<String, SocketAddr>,
    /// Answer `502 upstream_failed` instead of passing on an upstream's `5xx` (and its error page).
    #[serde(default)]
    hide_errors: bool,
}

struct TenantHeader {
    allow: Vec<String>,
    pin: BTreeMap<String, SocketAddr>,
    hide_errors: bool,
}

/// What this plugin knows about one request. The type is private to this file, so no other plugin can
/// read or change it.
struct Tenant {
    name: String,
    body_bytes: u64,
}

#[async_trait]
impl Plugin for TenantHeader {
    fn name(&self) -> &'static str {
        "tenant_header"
    }

    /// The chain calls this plugin in these phases only.
    fn phases(&self) -> Phases {
        let mut p = Phases::REQUEST | Phases::RESPONSE_BODY | Phases::LOG;
        if !self.pin.is_empty() {
            p = p | Phases::SELECT_UPSTREAM;
        }
        if self.hide_errors {
            p = p | Phases::UPSTREAM_RESPONSE;
        }
        p
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
                state.set_slot(Tenant {
                    name: t.to_string(),
                    body_bytes: 0,
                });
                Decision::Continue
            }
            _ => Decision::Deny(GatewayError::new(
                403,
                "unknown_tenant",
                "send a known X-Tenant",
            )),
        }
    }

    async fn select_upstream(&self, _req: &UpstreamView<'_>, state: &mut PluginState) -> Pick {
        let pinned = state.slot::<Tenant>().and_then(|t| self.pin.get(&t.name));
        match pinned {
            Some(addr) => Pick::Target(*addr),
            None => Pick::Balancer,
        }
    }

    async fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        _req: &RequestHeader,
        state: &mut PluginState,
    ) -> Decision {
        if !resp.status.is_server_error() {
            return Decision::Continue;
        }
        let tenant = state.slot::<Tenant>().map_or("?", |t| t.name.as_str());
        Decision::Deny(GatewayError::new(
            502,
            "upstream_failed",
            format!("the service failed for tenant {tenant}; try again"),
        ))
    }

    fn response_body(
        &self,
        body: &mut Option<Bytes>,
        _end: bool,
        state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        if let (Some(t), Some(chunk)) = (state.slot_mut::<Tenant>(), body.as_ref()) {
            t.body_bytes += chunk.len() as u64;
        }
        Ok(())
    }

    fn log(&self, status: u16, state: &PluginState) {
        if let Some(t) = state.slot::<Tenant>() {
            log::info!("tenant {}: {status}, {} body bytes", t.name, t.body_bytes);
        }
    }
}

/// The whole `tollgate` command line (`run`, `validate`, `routes`, ...) with `tenant_header` known
/// beside the built-ins: `validate` checks its config, and reloads keep it.
fn main() -> std::process::ExitCode {
    let mut registry = Registry::builtin();
    // A name that is taken (`jwt`, or this one twice) is refused, never swapped in.
    let registered =
        registry.register("tenant_header", |cfg: TenantConfig, _ctx: &BuildContext| {
            if cfg.allow.is_empty() {
                return Err(BuildError::at("allow", "list at least one tenant"));
            }
            Ok(TenantHeader {
                allow: cfg.allow,
                pin: cfg.pin,
                hide_errors: cfg.hide_errors,
            })
        });
    if let Err(e) = registered {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    tollgate::cli::main_with(registry)
}
