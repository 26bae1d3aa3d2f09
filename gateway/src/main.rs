//! The `tollgate` command: run the gateway, validate config files, print the route table.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::snapshot::Snapshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A fast, safe API gateway built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "config/tollgate.yaml")]
        config: String,
        /// Take over the listening sockets of the running instance (zero-downtime upgrade). Start the
        /// new binary with this flag, then send SIGQUIT to the old process.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check config files without starting anything. Prints one line per problem.
    Validate {
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Print the compiled route table in match order.
    Routes { file: String },
    /// Mint a development token (HS256/384/512) with a JWT provider's secret from a config file.
    Token {
        /// Config file with the provider.
        #[arg(short, long, default_value = "config/tollgate.yaml")]
        config: String,
        /// Provider under `auth.jwt` (default: the only one with a `secret`).
        #[arg(long)]
        provider: Option<String>,
        /// The `sub` claim.
        #[arg(long, default_value = "1")]
        sub: String,
        /// A scope to grant (repeat for more); written as the `scope` claim.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A role to grant (repeat for more); written as the `roles` claim.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Another claim, `name=value` (value read as JSON when it parses, else as a string).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime, e.g. `15m`, `1h`.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print the SHA-256 of an API key, as `auth.api_keys.*.keys[].sha256` wants it. Without a key,
    /// generate a random one and print both.
    HashKey { key: Option<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => {
            let mut ok = true;
            for f in &files {
                match Snapshot::from_file(f) {
                    Ok((_, warnings)) => {
                        for w in warnings.0 {
                            eprintln!("{w}");
                        }
                        println!("{f}: ok");
                    }
                    Err(errs) => {
                        ok = false;
                        for e in errs.0 {
                            println!("{e}");
                        }
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Routes { file } => match Snapshot::from_file(&file) {
            Ok((snap, _)) => {
                print!("{}", route_table(&snap));
                ExitCode::SUCCESS
            }
            Err(errs) => {
                println!("{errs}");
                ExitCode::FAILURE
            }
        },
        Command::Token {
            config,
            provider,
            sub,
            scopes,
            roles,
            claims,
            ttl,
        } => match tollgate::cli::mint_token(
            &config,
            provider.as_deref(),
            &sub,
            &scopes,
            &roles,
            &claims,
            &ttl,
        ) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tollgate token: {e}");
                ExitCode::FAILURE
            }
        },
        Command::HashKey { key } => {
            let key = key.unwrap_or_else(|| {
                let k = format!("tg_{:032x}", fastrand::u128(..));
                println!("key:    {k}");
                k
            });
            println!("sha256: {}", tollgate::plugin::apikey::hash_key(&key));
            ExitCode::SUCCESS
        }
        Command::Run { config, upgrade } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            let snap = match Snapshot::from_file(&config) {
                Ok((snap, warnings)) => {
                    for w in warnings.0 {
                        log::warn!("{w}");
                    }
                    snap
                }
                Err(errs) => {
                    for e in errs.0 {
                        eprintln!("{e}");
                    }
                    eprintln!("tollgate: {config} is not valid; not starting");
                    return ExitCode::FAILURE;
                }
            };
            log::info!(
                "tollgate {} listening on {:?} with {} routes, {} upstreams",
                env!("CARGO_PKG_VERSION"),
                snap.settings.listen,
                snap.routes.len(),
                snap.upstreams.len()
            );
            tollgate::server::run(
                snap,
                tollgate::server::RunOptions {
                    config_path: config,
                    registry: std::sync::Arc::new(tollgate::plugin::Registry::builtin()),
                    upgrade,
                },
            )
        }
    }
}

/// The route table in match order: exact paths, templates, regexes, prefixes (longest first), each in
/// file order, grouped by host precedence.
fn route_table(snap: &Snapshot) -> String {
    let mut rows: Vec<(u8, u8, usize, usize, &tollgate::snapshot::Route)> = snap
        .routes
        .iter()
        .map(|r| {
            let (host, _, path) = &r.describe;
            let host_rank = if host == "*" {
                2
            } else if host.starts_with("*.") {
                1
            } else {
                0
            };
            let (kind, len) = if path.starts_with("= ") {
                (0, 0)
            } else if path.starts_with("~ ") {
                (1, 0)
            } else if path.starts_with("regex ") {
                (2, 0)
            } else {
                (3, usize::MAX - path.len())
            };
            (host_rank, kind, len, r.index, r.as_ref())
        })
        .collect();
    rows.sort_by_key(|(h, k, l, i, _)| (*h, *k, *l, *i));
    let mut out = format!(
        "{:<4} {:<24} {:<20} {:<22} {:<32} {:<12} {}\n",
        "#", "NAME", "HOST", "METHODS", "PATH", "UPSTREAM", "PLUGINS"
    );
    for (n, (_, _, _, _, r)) in rows.iter().enumerate() {
        let (host, methods, path) = &r.describe;
        let plugins = r.chain.names().join(",");
        out.push_str(&format!(
            "{:<4} {:<24} {:<20} {:<22} {:<32} {:<12} {}\n",
            n + 1,
            r.name,
            host,
            methods,
            path,
            r.upstream.name,
            if plugins.is_empty() { "-" } else { &plugins }
        ));
    }
    out
}
