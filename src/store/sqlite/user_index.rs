//! The index of events by user, kept by the writer behind its commits (`user_index`, see
//! `V5__user_index.sql` for why it is not an index of `events`).
//!
//! The writer remembers each committed event's `(client, user, seq)`. Once `BATCH` events are
//! past the index it seals them: sorts them by the index's key and copies a slice with every
//! following group, inside that group's transaction. Sorted slices touch neighbouring pages,
//! and each page about once per batch, so a batch costs a few pages per thousand events where
//! an index of `events` cost one random page per event; spreading it over groups keeps the
//! copy out of any one request's latency. When the queue is quiet, and on start and stop, the
//! writer copies everything in one transaction of its own.
//!
//! Invariants:
//! - `user_index_progress.through_seq` only moves in the transaction that copies the last entry
//!   up to it. Queries read the index up to it and scan the events above it, so an event is
//!   never missed nor seen twice, whatever the copy's progress.
//! - `sealed[..copied]` is in the table (committed); `sealed[copied..]` and `pending` are every
//!   event with a user in `(through_seq, last committed seq]`, sealed up to `sealed_to`.
//! - Entries above `through_seq` may already be in the table after a crash; copies use
//!   `INSERT OR IGNORE`, so copying them again is harmless.

use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;

use super::multi_row::{MultiRowInsert, Prepared};

/// Events past the index before a batch is sealed; queries by user scan at most about this
/// many events (plus the time a sealed batch takes to copy) beyond the index.
const BATCH: i64 = 16_384;
/// Entries copied with each group at least; at least twice the group's own events, so the copy
/// always outruns ingest.
const MIN_SLICE: usize = 128;
/// While the index is behind, a quiet queue for this long gets everything copied, so a quiet
/// store's index is complete.
const IDLE: Duration = Duration::from_millis(200);
/// After a failed copy, no new attempt before this (a full disk would fail each one).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One event of the index: its client, user and seq.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Entry {
    client: String,
    user: String,
    seq: i64,
}

impl Entry {
    pub fn new(client: &str, user: &str, seq: i64) -> Self {
        Self {
            client: client.to_string(),
            user: user.to_string(),
            seq,
        }
    }
}

/// What a group's transaction copied; applied by `slice_committed` once the group commits.
#[derive(Debug)]
pub(super) struct Slice {
    /// `copied` after this slice.
    copied: usize,
    /// The slice ended the sealed batch and moved `through_seq` to `sealed_to`.
    completes: bool,
}

pub(super) struct UserIndex {
    through_seq: i64,
    sealed: Vec<Entry>,
    copied: usize,
    sealed_to: i64,
    pending: Vec<Entry>,
    retry_at: Option<Instant>,
    /// The copy's `INSERT`s, on the writer's connection (dropped before it: the writer makes
    /// this after opening it).
    insert: Prepared,
}

impl UserIndex {
    /// Reads the progress and remembers the events above it (left by a crash or an old version).
    pub fn load(conn: &Connection) -> anyhow::Result<Self> {
        let through_seq: i64 = conn
            .query_row(
                "SELECT through_seq FROM user_index_progress WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .context("reading user_index_progress")?;
        let pending = conn
            .prepare(
                "SELECT client_id, user_id, seq FROM events \
                 WHERE seq > ?1 AND user_id IS NOT NULL ORDER BY seq",
            )?
            .query_map([through_seq], |r| {
                Ok(Entry {
                    client: r.get(0)?,
                    user: r.get(1)?,
                    seq: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()
            .context("reading the events above the user index")?;
        Ok(Self {
            through_seq,
            sealed: Vec::new(),
            copied: 0,
            sealed_to: through_seq,
            pending,
            retry_at: None,
            insert: Prepared::new(&INSERT),
        })
    }

    fn is_behind(&self, last_seq: i64) -> bool {
        self.through_seq < last_seq
    }

    /// How long the writer may wait for a job before `copy_all`: `None` (no limit) when the
    /// index is complete.
    pub fn idle_limit(&self, last_seq: i64) -> Option<Duration> {
        self.is_behind(last_seq).then_some(IDLE)
    }

    /// Remembers the entries of a group that has committed.
    pub fn committed(&mut self, entries: Vec<Entry>) {
        self.pending.extend(entries);
    }

    fn may_try(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    fn failed(&mut self, e: anyhow::Error) {
        tracing::warn!(error = %format!("{e:#}"), through_seq = self.through_seq, "copying into the user index failed; retrying in 5 s");
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    /// Inside a group's transaction: seals a batch when `BATCH` events are past the index (up
    /// to `last_seq`, the last seq committed before this group), then copies the next slice.
    /// A failure is logged and copies nothing the caller needs to know of.
    pub fn copy_slice(&mut self, tx: &Connection, last_seq: i64, group_events: usize) -> Slice {
        let unchanged = Slice {
            copied: self.copied,
            completes: false,
        };
        if self.copied == self.sealed.len() && self.sealed_to == self.through_seq {
            if last_seq - self.through_seq < BATCH {
                return unchanged;
            }
            self.seal(last_seq);
        }
        if !self.may_try() {
            return unchanged;
        }
        let end = (self.copied + MIN_SLICE.max(2 * group_events)).min(self.sealed.len());
        match self.copy(tx, end) {
            Ok(slice) => slice,
            Err(e) => {
                self.failed(e);
                unchanged
            }
        }
    }

    /// After the group with `slice` committed.
    pub fn slice_committed(&mut self, slice: Slice) {
        self.copied = slice.copied;
        if slice.completes {
            self.through_seq = self.sealed_to;
            self.sealed.clear();
            self.copied = 0;
            self.retry_at = None;
        }
    }

    /// In a transaction of its own: copies every event up to `last_seq` (queue quiet, start,
    /// stop).
    pub fn copy_all(&mut self, conn: &Connection, last_seq: i64) {
        if !self.is_behind(last_seq) || !self.may_try() {
            return;
        }
        self.seal(last_seq);
        match super::writer::in_write_transaction(conn, |tx| self.copy(tx, self.sealed.len())) {
            Ok(slice) => self.slice_committed(slice),
            Err(e) => self.failed(e),
        }
    }

    /// In `tx`: copies `sealed[copied..end]`, and moves `through_seq` when that ends the batch.
    fn copy(&mut self, tx: &Connection, end: usize) -> anyhow::Result<Slice> {
        self.insert
            .run(tx, &self.sealed[self.copied..end], |row, e| {
                row.text(&e.client).text(&e.user).int(e.seq);
            })?;
        let completes = end == self.sealed.len();
        if completes {
            set_through(tx, self.sealed_to)?;
        }
        Ok(Slice {
            copied: end,
            completes,
        })
    }

    /// Makes the sealed batch everything not yet copied up to `last_seq`, sorted by key.
    fn seal(&mut self, last_seq: i64) {
        let mut batch = self.sealed.split_off(self.copied);
        batch.append(&mut self.pending);
        batch.sort_unstable();
        self.sealed = batch;
        self.copied = 0;
        self.sealed_to = last_seq;
    }
}

/// The copy's statement shapes.
static INSERT: std::sync::LazyLock<MultiRowInsert> = std::sync::LazyLock::new(|| {
    MultiRowInsert::new(
        "INSERT OR IGNORE INTO user_index (u_client, u_user, u_seq)",
        3,
    )
});

fn set_through(tx: &Connection, seq: i64) -> anyhow::Result<()> {
    tx.prepare_cached("UPDATE user_index_progress SET through_seq = ?1 WHERE id = 1")?
        .execute([seq])?;
    Ok(())
}

/// `(entries in user_index, through_seq)`, for tests.
#[cfg(test)]
pub(super) fn state(conn: &Connection) -> (usize, i64) {
    conn.query_row(
        "SELECT (SELECT count(*) FROM user_index), through_seq FROM user_index_progress",
        [],
        |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?)),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::writer::in_write_transaction;

    #[test]
    fn the_migration_copies_a_stores_events_into_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("old.db")).unwrap();
        // The store as the version before the user index left `events` left it.
        super::super::embedded::migrations::runner()
            .set_target(refinery::Target::Version(4))
            .run(&mut conn)
            .unwrap();
        for (seq, client, user) in [
            (1, "acme", Some("u2")),
            (2, "acme", None),
            (3, "globex", Some("u1")),
            (4, "acme", Some("u1")),
        ] {
            super::super::insert_test_event(&conn, seq, client, user);
        }
        conn.execute("UPDATE event_sequence SET last_seq = 4", [])
            .unwrap();
        super::super::embedded::migrations::runner()
            .run(&mut conn)
            .unwrap();
        let entries: Vec<(String, String, i64)> = conn
            .prepare("SELECT u_client, u_user, u_seq FROM user_index")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let entry = |c: &str, u: &str, s| (c.to_string(), u.to_string(), s);
        assert_eq!(
            entries,
            [
                entry("acme", "u1", 4),
                entry("acme", "u2", 1),
                entry("globex", "u1", 3)
            ]
        );
        assert_eq!(state(&conn), (3, 4));
    }

    #[test]
    fn a_sealed_batch_goes_in_sorted_slices_with_the_groups_and_through_moves_with_the_last() {
        let (_dir, conn) = super::super::scratch_db();
        // A full batch of events; every seventh has no user.
        for seq in 1..=BATCH {
            let user = (seq % 7 != 0).then(|| format!("u{}", seq % 1000));
            super::super::insert_test_event(&conn, seq, "acme", user.as_deref());
        }
        let with_user = (1..=BATCH).filter(|s| s % 7 != 0).count();
        let mut index = UserIndex::load(&conn).unwrap();
        let group = |index: &mut UserIndex, last_seq: i64| {
            let slice = in_write_transaction(&conn, |tx| Ok(index.copy_slice(tx, last_seq, 1)));
            index.slice_committed(slice.unwrap());
            state(&conn)
        };

        // One event short of a batch: nothing is copied.
        assert_eq!(group(&mut index, BATCH - 1), (0, 0));
        // A batch: one slice per group, in key order, until the last moves `through_seq`.
        let mut expected: Vec<(String, i64)> = (1..=BATCH)
            .filter(|s| s % 7 != 0)
            .map(|s| (format!("u{}", s % 1000), s))
            .collect();
        expected.sort();
        let mut groups = 0;
        loop {
            let (entries, through) = group(&mut index, BATCH);
            groups += 1;
            if through == BATCH {
                assert_eq!(entries, with_user);
                break;
            }
            assert_eq!((entries, through), (groups * MIN_SLICE, 0));
            let copied: Vec<(String, i64)> = conn
                .prepare("SELECT u_user, u_seq FROM user_index ORDER BY u_user, u_seq")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(copied, expected[..entries], "the smallest keys first");
        }
        assert_eq!(groups, with_user.div_ceil(MIN_SLICE));
        // Nothing is left behind: a quiet writer's full copy has nothing to do.
        index.copy_all(&conn, BATCH);
        assert_eq!(state(&conn), (with_user, BATCH));
    }
}
