//! Offset pagination: `?limit=20&offset=40`, answered as `{items, limit, offset, total, next_offset}`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{ApiError, FieldError};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Items to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl PageParams {
    /// Validated `(limit, offset)`.
    pub fn resolve(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        let offset = self.offset.unwrap_or(0);
        let mut fields = Vec::new();
        if !(1..=MAX_LIMIT).contains(&limit) {
            fields.push(FieldError::new(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if offset < 0 {
            fields.push(FieldError::new("offset", "must not be negative"));
        }
        if fields.is_empty() {
            Ok((limit, offset))
        } else {
            Err(ApiError::invalid(fields))
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub limit: i64,
    pub offset: i64,
    pub total: i64,
    /// Offset of the next page, absent on the last one.
    pub next_offset: Option<i64>,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, limit: i64, offset: i64, total: i64) -> Self {
        let next = offset + items.len() as i64;
        Page {
            next_offset: (next < total).then_some(next),
            items,
            limit,
            offset,
            total,
        }
    }
}
