//! `AnalyticsStore`: what analytics ask of a store — the event-count rollups the writers keep
//! (per minute and per hour, added in each group's own transaction and by imports), ingest
//! latency histograms, and the counts of deliveries still to go.
//!
//! Invariants every backend keeps:
//! - A rollup row holds exactly the committed events of its bucket, client, type and source
//!   (until retention removes the bucket); the migration that added the rollups counted the
//!   events already stored.
//! - Count queries read rollups only, never `events`, so their cost follows the number of
//!   buckets and types, not of events.

use async_trait::async_trait;

use super::StoreError;
use crate::domain::Timestamp;
use crate::domain::analytics::{
    CountQuery, Counted, DeliveryCounts, GroupBy, LatencyRow, MAX_COUNTED_ROWS,
};

pub use crate::ingest::queue::QueueDepth;

#[async_trait]
pub trait AnalyticsStore: Send + Sync {
    /// Sums rollup rows (see `CountQuery`); more than `MAX_COUNTED_ROWS` summed rows is
    /// `StoreError::QueryTooBroad`.
    async fn count_events(&self, query: CountQuery) -> Result<Vec<Counted>, StoreError>;

    /// Adds latency measurements to the stored histograms.
    async fn add_latencies(&self, rows: Vec<LatencyRow>) -> Result<(), StoreError>;

    /// The summed latency slots of the hours in `[from, to)` (Unix seconds), of one client or
    /// (`None`) all: `(slot, count)`.
    async fn latency_slots(
        &self,
        client_id: Option<String>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u16, i64)>, StoreError>;

    /// Deliveries waiting or in the dead-letter queue, of one owner or (`None`) all.
    async fn delivery_counts(&self, owner: Option<String>) -> Result<DeliveryCounts, StoreError>;

    /// This node's write queue.
    fn write_queue(&self) -> QueueDepth;

    /// Retention: removes rollup and latency rows of buckets that end before `before`.
    async fn delete_rollups_before(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The statement of a `CountQuery` in either dialect (SQLite reads `$N` as a numbered
/// parameter), with its parameters in order: `Some(text)` or an integer.
pub(crate) fn count_sql(query: &CountQuery) -> (String, Vec<SqlParam>) {
    let mut params = vec![SqlParam::Int(query.from), SqlParam::Int(query.to)];
    let period = if query.width > 0 {
        params.push(SqlParam::Int(query.width));
        "bucket - ((bucket % CAST($3 AS BIGINT)) + CAST($3 AS BIGINT)) % CAST($3 AS BIGINT)"
    } else {
        "CAST($1 AS BIGINT)"
    };
    let group = match query.group {
        Some(GroupBy::EventType) | None => "CAST(NULL AS TEXT)",
        Some(g) => g.column(),
    };
    let mut sql = format!(
        "SELECT {period} AS period, event_type, {group} AS grp, CAST(sum(count) AS BIGINT) \
         FROM {} WHERE bucket >= CAST($1 AS BIGINT) AND bucket < CAST($2 AS BIGINT)",
        query.rollup.table()
    );
    if let Some(client) = &query.client_id {
        params.push(SqlParam::Text(client.clone()));
        sql.push_str(&format!(" AND client_id = ${}", params.len()));
    }
    if let Some(source) = &query.source {
        params.push(SqlParam::Text(source.clone()));
        sql.push_str(&format!(" AND source = ${}", params.len()));
    }
    sql.push_str(&format!(
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT {}",
        MAX_COUNTED_ROWS + 1
    ));
    (sql, params)
}

/// A parameter of `count_sql`.
#[derive(Clone, Debug)]
pub(crate) enum SqlParam {
    Int(i64),
    Text(String),
}

/// The rows read, or `QueryTooBroad` past `MAX_COUNTED_ROWS`.
pub(crate) fn within_row_limit(rows: Vec<Counted>) -> Result<Vec<Counted>, StoreError> {
    if rows.len() > MAX_COUNTED_ROWS {
        Err(StoreError::QueryTooBroad)
    } else {
        Ok(rows)
    }
}
