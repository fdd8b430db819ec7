//! Analytics on PostgreSQL (`AnalyticsStore`): rollup reads on the pool; the writers add each
//! group's counts with one `UNNEST` upsert per rollup (`add_counts`), under the sequence row
//! lock every group takes, so two nodes never upsert the same rows at once.

use async_trait::async_trait;
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use super::unavailable;
use crate::domain::Timestamp;
use crate::domain::analytics::{
    CountQuery, Counted, DeliveryCounts, EventCounts, HOUR_SECS, LatencyRow, MINUTE_SECS, Rollup,
    unix_secs,
};
use crate::store::StoreError;
use crate::store::analytics::{AnalyticsStore, QueueDepth, SqlParam, count_sql, within_row_limit};

/// Adds a group's (or an import's) event counts to both rollups, in the caller's transaction:
/// one statement (a round trip per group), the minute rows given, the hour rows summed from
/// them. The rows come in key order, so concurrent writers lock them in the same order.
const ADD_COUNTS: &str = "WITH u AS (SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], \
     $4::text[], $5::bigint[]) AS u(c, b, t, s, n)), \
     m AS (INSERT INTO event_counts_minute AS r (client_id, bucket, event_type, source, count) \
           SELECT c, b, t, s, n FROM u \
           ON CONFLICT (client_id, bucket, event_type, source) \
           DO UPDATE SET count = r.count + EXCLUDED.count) \
     INSERT INTO event_counts_hour AS r (client_id, bucket, event_type, source, count) \
     SELECT c, b - ((b % 3600) + 3600) % 3600, t, s, sum(n) FROM u GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 \
     ON CONFLICT (client_id, bucket, event_type, source) DO UPDATE SET count = r.count + EXCLUDED.count";

pub(super) async fn add_counts(
    tx: &impl deadpool_postgres::GenericClient,
    counts: &EventCounts<'_>,
) -> Result<(), StoreError> {
    if counts.is_empty() {
        return Ok(());
    }
    let rows = counts.rows(Rollup::Minute);
    let client: Vec<&str> = rows.iter().map(|r| r.client_id).collect();
    let bucket: Vec<i64> = rows.iter().map(|r| r.bucket).collect();
    let event_type: Vec<&str> = rows.iter().map(|r| r.event_type).collect();
    let source: Vec<&str> = rows.iter().map(|r| r.source).collect();
    let count: Vec<i64> = rows.iter().map(|r| r.count).collect();
    let upsert = tx.prepare_cached(ADD_COUNTS).await.map_err(unavailable)?;
    tx.execute(&upsert, &[&client, &bucket, &event_type, &source, &count])
        .await
        .map_err(super::writer::internal_or_unavailable)?;
    Ok(())
}

#[async_trait]
impl AnalyticsStore for PostgresStore {
    async fn count_events(&self, query: CountQuery) -> Result<Vec<Counted>, StoreError> {
        let db = self.client().await?;
        let (sql, params) = count_sql(&query);
        let params: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    SqlParam::Int(i) => Box::new(i),
                    SqlParam::Text(t) => Box::new(t),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = db.query(&sql, &refs).await.map_err(unavailable)?;
        within_row_limit(
            rows.iter()
                .map(|r| Counted {
                    period: r.get(0),
                    event_type: r.get(1),
                    group: r.get(2),
                    count: r.get(3),
                })
                .collect(),
        )
    }

    async fn add_latencies(&self, rows: Vec<LatencyRow>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let db = self.client().await?;
        let client: Vec<&str> = rows.iter().map(|r| r.client_id.as_str()).collect();
        let hour: Vec<i64> = rows.iter().map(|r| r.hour).collect();
        let slot: Vec<i32> = rows.iter().map(|r| i32::from(r.slot)).collect();
        let count: Vec<i64> = rows.iter().map(|r| r.count).collect();
        db.execute(
            "INSERT INTO ingest_latency AS l (client_id, bucket, slot, count) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::int[], $4::bigint[]) \
             ON CONFLICT (client_id, bucket, slot) DO UPDATE SET count = l.count + EXCLUDED.count",
            &[&client, &hour, &slot, &count],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn latency_slots(
        &self,
        client_id: Option<String>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u16, i64)>, StoreError> {
        let db = self.client().await?;
        let rows = db
            .query(
                "SELECT slot, sum(count)::bigint FROM ingest_latency \
                 WHERE bucket >= $1 AND bucket < $2 AND ($3::text IS NULL OR client_id = $3) \
                 GROUP BY slot ORDER BY slot",
                &[&from, &to, &client_id],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i32>(0) as u16, r.get(1)))
            .collect())
    }

    async fn delivery_counts(&self, owner: Option<String>) -> Result<DeliveryCounts, StoreError> {
        let db = self.client().await?;
        let rows = db
            .query(
                "SELECT status, count(*), min(created_at) FROM deliveries \
                 WHERE status <> 'COMPLETED' AND ($1::text IS NULL OR client_id = $1) \
                 GROUP BY status",
                &[&owner],
            )
            .await
            .map_err(unavailable)?;
        let mut counts = DeliveryCounts::default();
        for r in &rows {
            let status: String = r.get(0);
            let oldest: Option<chrono::DateTime<chrono::Utc>> = r.get(2);
            counts.add(
                &status,
                r.get(1),
                oldest.map(|at| Timestamp::from_micros(at.timestamp_micros())),
            );
        }
        Ok(counts)
    }

    fn write_queue(&self) -> QueueDepth {
        self.queue.depth()
    }

    async fn delete_rollups_before(&self, before: Timestamp) -> Result<u64, StoreError> {
        // A bucket goes once it ends at or before the cutoff.
        let secs = unix_secs(before);
        let db = self.client().await?;
        let mut deleted = 0;
        for (sql, last) in [
            (
                "DELETE FROM event_counts_minute WHERE bucket <= $1",
                secs - MINUTE_SECS,
            ),
            (
                "DELETE FROM event_counts_hour WHERE bucket <= $1",
                secs - HOUR_SECS,
            ),
            (
                "DELETE FROM ingest_latency WHERE bucket <= $1",
                secs - HOUR_SECS,
            ),
        ] {
            deleted += db.execute(sql, &[&last]).await.map_err(unavailable)?;
        }
        Ok(deleted)
    }
}
