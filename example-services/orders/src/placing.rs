//! Placing an order, after the request is checked and the order stored `pending`: the steps that may
//! fail whenever, each leaving the order in a state recovery can settle.
//!
//! 1. the order is stored `pending` (with a lease) before anything else is called (`store`);
//! 2. the user is checked and stock reserved under the order's id, idempotent at the products service
//!    (`remote::place`), while this instance renews its lease ([`holding_lease`]);
//! 3. the order becomes `confirmed` only if it is still `pending` and this instance's ([`finish`]).
//!
//! Any refusal or failure marks it `rejected`/`failed` and releases the reservation.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use service_kit::db;
use service_kit::{ApiError, ApiResult};

use crate::domain::Outcome;
use crate::model::{NewOrder, Order};
use crate::remote::release;
use crate::{store, AppState};

/// A response as stored for idempotent replay.
pub fn stored(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut r = (status, [("content-type", "application/json")], body).into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// Run `work` on order `id` while renewing this instance's lease on it (every third of
/// `pending_timeout`), so that another instance takes it over only if this one stops working on it
/// (a crash, `kill -9`, a hang longer than the lease). A renewal that finds the lease gone changes
/// nothing: the confirmation checks the lease holder and loses then.
pub async fn holding_lease<T>(
    st: &AppState,
    id: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let every = (st.settings.pending_timeout / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                match store::renew_lease(&st.pool, id, &st.instance, &st.settings).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(order = id, "lease lost while placing the order"),
                    Err(e) => tracing::warn!(error = %e, order = id, "could not renew the lease"),
                }
            }
        }
    }
}

/// Step 4: record the outcome; on anything but confirmation, give back what may be reserved.
pub async fn finish(
    st: &AppState,
    id: &str,
    req: &NewOrder,
    created_at: &str,
    outcome: Outcome,
) -> ApiResult<Response> {
    let now = db::now();
    match outcome {
        Outcome::Confirmed(mut items, total) => {
            items.sort_by_key(|it| it.product_id);
            let order = Order {
                id: id.to_string(),
                user_id: req.user_id,
                status: "confirmed".into(),
                total_cents: total,
                items,
                created_at: created_at.to_string(),
                updated_at: now.clone(),
            };
            let body = serde_json::to_string(&order).unwrap_or_default();
            match store::confirm(&st.pool, &st.instance, &order, &body, &now).await {
                Ok(true) => {
                    let mut resp = stored(StatusCode::CREATED, body, false);
                    if let Ok(v) = HeaderValue::from_str(&format!("/orders/{id}")) {
                        resp.headers_mut().insert("location", v);
                    }
                    Ok(resp)
                }
                Ok(false) => {
                    // The instance that took it over fails it and releases; releasing here too is
                    // harmless (idempotent) and gives the stock back sooner.
                    release(st, id).await;
                    Err(ApiError::unavailable(
                        "order_expired",
                        "the order took too long and was cancelled; try again",
                    ))
                }
                Err(e) => {
                    tracing::error!(error = %e, order = id, "could not confirm order");
                    fail(st, id).await;
                    Err(ApiError::unavailable(
                        "database_busy",
                        "the order could not be stored; try again",
                    ))
                }
            }
        }
        Outcome::Rejected(err) => {
            // Nothing was reserved (reservations are all-or-nothing), so nothing to give back.
            let body = serde_json::to_string(&err.body()).unwrap_or_default();
            store::reject(&st.pool, id, &st.instance, err.status, &body, &now).await?;
            Err(err)
        }
        Outcome::Failed(err) => {
            fail(st, id).await;
            Err(err)
        }
    }
}

/// Mark a pending order this instance holds failed (freeing its idempotency key for a retry) and
/// release its stock. The lease is kept (renewed) for the release: another instance retries it only if
/// this one does not get it done in time.
pub async fn fail(st: &AppState, id: &str) {
    if let Err(e) = store::mark_failed(&st.pool, id, &st.instance, &st.settings).await {
        tracing::error!(error = %e, order = id, "could not mark order failed; recovery will");
        return;
    }
    release(st, id).await;
}
