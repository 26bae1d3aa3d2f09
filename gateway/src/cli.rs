//! The `tollgate` command line, as a library: [`main_with`] runs it with a plugin registry, so that a
//! build with plugins of its own gets `run`, `validate`, `routes`, `explain`, `test`, `diff`, `token` and
//! `hash-key` unchanged (its plugins explained by their own [`crate::plugin::Plugin::explain`]), and
//! `validate` knows (and checks) its plugins' config. The `tollgate` binary is `main_with` over the
//! built-ins.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::load;
use crate::config::units::parse_duration;
use crate::plugin::Registry;
use crate::snapshot::Snapshot;

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

/// How the gateway's own log is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// The gateway's own log: `text` (env_logger's lines) or `json` (one object per line with
        /// `ts`, `level`, `target`, `message`). Default: `TOLLGATE_LOG_FORMAT`, else text. `RUST_LOG`
        /// filters either.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Check config files without starting anything. Prints one line per problem.
    Validate {
        #[arg(required = true)]
        files: Vec<String>,
        /// Also look up the upstream targets given by name (without it, only how they are written is
        /// checked); a name that does not resolve is an error.
        #[arg(long)]
        resolve: bool,
    },
    /// Print the compiled route table in match order.
    Routes { file: String },
    /// Say what the gateway would do with one request, offline: the normalized path, the route and
    /// why close routes did not match, each plugin's decision, the path and upstream it is sent to.
    Explain {
        /// Config file.
        #[arg(short, long, default_value = "config/tollgate.yaml")]
        config: String,
        /// The request method.
        method: String,
        /// `/path?query`, or `http://host/path` (its host is the request's host).
        url: String,
        /// A request header, `Name: value` (repeat for more).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Assume a verified token with these claims (a JSON object): no signature needed.
        #[arg(long)]
        token_claims: Option<String>,
        /// The client address the request comes from (IP filters, rate-limit keys).
        #[arg(long, default_value = "127.0.0.1")]
        client_ip: std::net::IpAddr,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run route test cases (request → expected route, status, upstream, path, headers) offline.
    /// One line per failing case with its FILE:LINE; exit 1 if any fails, 2 if the file is malformed.
    Test {
        /// The cases file.
        cases: String,
        /// Config file.
        #[arg(short, long, default_value = "config/tollgate.yaml")]
        config: String,
    },
    /// What a reload from OLD to NEW would change: routes, upstreams, limits, auth, settings, and
    /// which changes need an upgrade rather than a reload.
    Diff {
        old: String,
        new: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mint a development token (HS256/384/512) with a JWT provider's secret from a config file.
    Token(TokenRequest),
    /// Print the SHA-256 of an API key, as `auth.api_keys.*.keys[].sha256` wants it. Without a key,
    /// generate a random one and print both.
    HashKey { key: Option<String> },
    /// Print the config's JSON Schema (what `config/tollgate.schema.json` holds): editors with a
    /// YAML language server complete and check fields with it.
    Schema,
}

/// What `tollgate token` mints: the command's arguments, also usable from code (tests, tools) through
/// [`mint_token`].
#[derive(clap::Args, Debug, Clone)]
pub struct TokenRequest {
    /// Config file with the provider.
    #[arg(short, long, default_value = "config/tollgate.yaml")]
    pub config: String,
    /// Provider under `auth.jwt` (default: the only one with a `secret`).
    #[arg(long)]
    pub provider: Option<String>,
    /// The `sub` claim.
    #[arg(long, default_value = "1")]
    pub sub: String,
    /// A scope to grant (repeat for more); written as the `scope` claim.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// A role to grant (repeat for more); written as the `roles` claim.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Another claim, `name=value` (value read as JSON when it parses, else as a string).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// Lifetime, e.g. `15m`, `1h`.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
}

/// Parse the process's arguments and run the command with the plugins of `registry`: config files are
/// compiled (by `run`, `validate`, `routes` and reloads) with exactly these plugins.
pub fn main_with(registry: Registry) -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            config,
            upgrade,
            log_format,
        } => run(config, upgrade, log_format, registry),
        Command::Validate { files, resolve } => validate(&files, resolve, &registry),
        Command::Routes { file } => routes(&file, &registry),
        Command::Explain {
            config,
            method,
            url,
            headers,
            token_claims,
            client_ip,
            json,
        } => explain(
            &config,
            ExplainArgs {
                method,
                url,
                headers,
                token_claims,
                client_ip,
                json,
            },
            &registry,
        ),
        Command::Test { cases, config } => test(&cases, &config, &registry),
        Command::Diff { old, new, json } => diff(&old, &new, json, &registry),
        Command::Token(req) => token(&req),
        Command::HashKey { key } => hash_key(key),
        Command::Schema => {
            print!("{}", crate::schema::schema_json());
            ExitCode::SUCCESS
        }
    }
}

/// `--log-format`, else `TOLLGATE_LOG_FORMAT` (`json` or `text`; anything else is text, with a
/// warning once the logger is up).
fn init_logging(format: Option<LogFormat>) {
    let from_env = std::env::var("TOLLGATE_LOG_FORMAT").ok();
    let (format, unknown) = match (format, from_env.as_deref()) {
        (Some(f), _) => (f, None),
        (None, Some(v)) if v.eq_ignore_ascii_case("json") => (LogFormat::Json, None),
        (None, Some(v)) if v.is_empty() || v.eq_ignore_ascii_case("text") => {
            (LogFormat::Text, None)
        }
        (None, Some(v)) => (LogFormat::Text, Some(v)),
        (None, None) => (LogFormat::Text, None),
    };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": crate::access_log::Rfc3339(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
    if let Some(v) = unknown {
        log::warn!("TOLLGATE_LOG_FORMAT={v:?} is neither `text` nor `json`; logging text");
    }
}

fn run(
    config: String,
    upgrade: bool,
    log_format: Option<LogFormat>,
    registry: Registry,
) -> ExitCode {
    init_logging(log_format);
    let snap = match Snapshot::from_file_with(&config, &registry) {
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
    crate::server::run(
        snap,
        crate::server::RunOptions {
            config_path: config,
            // Reloads compile with the same registry, so a custom plugin stays known.
            registry: Arc::new(registry),
            upgrade,
        },
    )
}

/// Problems on stdout (the answer), warnings on stderr; exit 1 if any file has an error.
fn validate(files: &[String], resolve: bool, registry: &Registry) -> ExitCode {
    let mut ok = true;
    for f in files {
        match Snapshot::from_file_with(f, registry) {
            Ok((snap, warnings)) => {
                for w in warnings.0 {
                    eprintln!("{w}");
                }
                let unresolved = if resolve {
                    crate::upstream::resolve_names(snap.upstreams.values()).0
                } else {
                    Vec::new()
                };
                for e in &unresolved {
                    println!("{e}");
                }
                let included = snap.source.included().count();
                if unresolved.is_empty() && included > 0 {
                    println!("{f}: ok ({included} included files)");
                } else if unresolved.is_empty() {
                    println!("{f}: ok");
                } else {
                    ok = false;
                }
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

fn routes(file: &str, registry: &Registry) -> ExitCode {
    match Snapshot::from_file_with(file, registry) {
        Ok((snap, _)) => {
            print!("{}", route_table(&snap));
            ExitCode::SUCCESS
        }
        Err(errs) => {
            println!("{errs}");
            ExitCode::FAILURE
        }
    }
}

/// Compile `file` for the authoring commands: its errors on stdout, as `validate` prints them.
fn compiled(file: &str, registry: &Registry) -> Option<(Snapshot, load::Loaded)> {
    let loaded = match load::load_file(file) {
        Ok(l) => l,
        Err(errs) => {
            println!("{errs}");
            return None;
        }
    };
    match Snapshot::from_loaded(&loaded, registry, None) {
        Ok((snap, _)) => Some((snap, loaded)),
        Err(errs) => {
            println!("{errs}");
            None
        }
    }
}

struct ExplainArgs {
    method: String,
    url: String,
    headers: Vec<String>,
    token_claims: Option<String>,
    client_ip: std::net::IpAddr,
    json: bool,
}

/// Exit 0 with the explanation (whatever the gateway would answer), 1 for an invalid config, 2 for
/// a request that cannot be written (a bad header, claims that are not a JSON object).
fn explain(config: &str, a: ExplainArgs, registry: &Registry) -> ExitCode {
    let usage = |m: String| {
        eprintln!("tollgate explain: {m}");
        ExitCode::from(2)
    };
    let mut headers = Vec::new();
    for h in &a.headers {
        match h.split_once(':') {
            Some((n, v)) => headers.push((n.trim().to_string(), v.trim().to_string())),
            None => return usage(format!("header `{h}`: write `Name: value`")),
        }
    }
    let claims = match &a.token_claims {
        None => None,
        Some(j) => match serde_json::from_str::<serde_json::Value>(j) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => return usage("--token-claims must be a JSON object".to_string()),
        },
    };
    let Some((snap, _)) = compiled(config, registry) else {
        return ExitCode::FAILURE;
    };
    let ask = crate::explain::Ask {
        method: a.method,
        url: a.url,
        headers,
        claims,
        client_ip: a.client_ip,
    };
    match crate::explain::explain(&snap, &ask) {
        Ok(x) if a.json => match serde_json::to_string_pretty(&x) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => usage(e.to_string()),
        },
        Ok(x) => {
            print!("{}", x.text());
            ExitCode::SUCCESS
        }
        Err(e) => usage(e),
    }
}

/// Exit 0 when every case passes, 1 when one fails (or the config is invalid), 2 when the cases
/// file is not one.
fn test(cases: &str, config: &str, registry: &Registry) -> ExitCode {
    let (file, at) = match crate::cases::load(cases) {
        Ok(c) => c,
        Err(errs) => {
            println!("{errs}");
            return ExitCode::from(2);
        }
    };
    let Some((snap, _)) = compiled(config, registry) else {
        return ExitCode::FAILURE;
    };
    let (failures, n) = crate::cases::run(&snap, &file, &at);
    for f in &failures {
        println!("{f}");
    }
    println!(
        "{cases}: {} of {n} cases passed against {config}",
        n - failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Exit 0 with the changes (none is an answer too), 1 when either file is invalid: a NEW that
/// would be refused is reported with its errors, as a reload would refuse it.
fn diff(old: &str, new: &str, json: bool, registry: &Registry) -> ExitCode {
    let Some((o, o_raw)) = compiled(old, registry) else {
        return ExitCode::FAILURE;
    };
    let n_raw = match load::load_file(new) {
        Ok(l) => l,
        Err(errs) => {
            println!("{errs}");
            return ExitCode::FAILURE;
        }
    };
    // Compiled as the reload would compile it: with OLD as the snapshot it replaces.
    let n = match Snapshot::from_loaded(&n_raw, registry, Some(&o)) {
        Ok((n, _)) => n,
        Err(errs) => {
            println!("{errs}");
            println!("tollgate diff: {new} would be refused; the running config would stay");
            return ExitCode::FAILURE;
        }
    };
    let d = crate::diff::diff(&o, &o_raw, &n, &n_raw);
    if json {
        match serde_json::to_string_pretty(&d) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("tollgate diff: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", d.text());
    }
    ExitCode::SUCCESS
}

fn token(req: &TokenRequest) -> ExitCode {
    match mint_token(req) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = key.unwrap_or_else(|| {
        let k = format!("tg_{:032x}", fastrand::u128(..));
        println!("key:    {k}");
        k
    });
    println!("sha256: {}", crate::plugin::apikey::hash_key(&key));
    ExitCode::SUCCESS
}

/// The route table in the order the router tries routes ([`crate::router::Router::order`]), one line
/// per route with its header matches (`name=value`, all required) and its plugin chain.
pub fn route_table(snap: &Snapshot) -> String {
    let mut out = format!(
        "{:<4} {:<24} {:<20} {:<22} {:<32} {:<20} {:<12} {}\n",
        "#", "NAME", "HOST", "METHODS", "PATH", "HEADERS", "UPSTREAM", "PLUGINS"
    );
    for (n, (r, headers)) in snap.routes_in_order().enumerate() {
        let headers = headers.join(",");
        let (host, methods, path) = &r.describe;
        let plugins = r.chain.names().join(",");
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        out.push_str(&format!(
            "{:<4} {:<24} {:<20} {:<22} {:<32} {:<20} {:<12} {}\n",
            n + 1,
            r.name,
            host,
            methods,
            path,
            dash(&headers),
            r.upstream_label(),
            dash(&plugins),
        ));
    }
    out
}

/// Mint a development token signed with a JWT provider's HMAC secret, with the provider's issuer and
/// (first) audience, so that the gateway running that config accepts it.
pub fn mint_token(req: &TokenRequest) -> Result<String, String> {
    let config = req.config.as_str();
    let loaded = load::load_file(config).map_err(|d| d.to_string())?;
    if loaded.diagnostics.has_errors() {
        return Err(loaded.diagnostics.to_string());
    }
    // Read as the compiler reads them (a broken provider is an error here too).
    let mut providers = std::collections::BTreeMap::new();
    let jwt = loaded
        .config
        .sections
        .get("auth")
        .and_then(|a| a.get("jwt"))
        .and_then(serde_yaml_ng::Value::as_mapping);
    for (name, v) in jwt.into_iter().flatten() {
        let name = name.as_str().unwrap_or_default().to_string();
        let p: crate::plugin::jwt::ProviderConfig = crate::config::de::from_value(v)
            .map_err(|e| format!("auth.jwt.{name}: {}", e.error))?;
        providers.insert(name, p);
    }
    let with_secret: Vec<&String> = providers
        .iter()
        .filter(|(_, p)| p.secret.is_some())
        .map(|(n, _)| n)
        .collect();
    let name = match &req.provider {
        Some(p) => p.clone(),
        None => match with_secret.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(format!("{config} has no JWT provider with a `secret`")),
            many => {
                return Err(format!(
                "{config} has several JWT providers with a secret ({}): pick one with --provider",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            }
        },
    };
    let p = providers
        .get(&name)
        .ok_or_else(|| format!("no JWT provider `{name}` in {config}"))?;
    let secret = p
        .secret
        .as_deref()
        .ok_or_else(|| format!("provider `{name}` has no `secret` to sign with"))?;
    let alg = p
        .algorithms
        .iter()
        .filter_map(|a| a.parse::<jsonwebtoken::Algorithm>().ok())
        .find(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        })
        .ok_or_else(|| format!("provider `{name}` allows no HMAC algorithm"))?;
    let ttl = parse_duration(&req.ttl)?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut body = serde_json::Map::new();
    body.insert("sub".into(), req.sub.as_str().into());
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), (now + ttl.as_secs()).into());
    if let Some(iss) = &p.issuer {
        body.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = p.audience.to_vec().first() {
        body.insert("aud".into(), aud.clone().into());
    }
    if !req.scopes.is_empty() {
        body.insert("scope".into(), req.scopes.join(" ").into());
    }
    if !req.roles.is_empty() {
        body.insert("roles".into(), req.roles.clone().into());
    }
    for c in &req.claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim `{c}`: write name=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        body.insert(k.to_string(), v);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &body,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}
