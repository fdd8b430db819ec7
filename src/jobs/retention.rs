//! Retention: deletes audit records older than `ANNALS_AUDIT_RETENTION_DAYS` and, only when an
//! operator sets `ANNALS_EVENT_RETENTION_DAYS` (default 0 = keep forever), events older than
//! that with their idempotency keys — in small batches, each its own short transaction, so
//! ingest never waits behind one long delete. Events go oldest first, so `seq` stays gapless
//! from the oldest kept event on, and only once the Merkle tree holds them (a keeper that fell
//! behind would otherwise find a gap it must stop at); the analytics rollups of the minutes and hours before the
//! cutoff go with them. Finished webhook deliveries and integration log rows go after
//! `ANNALS_DELIVERY_RETENTION_DAYS` (default 30); waiting deliveries are never removed.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::Timestamp;
use crate::store::{Store, StoreError};

/// Rows deleted per transaction.
pub const BATCH: usize = 5000;

#[derive(Clone, Copy, Debug)]
pub struct RetentionConfig {
    /// Keep audit records this many days; 0 keeps them forever.
    pub audit_days: u32,
    /// Keep events this many days; 0 (the default) keeps them forever.
    pub event_days: u32,
    /// Keep finished deliveries and integration log rows this many days; 0 keeps them forever.
    pub delivery_days: u32,
    /// How often the job runs.
    pub interval: Duration,
}

fn days_ago(days: u32) -> Timestamp {
    Timestamp::now().plus_days(-i64::from(days))
}

/// Deletes every audit record older than `days`, `batch` at a time; returns how many.
pub async fn purge_audit(store: &dyn Store, days: u32, batch: usize) -> Result<u64, StoreError> {
    let cutoff = days_ago(days);
    in_batches(batch, |limit| store.delete_audit_before(cutoff, limit)).await
}

/// Deletes every event received before `cutoff` (and its idempotency key), `batch` at a time,
/// oldest first, then the analytics rollups of the minutes and hours that ended before it;
/// returns how many events went in batches.
pub async fn purge_events(
    store: &dyn Store,
    cutoff: Timestamp,
    batch: usize,
) -> Result<u64, StoreError> {
    let events = in_batches(batch, |limit| store.delete_events_before(cutoff, limit)).await?;
    store.delete_rollups_before(cutoff).await?;
    Ok(events)
}

/// Deletes finished deliveries and integration log rows from before `cutoff`, `batch` of each
/// at a time; waiting deliveries stay whatever their age. Returns how many rows went.
pub async fn purge_deliveries(
    store: &dyn Store,
    cutoff: Timestamp,
    batch: usize,
) -> Result<u64, StoreError> {
    in_batches(batch, |limit| store.delete_deliveries_before(cutoff, limit)).await
}

/// Runs `delete` (at most `batch` rows per call) until a call deletes fewer than `batch`;
/// returns the total.
async fn in_batches<F, Fut>(batch: usize, mut delete: F) -> Result<u64, StoreError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = delete(batch).await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
        // Let other writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// Logs what one purge did.
fn report(what: &'static str, days: u32, result: Result<u64, StoreError>) {
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, days, "{what} retention"),
        Err(e) => tracing::warn!(error = %e, "{what} retention failed; will retry"),
    }
}

/// Runs the retention job every `config.interval` until the handle is aborted.
pub fn spawn(store: Arc<dyn Store>, config: RetentionConfig) -> Option<JoinHandle<()>> {
    if config.audit_days == 0 && config.event_days == 0 && config.delivery_days == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.interval);
        loop {
            tick.tick().await;
            if config.audit_days > 0 {
                let result = purge_audit(store.as_ref(), config.audit_days, BATCH).await;
                report("audit", config.audit_days, result);
            }
            if config.event_days > 0 {
                let cutoff = days_ago(config.event_days);
                let result = purge_events(store.as_ref(), cutoff, BATCH).await;
                report("event", config.event_days, result);
            }
            if config.delivery_days > 0 {
                let cutoff = days_ago(config.delivery_days);
                let result = purge_deliveries(store.as_ref(), cutoff, BATCH).await;
                report("delivery", config.delivery_days, result);
            }
        }
    }))
}
