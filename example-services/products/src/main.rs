//! `product-service`: the products reference service.

use clap::Parser;
use service_kit::server::{CommonArgs, Defaults};

#[derive(Parser)]
#[command(
    name = "product-service",
    version,
    about = "Tollgate reference service: products"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

/// This service's port and database file (the demo's and deploy/'s, which name them too).
const DEFAULTS: Defaults = Defaults {
    listen: "127.0.0.1:8082",
    database_url: "sqlite://data/products.db",
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::init_tracing();
    let args: Args = service_kit::server::parse_args(DEFAULTS);
    let c = args.common;
    let auth = service_kit::auth::Auth::new(&c.auth)?;
    let app = product_service::app(&c.database_url, auth).await?;
    service_kit::server::serve("product-service", &c.listen, app).await
}
