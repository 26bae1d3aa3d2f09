//! What the orders API sends and receives: the JSON bodies (their schemas in the OpenAPI document
//! come from these types), the list filters, and the states of an order. No logic: the rules are in
//! `domain`.

use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    #[schema(minimum = 1)]
    pub product_id: i64,
    #[schema(minimum = 1, maximum = 1000)]
    pub qty: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"user_id": 1, "items": [{"product_id": 1, "qty": 1}]}))]
pub struct NewOrder {
    #[schema(minimum = 1)]
    pub user_id: i64,
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<NewOrderItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct OrderItem {
    pub product_id: i64,
    pub qty: i64,
    /// Price per unit when the order was placed, in minor units.
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub id: String,
    pub user_id: i64,
    /// `pending`, `confirmed`, `rejected`, `failed` or `cancelled`.
    #[schema(value_type = OrderStatus)]
    pub status: String,
    pub total_cents: i64,
    pub items: Vec<OrderItem>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub user_id: Option<i64>,
    #[param(inline)]
    pub status: Option<OrderStatus>,
    /// Items per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// The states of an order (the `status` column holds their names): a filter that names none of
/// them is refused (`400`) rather than answered with an empty page.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Failed,
    Cancelled,
}

impl OrderStatus {
    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}
