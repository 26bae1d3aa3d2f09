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
    },
    /// Check config files without starting anything. Prints one line per problem.
    Validate {
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Print the compiled route table in match order.
    Routes { file: String },
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
        Command::Run { config } => {
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
            tollgate::server::run(snap)
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
        "{:<4} {:<24} {:<20} {:<16} {:<32} {}\n",
        "#", "NAME", "HOST", "METHODS", "PATH", "UPSTREAM"
    );
    for (n, (_, _, _, _, r)) in rows.iter().enumerate() {
        let (host, methods, path) = &r.describe;
        out.push_str(&format!(
            "{:<4} {:<24} {:<20} {:<16} {:<32} {}\n",
            n + 1,
            r.name,
            host,
            methods,
            path,
            r.upstream.name
        ));
    }
    out
}
