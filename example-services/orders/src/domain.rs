//! The rules of an order, without sockets or a database: what a valid order is and its canonical form
//! (and so its identity for `Idempotency-Key` repeats), whose key a key is, who may place and list
//! whose orders, what placing one came to, and the durations the flags take.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use service_kit::auth::Caller;
use service_kit::{ApiError, FieldError};
use sha2::{Digest, Sha256};

use crate::model::{NewOrder, NewOrderItem, OrderItem};

/// `250ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(format!("`{s}`: use a unit, e.g. 500ms, 5s, 1m"));
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    Ok(Duration::from_millis(n * mult))
}

/// Validate and canonicalize (merge equal products, sort) a new order.
pub fn canonical(o: &NewOrder) -> Result<NewOrder, ApiError> {
    let mut f = Vec::new();
    if o.user_id < 1 {
        f.push(FieldError::new("user_id", "must be a user id"));
    }
    if o.items.is_empty() || o.items.len() > 50 {
        f.push(FieldError::new("items", "must have 1 to 50 items"));
    }
    for (i, it) in o.items.iter().enumerate() {
        if it.product_id < 1 {
            f.push(FieldError::new(
                &format!("items[{i}].product_id"),
                "must be a product id",
            ));
        }
        if !(1..=1000).contains(&it.qty) {
            f.push(FieldError::new(
                &format!("items[{i}].qty"),
                "must be between 1 and 1000",
            ));
        }
    }
    if !f.is_empty() {
        return Err(ApiError::invalid(f));
    }
    let mut merged: std::collections::BTreeMap<i64, i64> = Default::default();
    for it in &o.items {
        *merged.entry(it.product_id).or_default() += it.qty;
    }
    Ok(NewOrder {
        user_id: o.user_id,
        items: merged
            .into_iter()
            .map(|(product_id, qty)| NewOrderItem { product_id, qty })
            .collect(),
    })
}

/// What identifies a [`canonical`] order's request: a repeat under the same key must have the same.
pub fn hash(o: &NewOrder) -> String {
    let json = serde_json::to_vec(o).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// The request's `Idempotency-Key`, if it sent one (`400` if it is not 1 to 255 visible characters).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 => Ok(Some(s.to_string())),
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// A key is the caller's own: the same key from another user is another key (it neither replays
/// nor collides with theirs, so it tells nothing of what they sent).
pub fn scoped_key(user_id: i64, key: &str) -> String {
    format!("{user_id}:{key}")
}

/// `403` unless `caller` may place an order for `user_id`.
pub fn check_may_place(caller: &Caller, user_id: i64) -> Result<(), ApiError> {
    if !caller.may_act_for(user_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "you may only place orders for yourself",
        ));
    }
    Ok(())
}

/// Whose orders a list shows: a user lists their own (`403` if they asked for another's); an
/// administrator or a service those of `requested`, or everyone's. Another user's order is "not
/// found" elsewhere, so ids leak nothing.
pub fn list_scope(caller: &Caller, requested: Option<i64>) -> Result<Option<i64>, ApiError> {
    if let (false, Some(c)) = (caller.is_admin(), caller.user_id()) {
        if requested.is_some_and(|u| u != c) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "you may only list your own orders",
            ));
        }
        return Ok(Some(c));
    }
    Ok(requested)
}

/// The `404` for order `id` (also another user's: it is not theirs to know about).
pub fn order_not_found(id: &str) -> ApiError {
    ApiError::not_found("order_not_found", format!("order {id} does not exist"))
}

/// The `409` for cancelling an order in `status` (only a confirmed order is cancelled; a cancelled
/// one again is fine).
pub fn not_cancellable(status: &str) -> ApiError {
    ApiError::conflict(
        "not_cancellable",
        format!("an order in status `{status}` cannot be cancelled"),
    )
}

/// What placing an order came to.
pub enum Outcome {
    Confirmed(Vec<OrderItem>, i64),
    /// Refused for a reason that will not change on retry (unknown user, no stock): stored for replay.
    Rejected(ApiError),
    /// A dependency failed: not stored for replay; the key may be retried.
    Failed(ApiError),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn order(user_id: i64, items: &[(i64, i64)]) -> NewOrder {
        NewOrder {
            user_id,
            items: items
                .iter()
                .map(|&(product_id, qty)| NewOrderItem { product_id, qty })
                .collect(),
        }
    }

    fn fields(e: ApiError) -> Vec<String> {
        e.fields.into_iter().map(|f| f.field).collect()
    }

    fn user(id: i64, scopes: &[&str]) -> Caller {
        Caller::User {
            id,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("use a unit"));
        assert!(parse_duration("xs").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn canonical_merges_and_sorts_so_equal_orders_hash_equally() {
        let a = canonical(&order(1, &[(3, 1), (1, 2), (3, 4)])).unwrap();
        let pairs: Vec<_> = a.items.iter().map(|i| (i.product_id, i.qty)).collect();
        assert_eq!(pairs, [(1, 2), (3, 5)]);
        let b = canonical(&order(1, &[(1, 1), (3, 5), (1, 1)])).unwrap();
        assert_eq!(hash(&a), hash(&b));
        let other_user = canonical(&order(2, &[(1, 2), (3, 5)])).unwrap();
        assert_ne!(hash(&a), hash(&other_user));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let e = canonical(&order(0, &[(0, 1), (1, 0), (2, 1001)])).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            fields(e),
            [
                "user_id",
                "items[0].product_id",
                "items[1].qty",
                "items[2].qty"
            ]
        );
        assert_eq!(fields(canonical(&order(1, &[])).unwrap_err()), ["items"]);
        let many: Vec<_> = (1..=51).map(|p| (p, 1)).collect();
        assert_eq!(fields(canonical(&order(1, &many)).unwrap_err()), ["items"]);
        canonical(&order(1, &[(1, 1000)])).unwrap();
    }

    #[test]
    fn idempotency_keys_are_checked_and_scoped_to_their_user() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert("idempotency-key", "k-1".parse().unwrap());
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("k-1"));
        h.insert("idempotency-key", "".parse().unwrap());
        assert_eq!(
            idempotency_key(&h).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        h.insert("idempotency-key", "k".repeat(256).parse().unwrap());
        assert!(idempotency_key(&h).is_err());
        assert_ne!(scoped_key(1, "k"), scoped_key(2, "k"));
    }

    #[test]
    fn who_places_and_lists_whose_orders() {
        check_may_place(&user(1, &[]), 1).unwrap();
        assert_eq!(
            check_may_place(&user(1, &[]), 2).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        check_may_place(&user(1, &["admin"]), 2).unwrap();
        check_may_place(&Caller::Service, 2).unwrap();

        assert_eq!(list_scope(&user(1, &[]), None).unwrap(), Some(1));
        assert_eq!(list_scope(&user(1, &[]), Some(1)).unwrap(), Some(1));
        assert!(list_scope(&user(1, &[]), Some(2)).is_err());
        assert_eq!(list_scope(&user(1, &["admin"]), None).unwrap(), None);
        assert_eq!(list_scope(&Caller::Service, Some(2)).unwrap(), Some(2));
    }
}
