//! The floor for `benches/load.sh`: the smallest proxy Pingora 0.9.1 makes, one `ProxyHttp` whose only
//! hook is `upstream_peer`, round robin over the backends given, no plugins, no header changes, one
//! worker thread, mimalloc. What Tollgate costs above this is Tollgate's; what this costs is Pingora's.
//!
//! ```sh
//! floor-proxy LISTEN BACKEND...      # e.g. floor-proxy 127.0.0.1:8004 127.0.0.1:9001
//! floor-proxy --timeouts LISTEN BACKEND...
//! ```
//!
//! `--timeouts` gives it the timeouts every Tollgate route has by default (upstream connect 2 s,
//! read and write 30 s, pooled connection idle 60 s, client keep-alive 60 s), set the way Tollgate
//! sets them. Pingora arms a timer for each read that has to wait (pingora-timeout's `Timeout`), so
//! this second floor measures what Pingora's timeouts cost, apart from what Tollgate adds.

use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    lb: LoadBalancer<RoundRobin>,
    timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<()> {
        // As Tollgate's `early_request_filter`: the idle timeout, unless keep-alive is already off.
        if self.timeouts && session.get_keepalive().is_some() {
            session.set_keepalive(Some(60));
        }
        Ok(())
    }

    /// Every other hook keeps Pingora's default (pingora-proxy-0.9.1/src/proxy_trait.rs), so the request
    /// goes upstream as it came, over a pooled keep-alive connection.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        // The key is unused by round robin; 256 is Pingora's own example's bound on skipped backends.
        let backend = self
            .lb
            .select(b"", 256)
            .ok_or_else(|| pingora::Error::new_str("no backend"))?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        if self.timeouts {
            // Tollgate's defaults (`upstreams.*.timeouts`), set as `Upstream::peer` sets them.
            let o = &mut peer.options;
            o.connection_timeout = Some(Duration::from_secs(2));
            o.read_timeout = Some(Duration::from_secs(30));
            o.write_timeout = Some(Duration::from_secs(30));
            o.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let timeouts = args.next_if(|a| a == "--timeouts").is_some();
    let listen = args.next();
    let backends: Vec<String> = args.collect();
    let Some(listen) = listen.filter(|_| !backends.is_empty()) else {
        eprintln!("usage: floor-proxy [--timeouts] LISTEN BACKEND...");
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
        // As Tollgate's `server::run`: Pingora's timeouts on tokio's timer (the floor without
        // `--timeouts` arms none).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Floor { lb, timeouts });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
