//! `ip_filter`: allow or deny by CIDR, on the client IP after `trusted_proxies` (so a client cannot
//! pick its own address with `X-Forwarded-For`). `deny` wins over `allow`; a non-empty `allow` list
//! admits only the addresses in it.
//!
//! Checked in the request phase, in chain order, and in the early phase for a CORS preflight offered to
//! the route: a denied address learns nothing, not even the route's CORS policy.

use async_trait::async_trait;
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    BuildContext, BuildError, Decision, EarlyView, ExplainRequest, Phases, Plugin, PluginState,
    RequestView, Verdict,
};
use crate::config::types::Cidr;
use crate::error::GatewayError;

#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    #[serde(default)]
    pub allow: Vec<Cidr>,
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    pub fn build(cfg: IpFilterConfig, _ctx: &BuildContext) -> Result<IpFilter, BuildError> {
        if cfg.allow.is_empty() && cfg.deny.is_empty() {
            return Err(BuildError::new("give `allow`, `deny` or both"));
        }
        Ok(IpFilter {
            allow: cfg.allow.iter().map(|c| c.0).collect(),
            deny: cfg.deny.iter().map(|c| c.0).collect(),
        })
    }

    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) is judged as the IPv4 address it is.
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    fn decide(&self, ip: std::net::IpAddr) -> Decision {
        if self.admits(ip) {
            Decision::Continue
        } else {
            Decision::Deny(GatewayError::new(
                403,
                "ip_forbidden",
                "requests from this address are not allowed",
            ))
        }
    }
}

#[async_trait]
impl Plugin for IpFilter {
    fn name(&self) -> &'static str {
        "ip_filter"
    }

    fn auth_failure_reasons(&self) -> &'static [&'static str] {
        &["ip_forbidden"]
    }
    fn phases(&self) -> Phases {
        Phases::EARLY | Phases::REQUEST
    }
    async fn early(&self, req: &EarlyView<'_>, _state: &mut PluginState) -> Decision {
        // Other requests are checked in the request phase, where the config put this plugin.
        match req.routed_as {
            Some(_) => self.decide(req.client_ip),
            None => Decision::Continue,
        }
    }
    async fn request(&self, req: &RequestView<'_>, _state: &mut PluginState) -> Decision {
        self.decide(req.client_ip)
    }
    fn explain(&self, req: &ExplainRequest<'_>) -> Option<Verdict> {
        let ip = req.client_ip;
        Some(if self.admits(ip) {
            Verdict::pass(format!("client {ip} allowed"))
        } else {
            Verdict::answer(403, format!("client {ip} not allowed → 403"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_allow_restricts() {
        let f = IpFilter::build(
            IpFilterConfig {
                allow: ["10.0.0.0/8", "127.0.0.1"]
                    .iter()
                    .map(|c| Cidr::parse(c).unwrap())
                    .collect(),
                deny: vec![Cidr::parse("10.9.0.0/16").unwrap()],
            },
            &BuildContext::detached(&crate::plugin::Providers::default()),
        )
        .unwrap();
        assert!(f.admits("10.1.2.3".parse().unwrap()));
        assert!(!f.admits("10.9.2.3".parse().unwrap()));
        assert!(!f.admits("192.168.1.1".parse().unwrap()));
        assert!(f.admits("::ffff:127.0.0.1".parse().unwrap()));
        // What explain says is what `admits` decides.
        let req = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        let ask = |ip: &str| {
            f.explain(&ExplainRequest {
                req: &req,
                client_ip: ip.parse().unwrap(),
                path: "/",
                route: "r",
                claims: None,
                consumer: None,
            })
            .unwrap()
            .answers
        };
        assert_eq!(ask("10.1.2.3"), None);
        assert_eq!(ask("10.9.2.3"), Some(403));
    }
}
