//! `headers`: add, set or remove request headers (before proxying) and response headers (before the
//! client sees them). Runs after the gateway's own header handling, so it can override `Host` or add to
//! `X-Forwarded-*` deliberately.

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;

use super::{BuildContext, BuildError, Decision, Plugin, PluginState, RequestView};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these headers (keeping existing values).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderTransformConfig {
    #[serde(default)]
    pub request: HeaderOps,
    #[serde(default)]
    pub response: HeaderOps,
}

#[derive(Default)]
struct Ops {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn compile(ops: &HeaderOps, base: &str) -> Result<Ops, BuildError> {
    let pairs = |m: &BTreeMap<String, String>,
                 field: &str|
     -> Result<Vec<(HeaderName, HeaderValue)>, BuildError> {
        m.iter()
            .map(|(k, v)| {
                let at = format!("{base}.{field}.{k}");
                Ok((super::header_name(k, &at)?, super::header_value(v, &at)?))
            })
            .collect()
    };
    Ok(Ops {
        remove: ops
            .remove
            .iter()
            .enumerate()
            .map(|(i, h)| super::header_name(h, &format!("{base}.remove[{i}]")))
            .collect::<Result<_, _>>()?,
        set: pairs(&ops.set, "set")?,
        add: pairs(&ops.add, "add")?,
    })
}

/// Remove, then set, then add: the same on request and response headers (two types with the same
/// methods, hence a macro rather than a trait of our own).
macro_rules! apply {
    ($ops:expr, $h:expr) => {{
        let (o, h) = ($ops, $h);
        for name in &o.remove {
            h.remove_header(name);
        }
        for (k, v) in &o.set {
            let _ = h.insert_header(k.clone(), v.clone());
        }
        for (k, v) in &o.add {
            let _ = h.append_header(k.clone(), v.clone());
        }
    }};
}

pub struct HeaderTransform {
    request: Ops,
    response: Ops,
}

impl HeaderTransform {
    pub fn build(
        cfg: HeaderTransformConfig,
        _ctx: &BuildContext,
    ) -> Result<HeaderTransform, BuildError> {
        Ok(HeaderTransform {
            request: compile(&cfg.request, "request")?,
            response: compile(&cfg.response, "response")?,
        })
    }
}

#[async_trait]
impl Plugin for HeaderTransform {
    fn name(&self) -> &'static str {
        "headers"
    }

    /// Request edits are recorded in the request phase (not applied to the upstream request later), so
    /// that balancing on a header sees them, in chain order with other plugins' edits.
    async fn request(&self, _req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        let o = &self.request;
        for name in &o.remove {
            state.remove_upstream_header(name.clone());
        }
        for (k, v) in &o.set {
            state.set_upstream_header(k.clone(), v.clone());
        }
        for (k, v) in &o.add {
            state.append_upstream_header(k.clone(), v.clone());
        }
        Decision::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, _req: &RequestHeader, _state: &PluginState) {
        apply!(&self.response, resp);
    }
}
