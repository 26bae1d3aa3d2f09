//! The floor for `benches/load.sh`: the smallest proxy Pingora 0.9.1 makes, one `ProxyHttp` whose only
//! hook is `upstream_peer`, round robin over the backends given, no plugins, no header changes, one
//! worker thread, mimalloc. What Tollgate costs above this is Tollgate's; what this costs is Pingora's.
//!
//! ```sh
//! floor-proxy LISTEN BACKEND...      # e.g. floor-proxy 127.0.0.1:8004 127.0.0.1:9001
//! ```

use std::process::ExitCode;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor(LoadBalancer<RoundRobin>);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    /// Every other hook keeps Pingora's default (pingora-proxy-0.9.1/src/proxy_trait.rs), so the request
    /// goes upstream as it came, over a pooled keep-alive connection.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // The key is unused by round robin; 256 is Pingora's own example's bound on skipped backends.
        let backend = self
            .0
            .select(b"", 256)
            .ok_or_else(|| pingora::Error::new_str("no backend"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let listen = args.next();
    let backends: Vec<String> = args.collect();
    let Some(listen) = listen.filter(|_| !backends.is_empty()) else {
        eprintln!("usage: floor-proxy LISTEN BACKEND...");
        return ExitCode::from(2);
    };
    let lb = match LoadBalancer::try_from_iter(backends.iter().map(String::as_str)) {
        Ok(lb) => lb,
        Err(e) => {
            eprintln!("floor-proxy: bad backend address: {e}");
            return ExitCode::from(2);
        }
    };
    // One worker and the pool size Tollgate's `server::run` sets (the benchmark runs it with
    // `server.threads: 1`), so only the proxy differs. No grace period: on SIGTERM Pingora would
    // otherwise sleep 5 minutes before exiting (`EXIT_TIMEOUT`, pingora-core-0.9.1/src/server/mod.rs),
    // and the benchmark's clean-up waits for its processes.
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 512,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Floor(lb));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
