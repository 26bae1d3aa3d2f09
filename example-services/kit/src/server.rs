//! Serving: the flags every service takes, tracing, the request-id layer, and graceful shutdown on
//! SIGTERM or Ctrl-C.

use std::io::Write;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;

use crate::auth::AuthArgs;
use crate::error::{ApiError, REQUEST_ID};

/// `--listen` (`LISTEN`), `--database-url` (`DATABASE_URL`) and the [`AuthArgs`] flags: what every service takes, flattened into its own `Args` (`#[command(flatten)]`) beside its own flags.
// One paragraph only: clap makes a flattened struct's longer doc the service's `--help` text.
//
// `listen` and `database_url` have no default here: each service has its own port and database file,
// given to `parse_args`, so that `--help` shows the service's defaults. Parsed without them
// (`Args::parse()`), both are required.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN")]
    pub listen: String,
    /// `sqlite://FILE` (default) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// A service's defaults for the [`CommonArgs`] that have none of their own.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `--listen`, e.g. `127.0.0.1:8081`.
    pub listen: &'static str,
    /// `--database-url`, e.g. `sqlite://data/users.db`.
    pub database_url: &'static str,
}

/// The command line of `A` (a service's `Args`, which flattens [`CommonArgs`]) with `defaults` set.
pub fn command<A: clap::CommandFactory>(defaults: Defaults) -> clap::Command {
    // Not required once defaulted, so that the usage line does not list them.
    A::command()
        .mut_arg("listen", |a| {
            a.default_value(defaults.listen).required(false)
        })
        .mut_arg("database_url", |a| {
            a.default_value(defaults.database_url).required(false)
        })
}

/// Parse the process's arguments (and environment) into `A` with the service's `defaults`; like
/// `A::parse()`, print the error or help and exit when they do not parse.
pub fn parse_args<A: clap::Parser>(defaults: Defaults) -> A {
    let mut cmd = command::<A>(defaults);
    let matches = cmd.get_matches_mut();
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Log to stderr; `RUST_LOG` overrides the default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Keep the caller's `X-Request-Id` (the gateway sets one) or make one; echo it and make it available to
/// error bodies.
pub async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)));
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The largest request body a service reads: axum's own default for its `Json` extractor (2 MiB).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Read the request's body to its end before the handler runs: 413 above [`BODY_LIMIT`], 400 when it
/// cannot be read.
///
/// Why: a handler may answer without reading the body (a caller refused from the head, a `GET` that
/// came with one). hyper then drains it after the answer, and when the rest of the body is not in its
/// buffer yet it closes the connection, after an answer that did not say `Connection: close`. A
/// gateway pools its connections to the service, so its next request on that one finds it gone: a
/// 502 for a `PATCH` or `POST`, which it may not send again (`an_answer_given_before_the_body_arrives_
/// keeps_the_connection` in the users' tests shows the close). The handlers read their JSON bodies
/// whole anyway; this reads them first.
pub async fn read_body_first(req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    match http_body_util::Limited::new(body, BODY_LIMIT)
        .collect()
        .await
    {
        Ok(body) => {
            let body = axum::body::Body::from(body.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {BODY_LIMIT} bytes"),
        )
        .into_response(),
        Err(_) => ApiError::bad_request("the request body could not be read").into_response(),
    }
}

/// Bind `listen`, print `listening on http://ADDR` on stdout (tests and scripts read it, so `:0` works),
/// and serve until SIGTERM or Ctrl-C, letting in-flight requests finish.
pub async fn serve(name: &str, listen: &str, app: Router) -> anyhow::Result<()> {
    serve_with(name, listen, app, |_stop| async {}).await
}

/// What a background task of the server is told: the server is stopping. Cloned freely; every clone
/// sees the same signal. Also fires when the server ends without a signal (an error), so a task never
/// outlives it.
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// Wait until the server stops (at once if it already has).
    pub async fn requested(&mut self) {
        // An error means the sender is gone: the server is gone too, which is a stop as well.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    /// Has the server begun to stop? For loops that check between steps.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

/// [`serve`], with a long-lived task that belongs to the server (a recovery loop, say): started once
/// the listener is bound, told to stop by the same signal that stops the listener, and awaited before
/// this returns, so that it never runs detached past the server nor dies in the middle of a step.
pub async fn serve_with<F, Fut>(
    name: &str,
    listen: &str,
    app: Router,
    background: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Stop) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(service = name, %addr, "listening");
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let app = app
        .layer(axum::middleware::from_fn(read_body_first))
        .layer(axum::middleware::from_fn(request_id))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(background(Stop(stop)));
    let signal = async move {
        shutdown_signal().await;
        // The background task stops with the listener, while in-flight requests finish.
        let _ = stopping.send(true);
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await;
    // On an error the sender is dropped with the signal future, which stops the task too.
    if let Err(e) = task.await {
        tracing::error!(service = name, error = %e, "background task panicked");
    }
    served?;
    tracing::info!(service = name, "stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::FromArgMatches;

    use super::{CommonArgs, Defaults};

    #[derive(clap::Parser, Debug)]
    #[command(name = "svc", about = "a service")]
    struct Args {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, default_value = "x")]
        own: String,
    }

    const DEFAULTS: Defaults = Defaults {
        listen: "127.0.0.1:9999",
        database_url: "sqlite://data/test.db",
    };

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let m = super::command::<Args>(DEFAULTS).try_get_matches_from(argv)?;
        Args::from_arg_matches(&m)
    }

    /// Environment-free: `LISTEN`/`DATABASE_URL` set in the test's environment would change them.
    #[test]
    fn the_service_supplies_the_defaults_and_flags_override_them() {
        if std::env::var_os("LISTEN").is_some() || std::env::var_os("DATABASE_URL").is_some() {
            return;
        }
        let a = parse(&["svc", "--jwt-secret", "s"]).unwrap();
        assert_eq!(a.common.listen, "127.0.0.1:9999");
        assert_eq!(a.common.database_url, "sqlite://data/test.db");
        assert_eq!(a.common.auth.jwt_issuer, "tollgate-demo");
        assert_eq!(a.own, "x");
        let a = parse(&[
            "svc",
            "--jwt-secret",
            "s",
            "--listen",
            "0.0.0.0:1",
            "--database-url",
            "postgres://db/x",
        ])
        .unwrap();
        assert_eq!(
            (a.common.listen.as_str(), a.common.database_url.as_str()),
            ("0.0.0.0:1", "postgres://db/x")
        );
    }

    #[test]
    fn help_shows_the_service_defaults() {
        let help = super::command::<Args>(DEFAULTS)
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: 127.0.0.1:9999]"), "{help}");
        assert!(help.contains("[default: sqlite://data/test.db]"), "{help}");
        // Neither is listed as required, and the kit's doc comments are not the service's help.
        let usage = super::command::<Args>(DEFAULTS).render_usage().to_string();
        assert!(!usage.contains("--listen"), "{usage}");
        assert!(!help.contains("flattened"), "{help}");
    }
}
