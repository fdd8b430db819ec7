//! `Telemetry`: the node's Prometheus metrics (`GET /metrics`), kept in a registry per server
//! rather than a process-wide one, so two servers in one process (the tests) count apart.
//!
//! Invariants:
//! - What requests touch is a plain atomic: responses by status class (counted by the audit
//!   layer, which every route passes), events stored and duplicates, append latency buckets.
//! - Everything else (queues, streams, deliveries, the store's health) is read when scraped.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::AppendOutcome;

type Labels = Vec<(&'static str, &'static str)>;

/// The status classes responses are counted by.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Append latency buckets, in seconds: 0.5 ms to ~4 s.
const APPEND_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096,
];

pub struct Telemetry {
    registry: Registry,
    responses: [Counter; 5],
    events_stored: Counter,
    events_duplicate: Counter,
    append_seconds: Histogram,
    /// Set when scraped.
    pub gauges: ScrapeGauges,
}

/// What `/metrics` reads afresh each scrape.
pub struct ScrapeGauges {
    pub write_queue_jobs: Gauge,
    pub write_queue_bytes: Gauge,
    pub audit_queue_records: Gauge,
    pub audit_records_dropped: Gauge<u64, AtomicU64>,
    pub streams_open: Gauge,
    pub deliveries: Family<Labels, Gauge>,
    pub store_up: Gauge,
    pub merkle_tree_size: Gauge,
    pub merkle_events_behind: Gauge,
    pub merkle_checkpoint_size: Gauge,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("annals");
        let by_class = Family::<Labels, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP responses by status class",
            by_class.clone(),
        );
        let responses =
            CLASSES.map(|class| by_class.get_or_create(&vec![("class", class)]).clone());
        let events_stored = Counter::default();
        registry.register(
            "events_stored",
            "Events stored (duplicates not included)",
            events_stored.clone(),
        );
        let events_duplicate = Counter::default();
        registry.register(
            "events_duplicate",
            "Events answered as duplicates of stored ones",
            events_duplicate.clone(),
        );
        let append_seconds = Histogram::new(APPEND_BUCKETS);
        registry.register(
            "append_seconds",
            "Time from an append entering the write queue to its durable commit",
            append_seconds.clone(),
        );
        let gauges = ScrapeGauges {
            write_queue_jobs: Gauge::default(),
            write_queue_bytes: Gauge::default(),
            audit_queue_records: Gauge::default(),
            audit_records_dropped: Gauge::default(),
            streams_open: Gauge::default(),
            deliveries: Family::default(),
            store_up: Gauge::default(),
            merkle_tree_size: Gauge::default(),
            merkle_events_behind: Gauge::default(),
            merkle_checkpoint_size: Gauge::default(),
        };
        let g = &gauges;
        registry.register(
            "write_queue_jobs",
            "Writes waiting in this node's queue",
            g.write_queue_jobs.clone(),
        );
        registry.register(
            "write_queue_bytes",
            "Bytes of event data waiting in this node's queue",
            g.write_queue_bytes.clone(),
        );
        registry.register(
            "audit_queue_records",
            "Audit records waiting to be stored",
            g.audit_queue_records.clone(),
        );
        registry.register(
            "audit_records_dropped",
            "Audit records dropped because their queue was full, since start",
            g.audit_records_dropped.clone(),
        );
        registry.register(
            "streams_open",
            "Open /v1/stream connections on this node",
            g.streams_open.clone(),
        );
        registry.register(
            "deliveries",
            "Webhook deliveries waiting or failed, by status",
            g.deliveries.clone(),
        );
        registry.register(
            "store_up",
            "1 when the store answers and its writer runs",
            g.store_up.clone(),
        );
        registry.register(
            "merkle_tree_size",
            "Events in the Merkle tree",
            g.merkle_tree_size.clone(),
        );
        registry.register(
            "merkle_events_behind",
            "Committed events not yet in the Merkle tree (stays near 0; growth means the keeper is stuck)",
            g.merkle_events_behind.clone(),
        );
        registry.register(
            "merkle_checkpoint_size",
            "Tree size of the newest signed checkpoint",
            g.merkle_checkpoint_size.clone(),
        );
        Self {
            registry,
            responses,
            events_stored,
            events_duplicate,
            append_seconds,
            gauges,
        }
    }
}

impl Telemetry {
    /// Counts one response.
    pub fn response(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].inc();
    }

    /// Counts what one append stored, and how long it took.
    pub fn append(&self, outcome: &AppendOutcome, took: Duration) {
        if let AppendOutcome::Stored(items) = outcome {
            let duplicates = items.iter().filter(|i| i.duplicate).count() as u64;
            self.events_duplicate.inc_by(duplicates);
            self.events_stored.inc_by(items.len() as u64 - duplicates);
        }
        self.append_seconds.observe(took.as_secs_f64());
    }

    /// The metrics in Prometheus' text format (0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(error = %e, "rendering the metrics failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AppendedItem;

    #[test]
    fn counts_render_in_the_text_format() {
        let t = Telemetry::default();
        t.response(StatusCode::CREATED);
        t.response(StatusCode::TOO_MANY_REQUESTS);
        t.append(
            &AppendOutcome::Stored(vec![
                AppendedItem {
                    id: uuid::Uuid::nil(),
                    duplicate: false,
                },
                AppendedItem {
                    id: uuid::Uuid::nil(),
                    duplicate: true,
                },
            ]),
            Duration::from_millis(3),
        );
        t.gauges
            .deliveries
            .get_or_create(&vec![("status", "failed")])
            .set(2);
        let text = t.render();
        for line in [
            "annals_http_responses_total{class=\"2xx\"} 1",
            "annals_http_responses_total{class=\"4xx\"} 1",
            "annals_events_stored_total 1",
            "annals_events_duplicate_total 1",
            "annals_append_seconds_bucket{le=\"0.004\"} 1",
            "annals_deliveries{status=\"failed\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }
}
