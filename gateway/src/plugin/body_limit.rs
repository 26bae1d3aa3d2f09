//! `body_limit`: refuse request bodies over `max` with 413. A `Content-Length` over the limit is refused
//! before anything is read or proxied; a chunked (or lying) body is cut off as soon as the bytes received
//! pass the limit.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::{BuildContext, BuildError, Decision, Plugin, PluginState, RequestView};
use crate::config::units::ByteSize;
use crate::error::GatewayError;

#[derive(Debug, Clone, Deserialize)]
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

    async fn request(&self, req: &RequestView<'_>, state: &mut PluginState) -> Decision {
        let declared = req
            .req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max) {
            return Decision::Deny(too_large(self.max));
        }
        // The smallest limit of the chain wins.
        state.body_limit = Some(state.body_limit.map_or(self.max, |m| m.min(self.max)));
        Decision::Continue
    }

    fn request_body(
        &self,
        chunk: Option<&Bytes>,
        state: &mut PluginState,
    ) -> Result<(), GatewayError> {
        if let Some(c) = chunk {
            state.body_seen += c.len() as u64;
        }
        match state.body_limit {
            Some(max) if state.body_seen > max => Err(too_large(max)),
            _ => Ok(()),
        }
    }
}
