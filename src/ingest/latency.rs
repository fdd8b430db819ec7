//! `LatencyRecorder`: how long appends take, from entering the write queue to their durable
//! commit, kept per client and hour as a log-linear histogram (`domain::analytics`) and added to
//! the store's histograms every `FLUSH` (and once more at shutdown).
//!
//! Invariants:
//! - `record` never waits on the store: it adds to an in-memory map under a short lock.
//! - The map is bounded (`MAX_PENDING` clients): past it, measurements of new clients are
//!   dropped until the next flush rather than growing memory without limit.
//! - Slot counts add up, so every node adds its own and the stored histogram is their sum.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::analytics::{HOUR_SECS, LatencyRow, floor_to, latency_slot, unix_secs};
use crate::domain::{ClientId, Timestamp};
use crate::store::Store;

const FLUSH: Duration = Duration::from_secs(10);
const MAX_PENDING: usize = 10_000;

/// Per client: per (hour, slot), how many appends.
type Pending = HashMap<ClientId, HashMap<(i64, u16), i64>>;

#[derive(Clone, Default)]
pub struct LatencyRecorder {
    pending: Arc<Mutex<Pending>>,
}

impl LatencyRecorder {
    /// Starts the flusher; it runs until aborted (the last flush happens in `flush`).
    pub fn start(store: Arc<dyn Store>) -> (Self, JoinHandle<()>) {
        let recorder = Self::default();
        let this = recorder.clone();
        let task = crate::jobs::every(FLUSH, move || {
            let (this, store) = (this.clone(), store.clone());
            async move { this.flush(store.as_ref()).await }
        });
        (recorder, task)
    }

    /// Counts one append of `client`'s that took `latency`.
    pub fn record(&self, client: &ClientId, latency: Duration) {
        let hour = floor_to(unix_secs(Timestamp::now()), HOUR_SECS);
        let slot = latency_slot(latency);
        let mut pending = self.pending.lock().expect("latency recorder lock");
        if let Some(slots) = pending.get_mut(client) {
            *slots.entry((hour, slot)).or_default() += 1;
        } else if pending.len() < MAX_PENDING {
            pending.insert(client.clone(), HashMap::from([((hour, slot), 1)]));
        }
    }

    /// Takes what was recorded since the last call.
    fn take(&self) -> Vec<LatencyRow> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("latency recorder lock"));
        let mut rows: Vec<LatencyRow> = pending
            .into_iter()
            .flat_map(|(client, slots)| {
                slots
                    .into_iter()
                    .map(move |((hour, slot), count)| LatencyRow {
                        client_id: client.to_string(),
                        hour,
                        slot,
                        count,
                    })
            })
            .collect();
        // One order for every node's upserts.
        rows.sort_unstable_by(|a, b| {
            (&a.client_id, a.hour, a.slot).cmp(&(&b.client_id, b.hour, b.slot))
        });
        rows
    }

    /// Stores what is pending (also called once at shutdown).
    pub async fn flush(&self, store: &dyn Store) {
        let rows = self.take();
        if rows.is_empty() {
            return;
        }
        let n = rows.len();
        if let Err(e) = store.add_latencies(rows).await {
            tracing::warn!(error = %e, rows = n, "ingest latencies could not be stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurements_add_up_per_client_hour_and_slot() {
        let recorder = LatencyRecorder::default();
        let a = ClientId::parse("a").unwrap();
        let b = ClientId::parse("b").unwrap();
        recorder.record(&a, Duration::from_micros(1000));
        recorder.record(&a, Duration::from_micros(1001));
        recorder.record(&b, Duration::from_micros(5));
        let rows = recorder.take();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].client_id.as_str(), rows[0].count), ("a", 2));
        assert_eq!(
            (rows[1].client_id.as_str(), rows[1].slot, rows[1].count),
            ("b", 5, 1)
        );
        assert!(recorder.take().is_empty());
    }
}
