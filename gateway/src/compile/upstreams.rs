//! `upstreams:` → target pools ([`Upstream`]), keeping what the running ones have learned.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{config_relative, nonzero, positive};
use crate::config::raw::{Balance, UpstreamConfig};
use crate::config::sink::Scope;
use crate::snapshot::Snapshot;
use crate::upstream::{HashOn, Target, Upstream, UpstreamTls};

/// Every upstream that compiles (`at` is the scope of `upstreams:`). A reload hands each the upstream
/// of the same name in `previous`, whose target health it keeps when its checks are unchanged.
pub(super) fn compile(
    ups: &BTreeMap<String, UpstreamConfig>,
    at: &Scope,
    previous: Option<&Snapshot>,
) -> BTreeMap<String, Arc<Upstream>> {
    let mut out = BTreeMap::new();
    for (name, u) in ups {
        let old = previous.and_then(|p| p.upstreams.get(name)).map(|u| &**u);
        if let Some(up) = upstream(name, u, &at.at(name), old) {
            out.insert(name.clone(), Arc::new(up));
        }
    }
    out
}

fn upstream(
    name: &str,
    u: &UpstreamConfig,
    at: &Scope,
    old: Option<&Upstream>,
) -> Option<Upstream> {
    let before = at.error_count();
    let mut targets = Vec::new();
    if u.targets.is_empty() {
        at.at("targets")
            .error("an upstream needs at least one target");
    }
    for (i, t) in u.targets.iter().enumerate() {
        let here = at.at("targets").idx(i);
        if t.weight < 1 {
            here.at("weight")
                .error(format!("weight must be at least 1, got {}", t.weight));
        }
        let addr = here.at("addr");
        match Target::parse(&t.addr, t.weight.max(1) as usize, &addr.diagnostic("")) {
            Ok(t) => targets.push(t),
            Err(e) => addr.error(e),
        }
    }
    nonzero(&at.at("dns_refresh"), u.dns_refresh.0);
    let upstream_tls = u.tls.as_ref().map(|t| UpstreamTls {
        sni: t.sni.clone(),
        ca: t.ca.as_ref().and_then(|ca| {
            let here = at.at("tls").at("ca");
            crate::tls::load_ca(&config_relative(&here, ca))
                .map_err(|e| here.error(e))
                .ok()
        }),
    });
    if let Some(sni) = u.tls.as_ref().and_then(|t| t.sni.as_deref()) {
        if rustls_pki_types::ServerName::try_from(sni).is_err() {
            at.at("tls")
                .at("sni")
                .error(format!("`{sni}` is not a DNS name or IP address"));
        }
    }
    let hash_on = match (&u.hash_on, u.balance) {
        (Some(h), Balance::ConsistentHash) => match HashOn::parse(h) {
            Ok(h) => Some(h),
            Err(e) => {
                at.at("hash_on").error(e);
                None
            }
        },
        (None, Balance::ConsistentHash) => {
            at.error("`balance: consistent_hash` needs `hash_on` (client_ip, header:NAME or cookie:NAME)");
            None
        }
        (Some(_), _) => {
            at.at("hash_on")
                .warning("`hash_on` has no effect unless `balance: consistent_hash`");
            None
        }
        (None, _) => None,
    };
    if let Some(hc) = &u.health_check {
        let hb = at.at("health_check");
        if !hc.path.starts_with('/') {
            hb.at("path").error("must start with '/'");
        }
        positive(&hb.at("healthy"), hc.healthy);
        positive(&hb.at("unhealthy"), hc.unhealthy);
        nonzero(&hb.at("interval"), hc.interval.0);
        nonzero(&hb.at("timeout"), hc.timeout.0);
    }
    let tb = at.at("timeouts");
    nonzero(&tb.at("connect"), u.timeouts.connect.0);
    nonzero(&tb.at("read"), u.timeouts.read.0);
    nonzero(&tb.at("write"), u.timeouts.write.0);
    if at.error_count() > before {
        return None;
    }
    Some(Upstream::build(
        name,
        u,
        targets,
        hash_on,
        upstream_tls,
        old,
    ))
}
