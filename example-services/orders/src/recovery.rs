//! The recovery loop: settles the orders no request is working on any more, whichever instance left
//! them. It belongs to the server (`service_kit::server::serve_with`), which starts it with the
//! listener, stops it at shutdown and waits for it.

use std::time::Duration;

use service_kit::db;

use crate::remote::release;
use crate::{store, AppState};

/// Settles the orders no request is working on any more (see [`recover`]): the loop belongs to the
/// server, which starts it, stops it at shutdown and waits for it.
pub struct Recovery {
    pub(crate) state: AppState,
}

impl Recovery {
    /// Every 500 ms, settle what has to be, until `stop`. The first round runs at once, so that what
    /// a previous run left is settled soon after a start. A round in progress is finished, never cut.
    pub async fn run(self, mut stop: service_kit::server::Stop) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.requested() => break,
                _ = tick.tick() => recover(&self.state, &stop).await,
            }
        }
        tracing::info!("recovery loop stopped");
    }
}

/// Orders at most one round settles: a bound on how long a round (and so a shutdown) can take.
const RECOVERY_BATCH: usize = 100;

/// Settle the orders nobody works on any more, whichever instance left them: a `pending` order whose
/// lease ran out (its instance died or hung before confirming) is failed and its stock released; a
/// `failed` or `cancelled` one whose stock is not yet back is released again.
///
/// Nothing here assumes it is the only instance: each order is first taken over with one conditional
/// `UPDATE ... WHERE lease_until < now ... RETURNING`, which exactly one instance wins (PostgreSQL
/// rechecks the `WHERE` on the row it waited for, under READ COMMITTED; SQLite has one writer), and every
/// later step is conditional on still holding it. One order at a time, so that a lease (taken for
/// `pending_timeout`, longer than the one call a step makes) never runs out under its new holder.
/// Timestamps are this host's clock: instances' clocks must agree to well within `pending_timeout`.
pub async fn recover(st: &AppState, stop: &service_kit::server::Stop) {
    for _ in 0..RECOVERY_BATCH {
        if stop.is_requested() {
            return;
        }
        let now = db::now();
        let claimed = store::claim_abandoned(&st.pool, &st.instance, &st.settings, &now).await;
        let (id, status) = match claimed {
            Ok(Some(c)) => c,
            Ok(None) => return, // nothing to settle
            Err(e) => {
                tracing::warn!(error = %e, "recovery could not claim an order");
                return;
            }
        };
        if status == "pending" {
            tracing::info!(order = %id, "failing an order left pending");
            let failed = store::fail_abandoned(&st.pool, &id, &st.instance, &now).await;
            if let Err(e) = failed {
                tracing::warn!(error = %e, order = %id, "could not fail an order; the lease will run out again");
                continue;
            }
        }
        release(st, &id).await;
    }
}
