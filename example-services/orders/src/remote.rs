//! The other services, over HTTP with the service token: the user checked at the users service, stock
//! reserved and given back at the products service (at each of its instances in turn while one cannot
//! be reached). Their answers are turned into an [`Outcome`] here, so the rest of the service never
//! sees a remote status code.

use serde::Deserialize;
use service_kit::{ApiError, FieldError};

use crate::domain::Outcome;
use crate::model::{NewOrder, OrderItem};
use crate::store;
use crate::AppState;

/// Send a request to the products service, to each of its instances in turn while the answer is a
/// transport error (refused, reset, timed out). Safe for both calls made to it: a reservation is
/// idempotent by the order's id (the same id and items again is a replay, `200`) and so is a release,
/// so what an instance may have done before it failed is not done twice.
async fn to_products(
    st: &AppState,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let urls = &st.settings.products_urls;
    let first = st
        .next_products
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tries = (0..urls.len()).map(|i| &urls[(first + i) % urls.len()]);
    let mut result = match tries.next() {
        Some(base) => request(base).send().await,
        None => request("").send().await, // no URL: refused by `app`; this only reports it
    };
    for base in tries {
        match &result {
            Err(e) => tracing::warn!(error = %e, "products instance unreachable; trying the next"),
            Ok(_) => break,
        }
        result = request(base).send().await;
    }
    result
}

/// Steps 2–3: check the user, reserve the stock.
pub async fn place(st: &AppState, id: &str, order: &NewOrder) -> Outcome {
    let s = &st.settings;
    match st
        .http
        .get(format!("{}/users/{}", s.users_url, order.user_id))
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => {}
        Ok(r) if r.status() == 404 => {
            let mut e = ApiError::invalid(vec![FieldError::new(
                "user_id",
                format!("user {} does not exist", order.user_id),
            )]);
            e.code = "unknown_user";
            e.message = "the user does not exist".into();
            return Outcome::Rejected(e);
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), "users service answered unexpectedly");
            return Outcome::Failed(ApiError::unavailable(
                "users_unavailable",
                "the users service is unavailable",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "users service unreachable");
            return Outcome::Failed(ApiError::unavailable(
                "users_unavailable",
                "the users service is unavailable",
            ));
        }
    }
    #[derive(Deserialize)]
    struct Reserved {
        items: Vec<OrderItem>,
        total_cents: i64,
    }
    #[derive(Deserialize)]
    struct Remote {
        error: RemoteError,
    }
    #[derive(Deserialize)]
    struct RemoteError {
        #[serde(default)]
        code: String,
        message: String,
    }
    let body = serde_json::json!({ "id": id, "items": order.items });
    match to_products(st, |base| {
        st.http.post(format!("{base}/reservations")).json(&body)
    })
    .await
    {
        Ok(r) if r.status() == 201 || r.status() == 200 => match r.json::<Reserved>().await {
            Ok(res) => Outcome::Confirmed(res.items, res.total_cents),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable reservation");
                Outcome::Failed(ApiError::unavailable(
                    "products_unavailable",
                    "the products service is unavailable",
                ))
            }
        },
        Ok(r) if r.status() == 409 => {
            let (code, msg) = r
                .json::<Remote>()
                .await
                .map(|e| (e.error.code, e.error.message))
                .unwrap_or_else(|_| (String::new(), "insufficient stock".into()));
            if code == "reservation_released" {
                // This order's reservation arrived after the order gave up on it and released it:
                // the order has failed (no stock was taken), not been refused for lack of stock.
                return Outcome::Failed(ApiError::unavailable(
                    "products_too_slow",
                    "the products service answered after the order gave up; try again",
                ));
            }
            Outcome::Rejected(ApiError::conflict("insufficient_stock", msg))
        }
        Ok(r) if r.status() == 404 => {
            let msg = r
                .json::<Remote>()
                .await
                .map(|e| e.error.message)
                .unwrap_or_else(|_| "unknown product".into());
            let mut e = ApiError::invalid(vec![FieldError::new("items", msg)]);
            e.code = "unknown_product";
            e.message = "an ordered product does not exist".into();
            Outcome::Rejected(e)
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), "products service answered unexpectedly");
            Outcome::Failed(ApiError::unavailable(
                "products_unavailable",
                "the products service is unavailable",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "products service unreachable");
            Outcome::Failed(ApiError::unavailable(
                "products_unavailable",
                "the products service is unavailable",
            ))
        }
    }
}

/// Give back the stock of a failed or cancelled order; on success remember it. Idempotent.
pub async fn release(st: &AppState, id: &str) -> bool {
    match to_products(st, |base| {
        st.http.delete(format!("{base}/reservations/{id}"))
    })
    .await
    {
        Ok(r) if r.status() == 204 || r.status() == 404 => {
            store::mark_released(&st.pool, id).await.is_ok()
        }
        Ok(r) => {
            tracing::warn!(status = %r.status(), order = id, "release refused; will retry");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, order = id, "release failed; will retry");
            false
        }
    }
}
