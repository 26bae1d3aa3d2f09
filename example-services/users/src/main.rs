//! `user-service`: the users reference service.

use clap::Parser;
use service_kit::server::{CommonArgs, Defaults};

#[derive(Parser)]
#[command(
    name = "user-service",
    version,
    about = "Tollgate reference service: users"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// This service's port and database file (the demo's and deploy/'s, which name them too).
const DEFAULTS: Defaults = Defaults {
    listen: "127.0.0.1:8081",
    database_url: "sqlite://data/users.db",
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::init_tracing();
    let args: Args = service_kit::server::parse_args(DEFAULTS);
    let c = args.common;
    let auth = service_kit::auth::Auth::new(&c.auth)?;
    let app = user_service::app(&c.database_url, auth).await?;
    service_kit::server::serve("user-service", &c.listen, app).await
}
