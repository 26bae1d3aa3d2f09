//! What the products API sends and receives: products, and the reservations of their stock the
//! orders service makes. The JSON bodies (their schemas in the OpenAPI document come from these types)
//! and the rows they are read from; no logic: the rules are in `domain`.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::ToSchema;

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// Price in minor units (cents).
    pub price_cents: i64,
    pub stock: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// 1 to 200 characters once trimmed.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price_cents: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price_cents: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationItem {
    pub product_id: i64,
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub qty: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReservation {
    /// Chosen by the caller (e.g. the order id); reserving twice with the same id and items is a no-op.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ReservationItem>,
}

#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct ReservedItem {
    pub product_id: i64,
    pub qty: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    pub id: String,
    /// `active` or `released`.
    #[schema(value_type = ReservationStatus)]
    pub status: String,
    pub items: Vec<ReservedItem>,
    pub total_cents: i64,
}

/// The values of [`Reservation::status`], for the schema (the column is text, checked by the database).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    Active,
    Released,
}
