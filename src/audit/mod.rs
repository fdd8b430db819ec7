//! The audit trail's write path: a bounded queue and one writer task per node that stores
//! records in batches, off the request path.
//!
//! Invariants:
//! - `record` never waits and never fails the request: when the queue is full the record is
//!   dropped and counted (`dropped()`), so auditing can't slow or block event ingest.
//! - The writer batches what arrives within `LINGER` of the first record (up to `MAX_BATCH`) into
//!   one store write.
//! - On shutdown the writer stores everything still queued before it stops.

pub mod bodies;
pub mod security;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::domain::audit::AuditRecord;
use crate::store::Store;

const QUEUE: usize = 65_536;
const MAX_BATCH: usize = 2000;
const LINGER: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer; it stops once every `AuditLog` clone is dropped and the queue is empty.
    pub fn start(store: Arc<dyn Store>) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_batches(store, rx));
        (
            Self {
                tx,
                dropped: Arc::default(),
            },
            writer,
        )
    }

    pub fn record(&self, record: AuditRecord) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records lost because the queue was full (or the writer gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_batches(store: Arc<dyn Store>, mut rx: mpsc::Receiver<AuditRecord>) {
    while let Some(first) = rx.recv().await {
        // Sleep, then drain: waiting on the queue instead would wake this task once per record.
        tokio::time::sleep(LINGER).await;
        // Sized once: grown from one record, the batch's copies and fresh pages showed in the
        // profile at every flush.
        let mut batch = Vec::with_capacity((rx.len() + 1).min(MAX_BATCH));
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let n = batch.len();
        if let Err(e) = store.append_audit(batch).await {
            tracing::warn!(error = %e, records = n, "audit records could not be stored");
        }
    }
}
