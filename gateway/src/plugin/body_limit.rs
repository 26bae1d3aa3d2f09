//! `body_limit`: refuse request bodies over `max` with 413. A `Content-Length` over the limit is refused
//! before anything is read or proxied; a chunked (or lying) body is cut off as soon as the bytes received
//! pass the limit. With several `body_limit`s in a chain (a global one and a route's) the smallest wins.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::{
    BuildContext, BuildError, Decision, ExplainRequest, Phases, Plugin, PluginState, RequestView,
    Verdict,
};
use crate::config::units::ByteSize;
use crate::error::GatewayError;

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyLimitConfig {
    pub max: ByteSize,
}

pub struct BodyLimit {
    max: u64,
}

impl BodyLimit {
    pub fn build(cfg: BodyLimitConfig, _ctx: &BuildContext) -> Result<BodyLimit, BuildError> {
        if cfg.max.0 == 0 {
            return Err(BuildError::at("max", "must be greater than zero"));
        }
        Ok(BodyLimit { max: cfg.max.0 })
    }
}

/// The body length the request declares, if it declares one that parses.
fn declared_length(req: &pingora_http::RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

pub fn too_large(max: u64) -> GatewayError {
    GatewayError::new(
        413,
        "payload_too_large",
        format!("the request body exceeds {max} bytes"),
    )
}

#[async_trait]
impl Plugin for BodyLimit {
    fn name(&self) -> &'static str {
        "body_limit"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::REQUEST_BODY
    }

    fn explain(&self, req: &ExplainRequest<'_>) -> Option<Verdict> {
        let max = self.max;
        Some(match declared_length(req.req) {
            Some(n) if n > max => {
                Verdict::answer(413, format!("Content-Length {n} > {max} bytes → 413"))
            }
            _ => Verdict::pass(format!("body up to {max} bytes (413 beyond)")),
        })
    }

    async fn request(&self, req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        let declared = declared_length(req.req);
        if declared.is_some_and(|n| n > self.max) {
            return Decision::Deny(too_large(self.max));
        }
        let me = self.id();
        let count = state.slot_or_insert_with(|| Count {
            max: self.max,
            seen: 0,
            counter: me,
        });
        // The smallest limit of the chain wins; the first plugin with it counts.
        if self.max < count.max {
            count.max = self.max;
            count.counter = me;
        }
        Decision::Continue
    }

    fn request_body(
        &self,
        chunk: Option<&Bytes>,
        state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        let Some(count) = state.slot_mut::<Count>() else {
            return Ok(());
        };
        // Every `body_limit` of the chain sees each chunk; one of them counts it.
        if count.counter != self.id() {
            return Ok(());
        }
        if let Some(c) = chunk {
            count.seen += c.len() as u64;
        }
        if count.seen > count.max {
            return Err(too_large(count.max));
        }
        Ok(())
    }
}

/// The request's body limit and the bytes seen so far, shared by the chain's `body_limit`s.
struct Count {
    max: u64,
    seen: u64,
    /// The plugin that counts ([`BodyLimit::id`]).
    counter: usize,
}

impl BodyLimit {
    /// Which `body_limit` this is: its address, stable because plugins live in an `Arc` for as long as
    /// a request can refer to them.
    fn id(&self) -> usize {
        self as *const BodyLimit as usize
    }
}
