//! `order-service`: the orders reference service.

use clap::Parser;
use order_service::Settings;

#[derive(Parser)]
#[command(
    name = "order-service",
    version,
    about = "Tollgate reference service: orders"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8083")]
    listen: String,
    /// `sqlite://FILE` (default) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/orders.db")]
    database_url: String,
    /// Base URL of the users service.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8081")]
    users_url: String,
    /// Base URL of the products service.
    #[arg(long, env = "PRODUCTS_URL", default_value = "http://127.0.0.1:8082")]
    products_url: String,
    /// How long an order may stay pending before recovery fails it and releases its stock. Must be
    /// longer than a request can take (two calls of at most `--call-timeout`).
    #[arg(long, env = "PENDING_TIMEOUT", default_value = "30s", value_parser = order_service::parse_duration)]
    pending_timeout: std::time::Duration,
    /// Timeout of each call to the users and products services.
    #[arg(long, env = "CALL_TIMEOUT", default_value = "5s", value_parser = order_service::parse_duration)]
    call_timeout: std::time::Duration,
    #[command(flatten)]
    auth: service_kit::auth::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::init_tracing();
    let a = Args::parse();
    let auth = service_kit::auth::Auth::new(&a.auth)?;
    let Some(service_token) = a.auth.service_token.clone() else {
        anyhow::bail!(
            "SERVICE_TOKEN is required: the orders service calls users and products with it"
        );
    };
    let settings = Settings {
        users_url: a.users_url,
        products_url: a.products_url,
        pending_timeout: a.pending_timeout,
        call_timeout: a.call_timeout,
        service_token,
    };
    let app = order_service::app(&a.database_url, settings, auth).await?;
    service_kit::server::serve("order-service", &a.listen, app).await
}
