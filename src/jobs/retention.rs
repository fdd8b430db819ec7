//! Retention: deletes audit records older than `ANNALS_AUDIT_RETENTION_DAYS` in small batches,
//! each its own short transaction, so ingest never waits behind one long delete.

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
    /// How often the job runs.
    pub interval: Duration,
}

/// Deletes every audit record older than `days`, `batch` at a time; returns how many.
pub async fn purge_audit(store: &dyn Store, days: u32, batch: usize) -> Result<u64, StoreError> {
    let cutoff =
        Timestamp::from_micros(Timestamp::now().as_micros() - i64::from(days) * 86_400_000_000);
    let mut total = 0;
    loop {
        let deleted = store.delete_audit_before(cutoff, batch).await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
        // Let other writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// Runs the retention job every `config.interval` until the handle is aborted.
pub fn spawn(store: Arc<dyn Store>, config: RetentionConfig) -> Option<JoinHandle<()>> {
    if config.audit_days == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.interval);
        loop {
            tick.tick().await;
            match purge_audit(store.as_ref(), config.audit_days, BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, days = config.audit_days, "audit retention"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed; will retry"),
            }
        }
    }))
}
