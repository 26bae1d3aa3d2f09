//! `user-service`: the users reference service.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "user-service",
    version,
    about = "Tollgate reference service: users"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8081")]
    listen: String,
    /// `sqlite://FILE` (default) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/users.db")]
    database_url: String,
    #[command(flatten)]
    auth: service_kit::auth::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::init_tracing();
    let args = Args::parse();
    let auth = service_kit::auth::Auth::new(&args.auth)?;
    let app = user_service::app(&args.database_url, auth).await?;
    service_kit::server::serve("user-service", &args.listen, app).await
}
