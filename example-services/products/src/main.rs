//! `product-service`: the products reference service.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "product-service",
    version,
    about = "Tollgate reference service: products"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
    /// `sqlite://FILE` (default) or `postgres://...`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/products.db"
    )]
    database_url: String,
    #[command(flatten)]
    auth: service_kit::auth::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::server::init_tracing();
    let args = Args::parse();
    let auth = service_kit::auth::Auth::new(&args.auth)?;
    let app = product_service::app(&args.database_url, auth).await?;
    service_kit::server::serve("product-service", &args.listen, app).await
}
