//! The rules of products and reservations, without sockets or a database: the bounds of a product's
//! fields, what a valid reservation is, its canonical form (and so its identity for replays), how its
//! total is added up without overflowing, and what a second reservation under an id means.

use axum::http::StatusCode;
use service_kit::{ApiError, FieldError};

use crate::model::{Reservation, ReservationItem};

/// The largest price, in cents (ten billion units): a bound that keeps a line's total computable.
pub const MAX_PRICE: i64 = 1_000_000_000_000;
/// The largest stock of a product, and the largest quantity of a reservation's item.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// A product's fields, those given (`Some`) checked: `422` with every offending field.
pub fn check_product(
    name: Option<&str>,
    description: Option<&str>,
    price: Option<i64>,
    stock: Option<i64>,
) -> Result<(), ApiError> {
    let mut f = Vec::new();
    if let Some(n) = name {
        let len = n.trim().chars().count();
        if len == 0 || len > 200 {
            f.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    if description.is_some_and(|d| d.chars().count() > 2000) {
        f.push(FieldError::new(
            "description",
            "must be at most 2000 characters",
        ));
    }
    if price.is_some_and(|p| !(0..=MAX_PRICE).contains(&p)) {
        f.push(FieldError::new(
            "price_cents",
            format!("must be between 0 and {MAX_PRICE}"),
        ));
    }
    if stock.is_some_and(|s| !(0..=MAX_STOCK).contains(&s)) {
        f.push(FieldError::new(
            "stock",
            format!("must be between 0 and {MAX_STOCK}"),
        ));
    }
    if f.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(f))
    }
}

/// What a valid reservation id is, as the `422` says it.
pub const RESERVATION_ID_RULE: &str = "must be 1 to 64 characters of letters, digits, '-' or '_'";

/// [`RESERVATION_ID_RULE`]: the caller picks the id (the order's), so it is checked like input.
pub fn valid_reservation_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A reservation's id and items checked: `422` with every offending field.
pub fn check_reservation(id: &str, items: &[ReservationItem]) -> Result<(), ApiError> {
    let mut fields = Vec::new();
    if !valid_reservation_id(id) {
        fields.push(FieldError::new("id", RESERVATION_ID_RULE));
    }
    if items.is_empty() || items.len() > 100 {
        fields.push(FieldError::new("items", "must have 1 to 100 items"));
    }
    for (i, it) in items.iter().enumerate() {
        if !(1..=MAX_STOCK).contains(&it.qty) {
            fields.push(FieldError::new(
                &format!("items[{i}].qty"),
                "must be at least 1",
            ));
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::invalid(fields));
    }
    Ok(())
}

/// Items merged by product and sorted, so equal requests hash equally and rows are always locked in
/// the same order (no deadlocks between concurrent reservations on PostgreSQL).
pub fn canonical(items: &[ReservationItem]) -> Vec<ReservationItem> {
    let mut merged: std::collections::BTreeMap<i64, i64> = Default::default();
    for it in items {
        *merged.entry(it.product_id).or_default() += it.qty;
    }
    merged
        .into_iter()
        .map(|(product_id, qty)| ReservationItem { product_id, qty })
        .collect()
}

/// What identifies a reservation's request (of [`canonical`] items): a repeat under the same id must
/// have the same.
pub fn request_hash(items: &[ReservationItem]) -> String {
    items
        .iter()
        .map(|i| format!("{}x{}", i.product_id, i.qty))
        .collect::<Vec<_>>()
        .join(",")
}

/// `total` plus `qty` units at `unit` cents, or `None` when it does not fit an i64: a price up to
/// 10^12 times a quantity up to 10^9 does not, and release builds do not check overflow.
pub fn add_line(total: i64, unit: i64, qty: i64) -> Option<i64> {
    unit.checked_mul(qty)
        .and_then(|line| total.checked_add(line))
}

/// The refusal of a reservation whose total [`add_line`] could not compute.
pub fn total_too_large() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "total_too_large",
        "the reservation's total does not fit in 64 bits of cents",
    )
}

/// A reservation asked for under an id that exists already (`existing`, stored with
/// `existing_hash`): a replay if it asked for the same items (`hash`), else refused.
pub fn check_replay(
    existing: &Reservation,
    existing_hash: &str,
    hash: &str,
) -> Result<(), ApiError> {
    if existing.status == "released" && existing_hash.is_empty() {
        // The tombstone a release leaves when it came first.
        return Err(ApiError::conflict(
            "reservation_released",
            "this reservation id was released before it was reserved",
        ));
    }
    if existing_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reservation_id_reused",
            "a reservation with this id exists with different items",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn item(product_id: i64, qty: i64) -> ReservationItem {
        ReservationItem { product_id, qty }
    }

    fn fields(e: ApiError) -> Vec<String> {
        e.fields.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn product_bounds() {
        check_product(Some("Tea"), Some(""), Some(0), Some(0)).unwrap();
        check_product(None, None, Some(MAX_PRICE), Some(MAX_STOCK)).unwrap();
        let e = check_product(
            Some("  "),
            Some(&"d".repeat(2001)),
            Some(MAX_PRICE + 1),
            Some(-1),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(fields(e), ["name", "description", "price_cents", "stock"]);
        assert_eq!(
            fields(check_product(Some(&"n".repeat(201)), None, None, None).unwrap_err()),
            ["name"]
        );
    }

    #[test]
    fn reservation_ids() {
        assert!(valid_reservation_id("order-1_A"));
        assert!(valid_reservation_id(&"a".repeat(64)));
        for bad in ["", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(!valid_reservation_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_reservation_reports_every_bad_field() {
        check_reservation("r1", &[item(1, 1), item(2, MAX_STOCK)]).unwrap();
        let e = check_reservation("bad id", &[item(1, 0), item(2, MAX_STOCK + 1)]).unwrap_err();
        assert_eq!(fields(e), ["id", "items[0].qty", "items[1].qty"]);
        let e = check_reservation("r1", &[]).unwrap_err();
        assert_eq!(fields(e), ["items"]);
        let many: Vec<_> = (1..=101).map(|p| item(p, 1)).collect();
        assert_eq!(
            fields(check_reservation("r1", &many).unwrap_err()),
            ["items"]
        );
    }

    #[test]
    fn canonical_merges_and_sorts_so_equal_requests_hash_equally() {
        let a = canonical(&[item(3, 1), item(1, 2), item(3, 4)]);
        let b = canonical(&[item(1, 1), item(3, 5), item(1, 1)]);
        assert_eq!(request_hash(&a), "1x2,3x5");
        assert_eq!(request_hash(&a), request_hash(&b));
    }

    #[test]
    fn totals_are_refused_rather_than_wrapped() {
        assert_eq!(add_line(0, 250, 4), Some(1000));
        assert_eq!(add_line(1000, 1, 1), Some(1001));
        // The largest price times the largest quantity: 10^21, past i64::MAX (~9.2 * 10^18).
        assert_eq!(add_line(0, MAX_PRICE, MAX_STOCK), None);
        // Each line fits, their sum does not.
        let line = MAX_PRICE * 5_000_000;
        assert_eq!(add_line(line, MAX_PRICE, 5_000_000), None);
        assert_eq!(total_too_large().code, "total_too_large");
    }

    #[test]
    fn a_second_reservation_under_an_id() {
        let existing = |status: &str| Reservation {
            id: "r1".into(),
            status: status.into(),
            items: Vec::new(),
            total_cents: 0,
        };
        check_replay(&existing("active"), "1x2", "1x2").unwrap();
        let e = check_replay(&existing("active"), "1x2", "1x3").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "reservation_id_reused")
        );
        let e = check_replay(&existing("released"), "", "1x2").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::CONFLICT, "reservation_released")
        );
        // Released after it was reserved: the same request is still a replay (of a released one).
        check_replay(&existing("released"), "1x2", "1x2").unwrap();
    }
}
