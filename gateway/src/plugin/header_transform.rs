//! `headers`: add, set or remove request headers (before proxying) and response headers (before the
//! client sees them). Runs after the gateway's own header handling, so it can override `Host` or add to
//! `X-Forwarded-*` deliberately.

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    BuildContext, BuildError, Decision, ExplainRequest, HeaderEdit, Phases, Plugin, PluginState,
    RequestView, Verdict,
};

#[derive(Debug, Clone, Deserialize, Default, serde::Serialize, schemars::JsonSchema)]
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

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
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

/// Remove, then set, then add (the order the request edits are made in too).
fn apply(o: &Ops, h: &mut ResponseHeader) {
    for name in &o.remove {
        h.remove_header(name);
    }
    for (k, v) in &o.set {
        let _ = h.insert_header(k.clone(), v.clone());
    }
    for (k, v) in &o.add {
        let _ = h.append_header(k.clone(), v.clone());
    }
}

pub struct HeaderTransform {
    /// The request edits, in the order applied (remove, set, add), as one list shared by every request.
    request: Arc<[HeaderEdit]>,
    response: Ops,
}

impl HeaderTransform {
    pub fn build(
        cfg: HeaderTransformConfig,
        _ctx: &BuildContext,
    ) -> Result<HeaderTransform, BuildError> {
        let r = compile(&cfg.request, "request")?;
        let request = r
            .remove
            .into_iter()
            .map(HeaderEdit::Remove)
            .chain(r.set.into_iter().map(|(k, v)| HeaderEdit::Set(k, v)))
            .chain(r.add.into_iter().map(|(k, v)| HeaderEdit::Append(k, v)))
            .collect();
        Ok(HeaderTransform {
            request,
            response: compile(&cfg.response, "response")?,
        })
    }
}

#[async_trait]
impl Plugin for HeaderTransform {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn phases(&self) -> Phases {
        let o = &self.response;
        let response = !(o.remove.is_empty() && o.set.is_empty() && o.add.is_empty());
        match (self.request.is_empty(), response) {
            (false, true) => Phases::REQUEST | Phases::RESPONSE,
            (false, false) => Phases::REQUEST,
            (true, true) => Phases::RESPONSE,
            (true, false) => Phases::NONE,
        }
    }

    /// Request edits are recorded in the request phase (not applied to the upstream request later), so
    /// that balancing on a header sees them, in chain order with other plugins' edits.
    async fn request(&self, _req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        state.edit_upstream_headers(&self.request);
        Decision::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, _req: &RequestHeader, _state: &PluginState) {
        apply(&self.response, resp);
    }

    fn explain(&self, _req: &ExplainRequest<'_>) -> Option<Verdict> {
        let mut v = Verdict::default();
        let mut said = Vec::new();
        for e in self.request.iter() {
            let text = |val: &HeaderValue| String::from_utf8_lossy(val.as_bytes()).into_owned();
            match e {
                HeaderEdit::Remove(h) => said.push(format!("removes {h}")),
                HeaderEdit::Set(h, val) => {
                    said.push(format!("sets {h}"));
                    v.upstream_headers.push((h.to_string(), text(val)));
                }
                HeaderEdit::Append(h, val) => {
                    said.push(format!("adds {h}"));
                    v.upstream_headers.push((h.to_string(), text(val)));
                }
            }
        }
        let o = &self.response;
        if !(o.remove.is_empty() && o.set.is_empty() && o.add.is_empty()) {
            said.push(format!(
                "edits {} response header(s)",
                o.remove.len() + o.set.len() + o.add.len()
            ));
        }
        v.note = if said.is_empty() {
            "no edits".to_string()
        } else {
            said.join(", ")
        };
        Some(v)
    }
}
