//! Analytics on SQLite (`AnalyticsStore`): rollup reads on the read pool; rollup and latency
//! writes on the writer thread.
//!
//! Invariants (`Rollups`, the writer's part):
//! - The rollups hold exactly the counts of the events up to `rollup_progress.through_seq`; the
//!   writer keeps the counts of the events it committed since in memory and writes them, with
//!   the new `through_seq`, inside a later group's transaction: the group's own when the queue
//!   is empty behind it (so an idle store is always current), otherwise at most once per
//!   `FLUSH_EVERY` (a commit per group each dirtying two more pages cost a quarter of the
//!   single-event throughput), and between groups when the writer goes idle or stops.
//! - Counts only become pending once their group has committed, and leave it only once the
//!   transaction that wrote them has: a rolled-back group changes nothing.
//! - After a crash the writer counts the events past `through_seq` from `events` at start, so
//!   nothing counted in memory is lost — the serving process's writer only (the one holding
//!   the serve lock): a management command opened beside a running server leaves them to it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use crate::domain::Timestamp;
use crate::domain::analytics::{
    CountQuery, CountRow, Counted, DeliveryCounts, EventCounts, HOUR_SECS, LatencyRow, MINUTE_SECS,
    Rollup, floor_to, unix_secs,
};
use crate::store::StoreError;
use crate::store::analytics::{AnalyticsStore, QueueDepth, SqlParam, count_sql, within_row_limit};

/// Longest a committed event's count waits in memory while the queue stays busy.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One rollup key, owned: client, minute, type, source.
type OwnedKey = (String, i64, String, String);

/// The writer's rollup state: counts of committed events not yet written (see the module's
/// invariants).
pub(super) struct Rollups {
    pending: HashMap<OwnedKey, i64>,
    /// The last seq whose event is counted in `pending` or the tables.
    counted_through: i64,
    flushed_at: Instant,
}

impl Rollups {
    /// Reads the progress and counts, in one transaction, the events committed past it (after
    /// a crash: those whose counts were still in memory) — only in the process that serves the
    /// store (`serving`): beside a running server, the events past the progress are that
    /// server's pending counts, and a management command counting them too would count them
    /// twice.
    pub(super) fn load(conn: &Connection, last_seq: i64, serving: bool) -> anyhow::Result<Self> {
        let through: i64 = conn
            .query_row(
                "SELECT through_seq FROM rollup_progress WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let mut this = Self {
            pending: HashMap::new(),
            counted_through: through,
            flushed_at: Instant::now(),
        };
        if serving && through < last_seq {
            let mut stmt = conn.prepare(
                "SELECT client_id, occurred_at, event_type, coalesce(source, '') FROM events \
                 WHERE seq > ?1 ORDER BY seq",
            )?;
            let mut rows = stmt.query([through])?;
            while let Some(r) = rows.next()? {
                let minute = floor_to(unix_secs(Timestamp::from_micros(r.get(1)?)), MINUTE_SECS);
                *this
                    .pending
                    .entry((r.get(0)?, minute, r.get(2)?, r.get(3)?))
                    .or_default() += 1;
            }
            drop(rows);
            drop(stmt);
            this.counted_through = last_seq;
            super::writer::in_write_transaction(conn, |tx| Ok(this.write(tx)?))?;
            this.written();
            tracing::info!(
                from = through + 1,
                to = last_seq,
                "counted events into the analytics rollups"
            );
        }
        Ok(this)
    }

    /// Whether a group should carry the pending counts: the queue is empty behind it, or they
    /// have waited `FLUSH_EVERY`.
    pub(super) fn due(&self, queue_empty: bool) -> bool {
        queue_empty || self.flushed_at.elapsed() >= FLUSH_EVERY
    }

    /// How long the writer may wait for work before writing what is pending.
    pub(super) fn idle_limit(&self) -> Option<Duration> {
        (!self.pending.is_empty()).then_some(FLUSH_EVERY)
    }

    /// A committed group's counts (events through `last_seq`) join the pending ones.
    pub(super) fn committed(&mut self, counts: &EventCounts<'_>, last_seq: i64) {
        for r in counts.rows(Rollup::Minute) {
            *self
                .pending
                .entry((
                    r.client_id.to_string(),
                    r.bucket,
                    r.event_type.to_string(),
                    r.source.to_string(),
                ))
                .or_default() += r.count;
        }
        self.counted_through = self.counted_through.max(last_seq);
    }

    /// Writes the pending counts plus `extra` (a group's or an import's, not yet committed)
    /// and the progress through `through`, in the caller's transaction. `written` must follow
    /// once it commits.
    pub(super) fn write_with(
        &self,
        conn: &Connection,
        extra: &EventCounts<'_>,
        through: i64,
    ) -> rusqlite::Result<()> {
        let mut all = EventCounts::default();
        for ((client, minute, event_type, source), count) in &self.pending {
            all.add_minute(client, *minute, event_type, source, *count);
        }
        all.merge(extra);
        add_counts(conn, &all)?;
        conn.prepare_cached(
            "INSERT INTO rollup_progress (id, through_seq) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET through_seq = max(through_seq, excluded.through_seq)",
        )?
        .execute([through.max(self.counted_through)])?;
        Ok(())
    }

    fn write(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.write_with(conn, &EventCounts::default(), self.counted_through)
    }

    /// The transaction of `write_with` committed, through `through`.
    pub(super) fn written_through(&mut self, through: i64) {
        self.counted_through = self.counted_through.max(through);
        self.written();
    }

    fn written(&mut self) {
        self.pending.clear();
        self.flushed_at = Instant::now();
    }

    /// Writes what is pending in a transaction of its own (the writer is idle or stopping).
    pub(super) fn flush(&mut self, conn: &Connection) {
        if self.pending.is_empty() {
            return;
        }
        match super::writer::in_write_transaction(conn, |tx| Ok(self.write(tx)?)) {
            Ok(()) => self.written(),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "writing the analytics rollups failed; will retry")
            }
        }
    }
}

/// Adds event counts to both rollups, in the caller's transaction.
pub(super) fn add_counts(conn: &Connection, counts: &EventCounts<'_>) -> rusqlite::Result<()> {
    if counts.is_empty() {
        return Ok(());
    }
    for (rollup, rows) in rollup_rows(counts) {
        let mut upsert = conn.prepare_cached(upsert_count_sql(rollup))?;
        for r in rows {
            upsert.execute(params![
                r.client_id,
                r.bucket,
                r.event_type,
                r.source,
                r.count
            ])?;
        }
    }
    Ok(())
}

/// The upsert that adds count rows to one rollup, single-row (SQLite).
fn upsert_count_sql(rollup: Rollup) -> &'static str {
    match rollup {
        Rollup::Minute => {
            "INSERT INTO event_counts_minute (client_id, bucket, event_type, source, count) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (client_id, bucket, event_type, source) \
             DO UPDATE SET count = count + excluded.count"
        }
        Rollup::Hour => {
            "INSERT INTO event_counts_hour (client_id, bucket, event_type, source, count) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (client_id, bucket, event_type, source) \
             DO UPDATE SET count = count + excluded.count"
        }
    }
}

/// Every rollup table, with the rows of a group to add to it.
fn rollup_rows<'a>(counts: &EventCounts<'a>) -> [(Rollup, Vec<CountRow<'a>>); 2] {
    [
        (Rollup::Minute, counts.rows(Rollup::Minute)),
        (Rollup::Hour, counts.rows(Rollup::Hour)),
    ]
}

#[async_trait]
impl AnalyticsStore for SqliteStore {
    async fn count_events(&self, query: CountQuery) -> Result<Vec<Counted>, StoreError> {
        let rows = self
            .read(move |conn| {
                let (sql, params) = count_sql(&query);
                // `?N` is parameter N; SQLite would number `$N` by first appearance.
                let sql = sql.replace('$', "?");
                let params: Vec<rusqlite::types::Value> = params
                    .into_iter()
                    .map(|p| match p {
                        SqlParam::Int(i) => rusqlite::types::Value::Integer(i),
                        SqlParam::Text(t) => rusqlite::types::Value::Text(t),
                    })
                    .collect();
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
                    Ok(Counted {
                        period: r.get(0)?,
                        event_type: r.get(1)?,
                        group: r.get(2)?,
                        count: r.get(3)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        within_row_limit(rows)
    }

    async fn add_latencies(&self, rows: Vec<LatencyRow>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(move |tx| {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO ingest_latency (client_id, bucket, slot, count) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (client_id, bucket, slot) DO UPDATE SET count = count + excluded.count",
            )?;
            for r in &rows {
                upsert.execute(params![r.client_id, r.hour, r.slot, r.count])?;
            }
            Ok(())
        })
        .await
    }

    async fn latency_slots(
        &self,
        client_id: Option<String>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(u16, i64)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT slot, sum(count) FROM ingest_latency \
                 WHERE bucket >= ?1 AND bucket < ?2 AND (?3 IS NULL OR client_id = ?3) \
                 GROUP BY slot ORDER BY slot",
            )?;
            let rows =
                stmt.query_map(params![from, to, client_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delivery_counts(&self, owner: Option<String>) -> Result<DeliveryCounts, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT status, count(*), min(created_at) FROM deliveries \
                 WHERE status <> 'COMPLETED' AND (?1 IS NULL OR client_id = ?1) GROUP BY status",
            )?;
            let mut counts = DeliveryCounts::default();
            let mut rows = stmt.query(params![owner])?;
            while let Some(r) = rows.next()? {
                let status: String = r.get(0)?;
                let count: i64 = r.get(1)?;
                let oldest: Option<i64> = r.get(2)?;
                counts.add(&status, count, oldest.map(Timestamp::from_micros));
            }
            Ok(counts)
        })
        .await
    }

    fn write_queue(&self) -> QueueDepth {
        self.queue.depth()
    }

    async fn delete_rollups_before(&self, before: Timestamp) -> Result<u64, StoreError> {
        // A bucket goes once it ends at or before the cutoff.
        let secs = unix_secs(before);
        self.write(move |tx| {
            let mut deleted = tx.execute(
                "DELETE FROM event_counts_minute WHERE bucket <= ?1",
                [secs - MINUTE_SECS],
            )?;
            deleted += tx.execute(
                "DELETE FROM event_counts_hour WHERE bucket <= ?1",
                [secs - HOUR_SECS],
            )?;
            deleted += tx.execute(
                "DELETE FROM ingest_latency WHERE bucket <= ?1",
                [secs - HOUR_SECS],
            )?;
            Ok(deleted as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::embedded;
    use super::super::{SqliteOptions, SqliteStore, serve_lock};
    use crate::domain::envelope::test_event;
    use crate::store::Store;

    fn progress_and_total(path: &std::path::Path) -> (i64, i64) {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row(
            "SELECT (SELECT through_seq FROM rollup_progress), \
             (SELECT coalesce(sum(count), 0) FROM event_counts_minute)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// Counts a crash left in memory are made up at start by the serving process only: a
    /// management command opened beside a server must leave them to the server, which holds
    /// them in memory and would write them too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_serving_process_counts_what_is_past_the_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let lock = serve_lock::claim(&path).unwrap();
        let store = SqliteStore::open(SqliteOptions::new(path.clone())).unwrap();
        let event = || test_event(serde_json::json!({"event_type": "a.b.created"}));
        store.append(vec![event(), event(), event()]).await.unwrap();
        store.shutdown().await;
        drop(store);
        drop(lock);
        assert_eq!(progress_and_total(&path), (3, 3));
        // As a crash with the counts of all three still in memory leaves it.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(
                "UPDATE rollup_progress SET through_seq = 0; DELETE FROM event_counts_minute; \
                 DELETE FROM event_counts_hour;",
            )
            .unwrap();
        // `annals keys …` beside the server: counts nothing.
        let store = SqliteStore::open(SqliteOptions::new(path.clone())).unwrap();
        store.shutdown().await;
        drop(store);
        assert_eq!(progress_and_total(&path), (0, 0));
        // The server's next start: counts them, once.
        let lock = serve_lock::claim(&path).unwrap();
        let store = SqliteStore::open(SqliteOptions::new(path.clone())).unwrap();
        store.shutdown().await;
        drop(store);
        drop(lock);
        assert_eq!(progress_and_total(&path), (3, 3));
    }

    /// The migration that adds the rollups counts the events already stored, floored to the
    /// minute and the hour, also before 1970.
    #[test]
    fn the_migration_counts_the_events_already_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("old.db")).unwrap();
        embedded::migrations::runner()
            .set_target(refinery::Target::Version(8))
            .run(&mut conn)
            .unwrap();
        let minute = 60_000_000_i64;
        for (seq, occurred, event_type, source) in [
            (1, 3 * minute + 5, "a", Some("s")),
            (2, 3 * minute + 59_999_999, "a", Some("s")),
            (3, 61 * minute, "a", Some("s")),
            (4, -1, "b", None),
            (5, -minute, "b", None),
        ] {
            conn.execute(
                "INSERT INTO events (seq, id, client_id, event_type, source, occurred_at, \
                 received_at, data, headers) VALUES (?1, randomblob(16), 'c', ?2, ?3, ?4, 0, '{}', '{}')",
                rusqlite::params![seq, event_type, source, occurred],
            )
            .unwrap();
        }
        embedded::migrations::runner().run(&mut conn).unwrap();
        let rows = |table: &str| -> Vec<(i64, String, String, i64)> {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT bucket, event_type, source, count FROM {table} ORDER BY bucket, event_type"
                ))
                .unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let (a, b, s, none) = (
            String::from("a"),
            String::from("b"),
            String::from("s"),
            String::new(),
        );
        assert_eq!(
            rows("event_counts_minute"),
            [
                (-60, b.clone(), none.clone(), 2),
                (180, a.clone(), s.clone(), 2),
                (3660, a.clone(), s.clone(), 1)
            ]
        );
        assert_eq!(
            rows("event_counts_hour"),
            [
                (-3600, b, none, 2),
                (0, a.clone(), s.clone(), 2),
                (3600, a, s, 1)
            ]
        );
    }
}
