//! The group-commit writer: one OS thread that owns the only write connection of a SQLite store.
//!
//! Invariants:
//! - This thread is the only code in the process that writes to the database.
//! - It drains every job waiting in the queue into one transaction and commits once, so one
//!   fsync covers many requests; each request's reply is sent only after that commit.
//! - Each append checks idempotency before inserting anything, so a conflict never leaves rows
//!   behind; a storage error rolls the group back and its appends are retried one per
//!   transaction, so a failure stays with the request that caused it.
//! - WAL checkpoints run on a separate thread (`checkpoint.rs`), never inside a commit; only when
//!   that thread asks does the writer copy the last frames itself, between two groups, so the
//!   WAL can start over.
//! - `seq` is assigned here, one past the last assigned (`load_last_seq`), so committed seqs are
//!   gapless and in commit order. The last assigned seq is the higher of the newest event's and
//!   `event_sequence.last_seq`; commits don't write `event_sequence` (a page per commit), and
//!   whatever deletes events raises it first to the highest seq it deletes, in the same
//!   transaction, so a seq is never handed out twice.
//! - Events are indexed by user behind the commits (`user_index.rs`): each group's transaction
//!   may carry a slice of that copy, but the group's own events are remembered for it only once
//!   the group has committed.
//! - No append is acknowledged while the store's path no longer names the file this connection
//!   has open (`StoreFile::check`, one `stat` a group): such appends get `Unavailable`, since
//!   what SQLite wrote on to the removed or replaced file would be gone at the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::domain::analytics::EventCounts;
use crate::domain::bus::{SharedIndex, SubscriptionIndex};
use crate::domain::{NewEvent, Timestamp};
use crate::ingest::Queued;
use crate::ingest::idempotency::{self, StoredKey};
use crate::ingest::queue::{Waited, next_group_blocking};

use super::StoreFile;
use super::analytics::Rollups;
use super::checkpoint::{FailureStreak, WalRestart};
use super::multi_row::{MultiRowInsert, Prepared, Row};
use super::user_index::{Entry, UserIndex};
use crate::store::copy::{Imported, check_ascending};
use crate::store::{AppendOutcome, AppendedItem, CommittedRange, StoreError};

/// Most jobs committed in one transaction.
const MAX_GROUP_JOBS: usize = 512;
/// How often planner statistics are refreshed (`PRAGMA optimize`). Without them SQLite can't
/// skip-scan the `(client_id, …, seq)` indexes for admin queries that name no client.
const OPTIMIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Refreshes planner statistics where they are stale; `analysis_limit` keeps it to milliseconds.
fn optimize(conn: &Connection) {
    if let Err(e) = conn.execute_batch("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002;") {
        tracing::warn!(error = %e, "PRAGMA optimize failed");
    }
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriterCommand {
    Append {
        events: Vec<NewEvent>,
        reply: Reply<AppendOutcome>,
    },
    /// A rare write (key management) run in its own transaction, in queue order.
    Exec(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Events copied from another store (`annals copy`), with their seqs, ids and times, in
    /// one transaction of their own; `last_assigned` raises the sequence past them.
    Import {
        events: Vec<Imported>,
        last_assigned: i64,
        reply: Reply<()>,
    },
    /// Commit what is queued, refuse new jobs, and stop.
    Shutdown,
}

struct PendingAppend {
    events: Vec<NewEvent>,
    reply: Reply<AppendOutcome>,
}

/// The writer's multi-row statements, prepared on its connection.
struct Inserts {
    events: Prepared,
    deliveries: Prepared,
}

/// Whether the writer can write: raised when a commit fails for want of storage (disk full, I/O
/// error, read-only file), lowered by the next commit that succeeds (an append's, or the health
/// check's `probe`), each time before the requests concerned are answered. Read by the health
/// check, so a node whose every append answers `503` does not report itself healthy, and one
/// whose disk was freed does without waiting for traffic (which a load balancer would not send
/// it while it reports itself unhealthy).
#[derive(Clone, Default)]
pub(super) struct WriteHealth(Arc<AtomicBool>);

impl WriteHealth {
    pub(super) fn failing(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set_failing(&self, failing: bool) {
        self.0.store(failing, Ordering::Relaxed);
    }
}

pub(super) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Queued<WriterCommand>>,
    commits: broadcast::Sender<CommittedRange>,
    wal_restart: WalRestart,
    health: WriteHealth,
    file: Arc<StoreFile>,
    bus_index: SharedIndex,
) {
    // Upkeep only the serving process may do (see `Rollups::load`).
    let serving = super::serve_lock::served_here(&file.path);
    // The group's few statements stay cached, whatever the `Exec` jobs between groups prepare.
    conn.set_prepared_statement_cache_capacity(64);
    // The multi-row `INSERT`s; a local, so dropped before the `conn` parameter.
    let mut insert = Inserts {
        events: Prepared::new(&INSERT_EVENTS),
        deliveries: Prepared::new(&super::bus::INSERT_DELIVERIES),
    };
    let mut last_seq = match load_last_seq(&conn) {
        Ok(seq) => seq,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writer could not read the event sequence; stopping");
            return;
        }
    };
    let mut user_index = match UserIndex::load(&conn) {
        Ok(index) => index,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writer could not read the user index progress; stopping");
            return;
        }
    };
    let mut rollups = match Rollups::load(&conn, last_seq, serving) {
        Ok(rollups) => rollups,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "writer could not bring the analytics rollups up to date; stopping");
            return;
        }
    };
    user_index.copy_all(&conn, last_seq);
    optimize(&conn);
    let mut optimized_at = std::time::Instant::now();
    let mut optimized_seq = last_seq;
    let (mut groups, mut jobs) = (0u64, 0u64);
    let mut checkpoint_failures = FailureStreak::new("writer-side WAL checkpoint");
    loop {
        let idle = match (user_index.idle_limit(last_seq), rollups.idle_limit()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let group = match next_group_blocking(&mut rx, MAX_GROUP_JOBS, idle) {
            Waited::Group(group) => group,
            Waited::Idle => {
                rollups.flush(&conn);
                user_index.copy_all(&conn, last_seq);
                continue;
            }
            Waited::Closed => break,
        };
        let before = last_seq;
        groups += 1;
        jobs += group.len() as u64;
        // One `stat` a group: no append is acknowledged into a file that no name leads to.
        let file_gone = file.check().err();
        if let Some(e) = &file_gone
            && !health.failing()
        {
            tracing::error!(error = %e, "refusing appends");
            health.set_failing(true);
        }
        let mut appends = Vec::with_capacity(group.len());
        let mut reservations = Vec::with_capacity(group.len());
        // Whether any of this turn's groups queued webhook deliveries.
        let mut pushes = false;
        for queued in group {
            let (job, reservation) = queued.into_parts();
            reservations.push(reservation);
            match job {
                WriterCommand::Append { reply, .. } if file_gone.is_some() => {
                    let _ = reply.send(Err(StoreError::Unavailable(String::from(
                        "the database file was removed or replaced",
                    ))));
                }
                WriterCommand::Append { events, reply } => {
                    appends.push(PendingAppend { events, reply })
                }
                between @ (WriterCommand::Exec(_) | WriterCommand::Import { .. }) => {
                    // What was queued before it commits first.
                    pushes |= commit_group(
                        &conn,
                        &mut insert,
                        std::mem::take(&mut appends),
                        &mut last_seq,
                        &mut user_index,
                        &health,
                        &current_index(&bus_index),
                        (&mut rollups, true),
                    );
                    run_between_groups(
                        &mut conn,
                        &mut insert,
                        between,
                        &mut last_seq,
                        &mut user_index,
                        &mut rollups,
                    );
                }
                WriterCommand::Shutdown => rx.close(),
            }
        }
        let flush = rollups.due(rx.is_empty());
        pushes |= commit_group(
            &conn,
            &mut insert,
            appends,
            &mut last_seq,
            &mut user_index,
            &health,
            &current_index(&bus_index),
            (&mut rollups, flush),
        );
        drop(reservations);
        if last_seq > before {
            // No subscriber is fine: the range is simply not heard.
            let _ = commits.send(CommittedRange {
                first: before + 1,
                last: last_seq,
                pushes,
            });
        }
        if wal_restart.wanted() {
            wal_restart.checkpoint_from_writer(&conn, &mut checkpoint_failures);
        }
        // Also whenever the table has grown tenfold, so a young store gets statistics early.
        if optimized_at.elapsed() > OPTIMIZE_EVERY
            || last_seq >= optimized_seq.saturating_mul(10).max(1000)
        {
            optimize(&conn);
            optimized_at = std::time::Instant::now();
            optimized_seq = last_seq;
        }
    }
    // A stopped store leaves a complete index and current rollups behind.
    rollups.flush(&conn);
    user_index.copy_all(&conn, last_seq);
    tracing::info!(groups, jobs, last_seq, "sqlite writer stopped");
}

/// The subscription index as it stands between groups (an `Arc` clone under an uncontended
/// lock: only subscription changes, on this same thread, write it).
fn current_index(index: &SharedIndex) -> Arc<SubscriptionIndex> {
    match index.read() {
        Ok(index) => index.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The last seq ever assigned: the newest event's, or the one `event_sequence` remembers for
/// events deleted since (see the module's invariants).
pub(super) fn load_last_seq(conn: &Connection) -> anyhow::Result<i64> {
    conn.query_row(
        "SELECT max(last_seq, coalesce((SELECT max(seq) FROM events), 0)) \
         FROM event_sequence WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .context("reading the event sequence")
}

/// Writes every pending append in one transaction and answers each after the commit.
///
/// Fast path: one transaction, no savepoints (a savepoint makes SQLite journal every page it
/// touches). Appends check idempotency before inserting anything, so only a storage error can
/// fail one midway; then the group is rolled back and retried one append per transaction, so
/// the failure stays with the request that caused it.
/// `rollups` comes with whether this group carries the pending rollup counts (`Rollups::due`).
#[allow(clippy::too_many_arguments)]
fn commit_group(
    conn: &Connection,
    insert: &mut Inserts,
    appends: Vec<PendingAppend>,
    last_seq: &mut i64,
    user_index: &mut UserIndex,
    health: &WriteHealth,
    bus_index: &SubscriptionIndex,
    (rollups, flush): (&mut Rollups, bool),
) -> bool {
    if appends.is_empty() {
        return false;
    }
    let received_at = Timestamp::now();
    let mut seq = *last_seq;
    let mut entries = Vec::new();
    let grouped = in_write_transaction(conn, |conn| {
        let mut statements = AppendStatements::prepare(conn)?;
        let mut outcomes = Vec::with_capacity(appends.len());
        let mut rows = Vec::new();
        for append in &appends {
            outcomes.push(statements.apply(
                &append.events,
                received_at,
                &mut seq,
                &mut rows,
                &mut entries,
            )?);
        }
        insert_events(conn, &mut insert.events, &rows)?;
        let mut counts = EventCounts::default();
        for row in &rows {
            counts.add_event(row.event, row.received_at);
        }
        if flush {
            rollups.write_with(conn, &counts, seq)?;
        }
        let mut pushes = false;
        if !bus_index.is_empty() {
            let mut deliveries = Vec::new();
            for row in &rows {
                let e = row.event;
                bus_index.queue(
                    row.seq,
                    row.id,
                    e.client_id.as_str(),
                    e.event_type.as_str(),
                    &mut deliveries,
                );
            }
            super::bus::insert_deliveries(conn, &mut insert.deliveries, &deliveries, received_at)?;
            pushes = deliveries.iter().any(|d| !d.target.pull);
        }
        let events = (seq - *last_seq) as usize;
        Ok((
            outcomes,
            user_index.copy_slice(conn, *last_seq, events),
            counts,
            pushes,
        ))
    });
    match grouped {
        Ok((outcomes, slice, counts, pushes)) => {
            *last_seq = seq;
            if flush {
                rollups.written_through(seq);
            } else {
                rollups.committed(&counts, seq);
            }
            drop(counts);
            user_index.slice_committed(slice);
            user_index.committed(entries);
            health.set_failing(false);
            for (append, outcome) in appends.into_iter().zip(outcomes) {
                let _ = append.reply.send(Ok(outcome));
            }
            pushes
        }
        Err(e) if appends.len() > 1 => {
            tracing::warn!(error = %format!("{e:#}"), jobs = appends.len(), "group commit failed; retrying its appends one by one");
            let mut pushes = false;
            for append in appends {
                pushes |= commit_group(
                    conn,
                    insert,
                    vec![append],
                    last_seq,
                    user_index,
                    health,
                    bus_index,
                    (&mut *rollups, flush),
                );
            }
            pushes
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "append failed and was rolled back");
            let error = if is_storage_failure(&e) {
                health.set_failing(true);
                StoreError::Unavailable(String::from("the write could not be committed"))
            } else {
                StoreError::Internal(e)
            };
            if let Some(append) = appends.into_iter().next() {
                let _ = append.reply.send(Err(error));
            }
            false
        }
    }
}

/// Runs a job that takes its own transaction between two groups: an `Exec`, or an `Import`
/// (whose events join the user index once committed). Appends and `Shutdown` are the loop's.
fn run_between_groups(
    conn: &mut Connection,
    insert: &mut Inserts,
    job: WriterCommand,
    last_seq: &mut i64,
    user_index: &mut UserIndex,
    rollups: &mut Rollups,
) {
    match job {
        WriterCommand::Exec(job) => job(conn),
        WriterCommand::Import {
            events,
            last_assigned,
            reply,
        } => {
            let _ = reply.send(
                match import(
                    conn,
                    &mut insert.events,
                    &events,
                    last_assigned,
                    last_seq,
                    rollups,
                ) {
                    Ok(entries) => {
                        user_index.committed(entries);
                        Ok(())
                    }
                    Err(e) => Err(StoreError::Internal(e)),
                },
            );
        }
        WriterCommand::Append { .. } | WriterCommand::Shutdown => {}
    }
}

/// Writes events copied from another store in one transaction of their own, keeping their
/// seqs, ids and times, with their idempotency keys; raises the sequence to `last_assigned`.
/// Refuses seqs at or below the last assigned one, or out of order, so a seq is never handed
/// out twice. Returns the user-index entries of the events with a user.
fn import(
    conn: &Connection,
    insert: &mut Prepared,
    events: &[Imported],
    last_assigned: i64,
    last_seq: &mut i64,
    rollups: &mut Rollups,
) -> anyhow::Result<Vec<Entry>> {
    let last = check_ascending(events, *last_seq)?.max(last_assigned);
    in_write_transaction(conn, |conn| {
        let mut statements = AppendStatements::prepare(conn)?;
        let rows: Vec<EventRow<'_>> = events
            .iter()
            .map(|e| EventRow {
                event: &e.event,
                seq: e.seq,
                id: e.id,
                received_at: e.received_at,
            })
            .collect();
        for row in &rows {
            statements.insert_key(row.event, row.seq, row.id)?;
        }
        insert_events(conn, insert, &rows)?;
        let mut counts = EventCounts::default();
        for row in &rows {
            counts.add_event(row.event, row.received_at);
        }
        rollups.write_with(conn, &counts, last)?;
        if last > *last_seq {
            conn.prepare_cached(
                "UPDATE event_sequence SET last_seq = max(last_seq, ?1) WHERE id = 1",
            )?
            .execute([last])?;
        }
        Ok(())
    })?;
    rollups.written_through(last);
    *last_seq = (*last_seq).max(last);
    Ok(events
        .iter()
        .filter_map(|e| {
            let user = e.event.user_id.as_deref()?;
            Some(Entry::new(e.event.client_id.as_str(), user, e.seq))
        })
        .collect())
}

/// Runs `body` in one `BEGIN IMMEDIATE` … `COMMIT`, rolled back if the body or the commit
/// fails. `BEGIN` and `COMMIT` are prepared once per connection (rusqlite's `Transaction`
/// parses both anew for every group, which the profile showed on every commit).
pub(super) fn in_write_transaction<T>(
    conn: &Connection,
    body: impl FnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = body(conn).and_then(|value| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(value)
    });
    if result.is_err()
        && !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "rolling back a failed group failed");
    }
    result
}

/// The health check's question while appends fail for want of storage: can a commit reach the
/// disk now? One small real write (a no-op `UPDATE` would write nothing: SQLite leaves
/// unchanged pages clean), committed and synced like an append's, run on this thread between
/// groups. Success lowers `health`; a storage failure keeps it raised.
pub(super) fn probe(conn: &Connection, health: &WriteHealth) -> Result<(), StoreError> {
    let written = in_write_transaction(conn, |conn| {
        conn.prepare_cached(
            "INSERT INTO write_probe (id, probed_at) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
        )?
        .execute([Timestamp::now().as_micros()])?;
        Ok(())
    });
    match written {
        Ok(()) => {
            health.set_failing(false);
            Ok(())
        }
        Err(e) if is_storage_failure(&e) => Err(StoreError::Unavailable(format!(
            "the last write failed for want of storage (disk full, I/O error or read-only), \
             and a test write still fails: {}",
            e.root_cause()
        ))),
        Err(e) => Err(StoreError::Internal(e)),
    }
}

/// Disk full, I/O error, locked database: the store can't take writes right now.
fn is_storage_failure(e: &anyhow::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.downcast_ref::<rusqlite::Error>(),
        Some(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, DiskFull | SystemIoFailure | DatabaseBusy | DatabaseLocked | CannotOpen | ReadOnly)
    )
}

/// The statements one append runs, taken from the cache once per group rather than once per
/// append (each lookup hashes the whole SQL text).
struct AppendStatements<'conn> {
    lookup_key: rusqlite::CachedStatement<'conn>,
    insert_key: rusqlite::CachedStatement<'conn>,
}

/// An event given its `seq` and `id`, waiting for the group's `INSERT`s (`insert_events`).
struct EventRow<'a> {
    event: &'a NewEvent,
    seq: i64,
    id: Uuid,
    received_at: Timestamp,
}

/// The group's events, in multi-row statements (see `multi_row` for why they are
/// `OR ROLLBACK`: a failed row fails the group, which `commit_group` retries append by append).
static INSERT_EVENTS: std::sync::LazyLock<MultiRowInsert> = std::sync::LazyLock::new(|| {
    MultiRowInsert::new(
        "INSERT OR ROLLBACK INTO events (seq, id, client_id, event_type, user_id, event_id, source, \
         subject, correlation_id, status, ip_address, partition_key, occurred_at, received_at, data, \
         headers, format)",
        17,
    )
});

/// Inserts the group's events.
fn insert_events(
    conn: &Connection,
    insert: &mut Prepared,
    rows: &[EventRow<'_>],
) -> rusqlite::Result<()> {
    insert.run(conn, rows, |row, event| event.bind(row))
}

impl<'a> EventRow<'a> {
    /// Binds this row's columns.
    fn bind(&'a self, row: &mut Row<'a>) {
        let e = self.event;
        let received_at = self.received_at;
        let occurred_at = e.occurred_at.unwrap_or(received_at);
        row.int(self.seq)
            .blob(self.id.as_bytes())
            .text(e.client_id.as_str())
            .text(e.event_type.as_str())
            .opt_text(e.user_id.as_deref())
            .opt_text(e.event_id.as_deref())
            .opt_text(e.source.as_deref())
            .opt_text(e.subject.as_deref())
            .opt_text(e.correlation_id.as_deref())
            .opt_text(e.status.as_deref());
        match e.ip_address {
            Some(ip) => row.text_copied(&ip.to_string()),
            None => row.null(),
        };
        row.opt_text(e.partition_key.as_deref())
            .int(occurred_at.as_micros())
            .int(received_at.as_micros())
            .text(&e.data)
            .text(&e.headers)
            .int(e.format.code().into());
    }
}

impl<'conn> AppendStatements<'conn> {
    /// Stores the idempotency key of `event` (stored as `seq`, `id`), if it has one.
    fn insert_key(&mut self, event: &NewEvent, seq: i64, id: Uuid) -> rusqlite::Result<()> {
        if let Some(event_id) = &event.event_id {
            self.insert_key.execute(params![
                event.client_id.as_str(),
                event.source.as_deref().unwrap_or(""),
                event_id,
                id.as_bytes().as_slice(),
                seq,
                event.content_hash.as_slice(),
            ])?;
        }
        Ok(())
    }

    fn prepare(tx: &'conn Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            lookup_key: tx.prepare_cached(
                "SELECT event_uuid, content_hash FROM idempotency_keys \
                 WHERE client_id = ?1 AND source = ?2 AND event_id = ?3",
            )?,
            insert_key: tx.prepare_cached(
                "INSERT INTO idempotency_keys (client_id, source, event_id, event_uuid, event_seq, content_hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?,
        })
    }

    /// Plans one append's events (inside the group's transaction): new ones get their `seq`
    /// and `id` and join `rows` (inserted for the whole group by `insert_events`), their
    /// idempotency keys are stored at once so later appends of the group see them; or reports
    /// the append's conflicts and stores nothing.
    fn apply<'a>(
        &mut self,
        events: &'a [NewEvent],
        received_at: Timestamp,
        seq: &mut i64,
        rows: &mut Vec<EventRow<'a>>,
        user_entries: &mut Vec<Entry>,
    ) -> anyhow::Result<AppendOutcome> {
        let mut stored = HashMap::new();
        for key in events.iter().filter_map(idempotency::key_of) {
            let found: Option<(Vec<u8>, Vec<u8>)> = self
                .lookup_key
                .query_row(params![key.0, key.1, key.2], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((uuid, hash)) = found {
                let content_hash = crate::store::stored_hash(hash)?;
                stored.insert(
                    key,
                    StoredKey {
                        event_id: Uuid::from_slice(&uuid)?,
                        content_hash,
                    },
                );
            }
        }
        let plans = match idempotency::plan(events, &stored) {
            Ok(plans) => plans,
            Err(conflicts) => return Ok(AppendOutcome::Conflict(conflicts)),
        };

        let mut items: Vec<AppendedItem> = Vec::with_capacity(events.len());
        for (event, plan) in events.iter().zip(plans) {
            let item = match plan.resolved(&items) {
                Some(item) => item,
                None => {
                    *seq += 1;
                    let id = Uuid::now_v7();
                    rows.push(EventRow {
                        event,
                        seq: *seq,
                        id,
                        received_at,
                    });
                    if let Some(user) = &event.user_id {
                        user_entries.push(Entry::new(event.client_id.as_str(), user, *seq));
                    }
                    self.insert_key(event, *seq, id)?;
                    AppendedItem {
                        id,
                        duplicate: false,
                    }
                }
            };
            items.push(item);
        }
        Ok(AppendOutcome::Stored(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::envelope::test_event;
    use crate::ingest::queue::WriteQueue;
    use std::path::Path;

    /// A writer on its own thread, as the store starts one, with nobody listening to its commits.
    fn spawn_writer(
        conn: Connection,
        rx: mpsc::Receiver<Queued<WriterCommand>>,
        wal_restart: WalRestart,
    ) -> std::thread::JoinHandle<()> {
        let file = Arc::new(StoreFile::of(Path::new(conn.path().expect("a file"))).unwrap());
        std::thread::spawn(move || {
            run(
                conn,
                rx,
                broadcast::channel(4).0,
                wal_restart,
                WriteHealth::default(),
                file,
                Default::default(),
            )
        })
    }

    /// Appends one event through the queue and waits for the writer's answer.
    fn append(queue: &WriteQueue<WriterCommand>, n: u64) -> AppendOutcome {
        let (reply, answer) = oneshot::channel();
        let events = vec![test_event(
            serde_json::json!({"event_type": "test.item.created", "data": {"n": n}}),
        )];
        queue
            .try_submit(WriterCommand::Append { events, reply }, 100)
            .unwrap_or_else(|_| panic!("queue refused"));
        answer.blocking_recv().unwrap().unwrap()
    }

    #[test]
    fn a_group_is_inserted_in_multi_row_statements_with_every_column_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let conn = super::super::open_and_migrate(&path, super::super::Synchronous::Full).unwrap();
        let (queue, rx) = WriteQueue::new(512, 1 << 24);
        // 100 one-event appends and one of three: 103 rows = 64 + 32 + 4 + 2 + 1, all one group.
        let mut answers = Vec::new();
        let mut submit = |events: Vec<NewEvent>| {
            let (reply, answer) = oneshot::channel();
            queue
                .try_submit(WriterCommand::Append { events, reply }, 100)
                .unwrap_or_else(|_| panic!("queue refused"));
            answers.push(answer);
        };
        for n in 0..100 {
            let mut event = test_event(serde_json::json!({
                "event_type": format!("test.t{}.created", n % 7),
                "user_id": format!("u{}", n % 5),
                "event_id": format!("e{n}"),
                "source": "s",
                "subject": format!("sub{n}"),
                "correlation_id": format!("c{n}"),
                "status": "ok",
                "occurred_at": "2026-01-02T03:04:05Z",
                "data": {"n": n},
                "headers": {"h": n},
            }));
            event.ip_address = Some(std::net::IpAddr::from([10, 0, 0, n as u8]));
            event.partition_key = Some(format!("p{n}"));
            submit(vec![event]);
        }
        submit(
            (100..103)
                .map(|n| {
                    test_event(
                        serde_json::json!({"event_type": "test.x.created", "data": {"n": n}}),
                    )
                })
                .collect(),
        );
        let writer = spawn_writer(conn, rx, WalRestart::default());
        let ids: Vec<Uuid> = answers
            .into_iter()
            .flat_map(|answer| match answer.blocking_recv().unwrap().unwrap() {
                AppendOutcome::Stored(items) => items.into_iter().map(|i| i.id),
                AppendOutcome::Conflict(c) => panic!("unexpected conflict {c:?}"),
            })
            .collect();
        drop(queue);
        writer.join().unwrap();

        let check = Connection::open(&path).unwrap();
        let mut rows = check
            .prepare(
                "SELECT seq, id, client_id, event_type, user_id, event_id, source, subject, \
                 correlation_id, status, ip_address, partition_key, occurred_at, data, headers \
                 FROM events ORDER BY seq",
            )
            .unwrap();
        let rows: Vec<Vec<rusqlite::types::Value>> = rows
            .query_map([], |r| (0..15).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 103);
        use rusqlite::types::Value::{Blob, Integer, Null, Text};
        let text = |s: String| Text(s);
        for (n, row) in rows.iter().enumerate() {
            assert_eq!(
                row[0],
                Integer(n as i64 + 1),
                "gapless seq in submission order"
            );
            assert_eq!(
                row[1],
                Blob(ids[n].as_bytes().to_vec()),
                "the id the append was given"
            );
            assert_eq!(row[13], text(format!("{{\"n\":{n}}}")));
        }
        let n = 42;
        assert_eq!(
            rows[n][2..13],
            [
                text("c".into()),
                text(format!("test.t{}.created", n % 7)),
                text(format!("u{}", n % 5)),
                text(format!("e{n}")),
                text("s".into()),
                text(format!("sub{n}")),
                text(format!("c{n}")),
                text("ok".into()),
                text(format!("10.0.0.{n}")),
                text(format!("p{n}")),
                Integer(
                    Timestamp::parse_rfc3339("2026-01-02T03:04:05Z")
                        .unwrap()
                        .as_micros()
                ),
            ]
        );
        assert_eq!(rows[n][14], text(format!("{{\"h\":{n}}}")));
        assert_eq!(
            rows[101][4..12],
            [Null, Null, Null, Null, Null, Null, Null, Null]
        );
        let keys: i64 = check
            .query_row("SELECT count(*) FROM idempotency_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, 100);
    }

    #[test]
    fn a_failing_append_is_rolled_back_alone_and_the_rest_of_its_group_commits() {
        // A failure that aborts the statement (the transaction stays open).
        a_failing_append_in_a_group(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON events WHEN NEW.event_type = 'test.boom.failed' \
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        );
    }

    #[test]
    fn a_constraint_failure_rolls_the_group_back_and_the_rest_of_it_commits() {
        // `INSERT OR ROLLBACK`: SQLite ends the transaction itself; the appends are retried.
        a_failing_append_in_a_group(
            "CREATE UNIQUE INDEX boom_once ON events (event_type) WHERE event_type = 'test.boom.failed';",
        );
    }

    /// Three appends in one group, the middle one of two `test.boom.failed` events, which
    /// `failure_sql` makes fail in the middle of the group's `INSERT`.
    fn a_failing_append_in_a_group(failure_sql: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let conn = super::super::open_and_migrate(&path, super::super::Synchronous::Full).unwrap();
        conn.execute_batch(failure_sql).unwrap();
        let (queue, rx) = WriteQueue::new(16, 1 << 20);
        // All three are queued before the writer starts, so they form one group.
        let answers: Vec<_> = [
            &["test.a.created"][..],
            &["test.boom.failed"; 2],
            &["test.b.created"],
        ]
        .into_iter()
        .map(|types| {
            let (reply, answer) = oneshot::channel();
            let events = types
                .iter()
                .map(|event_type| test_event(serde_json::json!({"event_type": event_type})))
                .collect();
            queue
                .try_submit(WriterCommand::Append { events, reply }, 100)
                .unwrap_or_else(|_| panic!("queue refused"));
            answer
        })
        .collect();
        let writer = spawn_writer(conn, rx, WalRestart::default());
        let outcomes: Vec<_> = answers
            .into_iter()
            .map(|answer| answer.blocking_recv().unwrap())
            .collect();
        assert!(matches!(outcomes[0], Ok(AppendOutcome::Stored(_))));
        assert!(
            matches!(outcomes[1], Err(StoreError::Internal(_))),
            "{:?}",
            outcomes[1].as_ref().err()
        );
        assert!(matches!(outcomes[2], Ok(AppendOutcome::Stored(_))));
        drop(queue);
        writer.join().unwrap();

        let check = Connection::open(&path).unwrap();
        let rows: Vec<(i64, String)> = check
            .prepare("SELECT seq, event_type FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (1, "test.a.created".to_string()),
                (2, "test.b.created".to_string())
            ],
            "seqs stay gapless and nothing of the failed append remains"
        );
        assert_eq!(load_last_seq(&check).unwrap(), 2);
        assert!(check.is_autocommit());
    }

    #[test]
    fn the_writer_answers_a_wal_restart_request_between_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = super::super::open_and_migrate(&path, super::super::Synchronous::Full).unwrap();
        let (queue, rx) = WriteQueue::new(16, 1 << 20);
        let restart = WalRestart::default();
        let thread_restart = restart.clone();
        let writer = spawn_writer(conn, rx, thread_restart);
        assert!(matches!(append(&queue, 1), AppendOutcome::Stored(_)));
        restart.request();
        assert!(matches!(append(&queue, 2), AppendOutcome::Stored(_)));
        // The answer goes out at commit; the checkpoint follows right after it.
        let answered = std::time::Instant::now();
        while restart.wanted() {
            assert!(
                answered.elapsed() < std::time::Duration::from_secs(5),
                "the writer never checkpointed after the group"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(queue);
        writer.join().unwrap();
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    fn user_index_state(path: &std::path::Path) -> (usize, i64) {
        super::super::user_index::state(&Connection::open(path).unwrap())
    }

    #[test]
    fn the_user_index_catches_up_when_idle_and_on_stop_and_resumes_from_its_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        let start = |path: &std::path::Path| {
            let conn =
                super::super::open_and_migrate(path, super::super::Synchronous::Full).unwrap();
            let (queue, rx) = WriteQueue::new(16, 1 << 20);
            let writer = spawn_writer(conn, rx, WalRestart::default());
            (queue, writer)
        };
        let append_for = |queue: &WriteQueue<WriterCommand>, users: &[Option<&str>]| {
            let (reply, answer) = oneshot::channel();
            let events = users
                .iter()
                .map(|user| {
                    test_event(
                        serde_json::json!({"event_type": "test.item.created", "user_id": user}),
                    )
                })
                .collect();
            queue
                .try_submit(WriterCommand::Append { events, reply }, 100)
                .unwrap_or_else(|_| panic!("queue refused"));
            assert!(matches!(
                answer.blocking_recv().unwrap().unwrap(),
                AppendOutcome::Stored(_)
            ));
        };

        // Idle: the writer copies the events once no job has come for a while.
        let (queue, writer) = start(&path);
        append_for(&queue, &[Some("u1"), None, Some("u2")]);
        let appended = std::time::Instant::now();
        while user_index_state(&path) != (2, 3) {
            assert!(
                appended.elapsed() < std::time::Duration::from_secs(10),
                "the idle writer never copied the events: {:?}",
                user_index_state(&path)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Stop: what is still missing is copied before the writer ends.
        append_for(&queue, &[Some("u1"), Some("u3")]);
        drop(queue);
        writer.join().unwrap();
        assert_eq!(user_index_state(&path), (4, 5));

        // As a crash can leave it: seq 4's entry copied in a slice, seq 5's not, and the
        // progress still at 3.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM user_index WHERE u_seq = 5; UPDATE user_index_progress SET through_seq = 3;",
        )
        .unwrap();
        drop(conn);
        let (queue, writer) = start(&path);
        drop(queue);
        writer.join().unwrap();
        assert_eq!(user_index_state(&path), (4, 5));
    }
}
