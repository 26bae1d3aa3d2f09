//! `order-service`: the orders reference service.

use clap::Parser;
use order_service::Settings;
use service_kit::server::{CommonArgs, Defaults};

#[derive(Parser)]
#[command(
    name = "order-service",
    version,
    about = "Tollgate reference service: orders"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Base URL of the users service.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8081")]
    users_url: String,
    /// Base URL of the products service; several, comma-separated, for instances without a load
    /// balancer in front (a call goes to the next one when an instance cannot be reached).
    #[arg(
        long,
        env = "PRODUCTS_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8082"
    )]
    products_url: Vec<String>,
    /// How long an order's lease lasts: the instance placing it renews it every third of this, and
    /// once it runs out (the instance died) any instance's recovery fails the order and releases its
    /// stock.
    #[arg(long, env = "PENDING_TIMEOUT", default_value = "30s", value_parser = order_service::parse_duration)]
    pending_timeout: std::time::Duration,
    /// Timeout of each call to the users and products services.
    #[arg(long, env = "CALL_TIMEOUT", default_value = "5s", value_parser = order_service::parse_duration)]
    call_timeout: std::time::Duration,
}

/// This service's port and database file (the demo's and deploy/'s, which name them too).
const DEFAULTS: Defaults = Defaults {
    listen: "127.0.0.1:8083",
    database_url: "sqlite://data/orders.db",
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::init_tracing();
    let a: Args = service_kit::server::parse_args(DEFAULTS);
    let c = a.common;
    let auth = service_kit::auth::Auth::new(&c.auth)?;
    let Some(service_token) = c.auth.service_token.clone() else {
        anyhow::bail!(
            "SERVICE_TOKEN is required: the orders service calls users and products with it"
        );
    };
    let settings = Settings {
        users_url: a.users_url,
        products_urls: a.products_url,
        pending_timeout: a.pending_timeout,
        call_timeout: a.call_timeout,
        service_token,
    };
    let service = order_service::app(&c.database_url, settings, auth).await?;
    let recovery = service.recovery;
    service_kit::server::serve_with("order-service", &c.listen, service.router, |stop| {
        recovery.run(stop)
    })
    .await
}
