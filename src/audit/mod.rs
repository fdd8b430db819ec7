//! The audit trail's write path: a bounded queue and one writer task per node that stores
//! records in batches, off the request path.
//!
//! Invariants:
//! - `record` never waits and never fails the request: when the queue is full (`QUEUE` records,
//!   or `QUEUE_BYTES` of them, whichever comes first: records with bodies or long paths are
//!   large) the record is dropped and counted, so auditing can't slow or block event ingest, nor
//!   fill memory while the audit database is slow.
//! - The writer batches what arrives within `LINGER` of the first record (up to `MAX_BATCH`) into
//!   one store write. A backlog of a full batch or more goes out at once, batch after batch:
//!   lingering before each would cap the writer at `MAX_BATCH` records per `LINGER` (20k/s),
//!   below what one node ingests, and the queue would overflow.
//! - Records dropped because the queue was full are logged by the writer (a warning with the
//!   count since the last one), never lost silently.
//! - On shutdown the writer stores everything still queued before it stops.

pub mod bodies;
pub mod security;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::domain::audit::AuditRecord;
use crate::store::Store;

const QUEUE: usize = 65_536;
const QUEUE_BYTES: usize = 64 * 1024 * 1024;
const MAX_BATCH: usize = 2000;
const LINGER: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditRecord>,
    counters: Arc<Counters>,
}

/// What the request side and the writer share besides the queue.
struct Counters {
    /// Records dropped because the queue was full.
    dropped: AtomicU64,
    /// The bytes (`approx_bytes`) the queue may still take: a semaphore of bytes, as the write
    /// queue's byte budget is; the writer gives a batch's back when it takes the batch.
    free_bytes: Semaphore,
}

impl AuditLog {
    /// Starts the writer; it stops once every `AuditLog` clone is dropped and the queue is empty.
    pub fn start(store: Arc<dyn Store>) -> (Self, JoinHandle<()>) {
        let (log, rx) = Self::queue();
        let writer = tokio::spawn(write_batches(store, rx, log.counters.clone()));
        (log, writer)
    }

    fn queue() -> (Self, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters {
            dropped: AtomicU64::new(0),
            free_bytes: Semaphore::new(QUEUE_BYTES),
        });
        (Self { tx, counters }, rx)
    }

    /// Records waiting in the queue, and how many were dropped since the start.
    pub fn depth(&self) -> (usize, u64) {
        (
            self.tx.max_capacity() - self.tx.capacity(),
            self.counters.dropped.load(Ordering::Relaxed),
        )
    }

    pub fn record(&self, record: AuditRecord) {
        let free = &self.counters.free_bytes;
        let bytes = budget_bytes(&record);
        let queued = match free.try_acquire_many(bytes) {
            Ok(taken) => {
                taken.forget(); // given back by the writer with the batch
                let sent = self.tx.try_send(record).is_ok();
                if !sent {
                    free.add_permits(bytes as usize);
                }
                sent
            }
            Err(_) => false,
        };
        if !queued {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a record takes from the queue's byte budget while it waits.
fn budget_bytes(record: &AuditRecord) -> u32 {
    u32::try_from(record.approx_bytes()).unwrap_or(u32::MAX)
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<AuditRecord>,
    counters: Arc<Counters>,
) {
    let mut reported = 0;
    while let Some(first) = rx.recv().await {
        // Sleep, then drain: waiting on the queue instead would wake this task once per record.
        // A backlog needs no company.
        if rx.len() + 1 < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
        }
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
        let bytes: usize = batch.iter().map(|r| budget_bytes(r) as usize).sum();
        counters.free_bytes.add_permits(bytes);
        if let Err(e) = store.append_audit(batch).await {
            tracing::warn!(error = %e, records = n, "audit records could not be stored");
        }
        let lost = counters.dropped.load(Ordering::Relaxed);
        if lost > reported {
            tracing::warn!(
                records = lost - reported,
                total = lost,
                "audit records dropped: the audit queue was full"
            );
            reported = lost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::audit::AuditQuery;

    /// On the runtime's paused clock, time only moves when every task waits on a timer, so
    /// the time taken counts the writer's lingers, not how fast the machine is.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_is_written_batch_after_batch_without_lingering() {
        let (_dir, store) = crate::store::sqlite::scratch_store();
        let (log, rx) = AuditLog::queue();
        let total = 3 * MAX_BATCH + 1;
        for n in 0..total {
            log.record(AuditRecord::sample(n));
        }
        let counters = log.counters.clone();
        drop(log);
        let started = tokio::time::Instant::now();
        write_batches(store.clone(), rx, counters.clone()).await;
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(counters.free_bytes.available_permits(), QUEUE_BYTES);
        // Four batches: only the last one, a single record, waits for company (lingering before
        // each, as the writer once did, takes four times as long).
        assert!(started.elapsed() < 2 * LINGER, "{:?}", started.elapsed());
        let mut query = AuditQuery::default();
        query.page.limit = total + 10;
        assert_eq!(store.query_audit(query).await.unwrap().len(), total);
    }

    /// Large records (long paths, bodies) fill the queue's byte budget before its record count:
    /// past it they are dropped and counted, and the budget comes back as the writer takes them.
    #[tokio::test]
    async fn the_queue_holds_at_most_its_bytes() {
        let (_dir, store) = crate::store::sqlite::scratch_store();
        let (log, rx) = AuditLog::queue();
        let mut large = AuditRecord::sample(0);
        large.request_body = Some("b".repeat(4096));
        large.response_body = Some("r".repeat(4096));
        let each = large.approx_bytes();
        let fit = QUEUE_BYTES / each;
        assert!(fit < QUEUE, "the byte budget is the tighter bound here");
        for _ in 0..fit + 10 {
            log.record(large.clone());
        }
        let counters = log.counters.clone();
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 10);
        assert!(counters.free_bytes.available_permits() < each);
        drop(log);
        write_batches(store.clone(), rx, counters.clone()).await;
        assert_eq!(counters.free_bytes.available_permits(), QUEUE_BYTES);
        let mut query = AuditQuery::default();
        query.page.limit = fit + 100;
        assert_eq!(store.query_audit(query).await.unwrap().len(), fit);
    }
}
