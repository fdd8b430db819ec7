//! `annals copy`: moves everything one store holds into another — a SQLite file into
//! PostgreSQL when one machine is no longer enough, PostgreSQL back into a file, or a file into
//! a new file — keeping what an audit trail must keep: every event's `seq`, `id`, times and
//! content, the idempotency keys (so a client's retry of an old event is still a duplicate),
//! the API keys (so clients keep their keys), the security events, the API-call audit log, the
//! event bus's subscriptions (with their signing secrets) and the inbound integrations.
//!
//! Invariants:
//! - Events go over in `seq` order, in batches (the next read while the last is written); each
//!   batch is one transaction at the destination, so a copy stopped at any point leaves a prefix of the source there, and
//!   running the copy again carries on after it.
//! - The destination takes events only above every seq it holds, and only when it holds a
//!   prefix of this source (its newest event is the source's event of the same seq, same id):
//!   a copy never mixes two stores' events or reuses a seq.
//! - The destination's last assigned seq ends no lower than the source's, so events the source
//!   deleted (retention) are never handed out again under their old seqs.
//! - Audit records and security events keep their row ids; audit records are copied past the
//!   destination's highest id (they never change), security events are all written again
//!   (their review and count do change), replacing the rows of the same id.
//! - The copy writes no row of the source (opening it runs the store's own upkeep, as for
//!   `annals keys`), so it may be copied while a server keeps serving it; what arrives after a
//!   pass is taken by the next one (see the README's move to PostgreSQL).

use std::time::Instant;

use uuid::Uuid;

use crate::domain::access::KeyRecord;
use crate::domain::audit::StoredAudit;
use crate::domain::security::StoredSecurityEvent;
use crate::domain::{NewEvent, StoredEvent, Timestamp};

use super::integrity::TreeState;
use super::{Store, StoreError};
use crate::integrity::tiles;

/// A batch of events ends once its events' `data` and `headers` pass this many bytes, so a
/// batch of large events stays within memory (an event may hold up to 64 MiB).
pub const BATCH_BYTES: usize = 32 << 20;

/// The tables `copy_out` reads by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyTable {
    /// By `seq`.
    Events,
    /// By row id.
    Security,
    /// By row id.
    Audit,
}

impl CopyTable {
    /// What its rows are called in progress output.
    fn label(self) -> &'static str {
        match self {
            CopyTable::Events => "events",
            CopyTable::Security => "security events",
            CopyTable::Audit => "audit records",
        }
    }
}

/// Checks that `events` are in ascending `seq` order, all above `last` (the destination's last
/// assigned seq), so a copy never hands out a seq twice; returns the newest seq (or `last`).
pub fn check_ascending(events: &[Imported], last: i64) -> anyhow::Result<i64> {
    events.iter().try_fold(last, |previous, e| {
        anyhow::ensure!(
            e.seq > previous,
            "event {} is not above seq {previous}, the last this store assigned",
            e.seq
        );
        Ok(e.seq)
    })
}

/// One event as a copy moves it: every column, and the content hash of its idempotency key
/// when it has one (an event with an `event_id`).
#[derive(Clone, Debug)]
pub struct CopiedEvent {
    pub event: StoredEvent,
    pub content_hash: Option<[u8; 32]>,
}

impl CopiedEvent {
    /// The event as a writer takes it, with the seq, id and receipt time it keeps.
    pub fn into_imported(self) -> Result<Imported, StoreError> {
        let (seq, id, received_at) = (self.event.seq, self.event.id, self.event.received_at);
        let event = self
            .event
            .into_new(self.content_hash)
            .map_err(|e| StoreError::Internal(anyhow::anyhow!(e)))?;
        Ok(Imported {
            event,
            seq,
            id,
            received_at,
        })
    }

    /// `into_imported` of each, or the first failure.
    pub fn into_imported_all(events: Vec<Self>) -> Result<Vec<Imported>, StoreError> {
        events.into_iter().map(Self::into_imported).collect()
    }
}

/// A copied event on its way into a writer: the event, and the seq, id and receipt time it
/// keeps.
pub struct Imported {
    pub event: NewEvent,
    pub seq: i64,
    pub id: Uuid,
    pub received_at: Timestamp,
}

/// Rows read from one store for another.
#[derive(Debug)]
pub enum CopyRows {
    /// Events in `seq` order, and the last seq the source ever assigned (above its newest
    /// event's when retention deleted its newest events).
    Events {
        events: Vec<CopiedEvent>,
        last_assigned: i64,
    },
    Keys(Vec<KeyRecord>),
    Security(Vec<StoredSecurityEvent>),
    Audit(Vec<StoredAudit>),
}

impl CopyRows {
    /// Rows carried (the last assigned seq is not a row).
    fn len(&self) -> usize {
        match self {
            CopyRows::Events { events, .. } => events.len(),
            CopyRows::Keys(rows) => rows.len(),
            CopyRows::Security(rows) => rows.len(),
            CopyRows::Audit(rows) => rows.len(),
        }
    }

    /// The position after the last row: its `seq` or row id.
    fn last_position(&self) -> Option<i64> {
        match self {
            CopyRows::Events { events, .. } => events.last().map(|e| e.event.seq),
            CopyRows::Security(rows) => rows.last().map(|r| r.id),
            CopyRows::Audit(rows) => rows.last().map(|r| r.id),
            CopyRows::Keys(_) => None,
        }
    }
}

/// Why a copy may not go ahead, or did not end well.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "after the copy the destination holds {there} events up to seq {through}, the source \
         {here} (did retention delete events at the source meanwhile?); run the copy again to \
         check, and don't serve the destination until the counts agree"
    )]
    Incomplete { through: i64, there: i64, here: i64 },
    #[error(
        "the destination already holds events that are not this source's (its event {seq} is {there}, \
         the source's is {here}); copy into an empty database, or into an earlier copy of this one"
    )]
    OtherEvents {
        seq: i64,
        there: String,
        here: String,
    },
}

/// How a copy went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Events copied by this run (not those an earlier run copied).
    pub events: u64,
    /// The destination's newest event after the copy (0 when there is none).
    pub last_seq: i64,
    /// Events both stores hold up to `last_seq`, counted on each after the copy.
    pub verified_events: u64,
    pub keys: u64,
    pub security_events: u64,
    pub audit_records: u64,
    pub subscriptions: u64,
    pub integrations: u64,
    /// The Merkle tree's size at the destination after the copy.
    pub tree_size: u64,
    /// Signed checkpoints the source holds, now at the destination too.
    pub checkpoints: u64,
}

/// What the copy tells whoever watches it (a progress bar, or nothing).
pub trait CopyProgress {
    /// Starting on `what`; about `total` rows to go.
    fn start(&mut self, what: &'static str, total: u64);
    /// `rows` more copied.
    fn advance(&mut self, rows: u64);
    fn finish(&mut self);
}

/// Copies everything `source` holds that `destination` doesn't, `batch` rows a transaction.
pub async fn copy_store(
    source: &dyn Store,
    destination: &dyn Store,
    batch: usize,
    progress: &mut dyn CopyProgress,
) -> anyhow::Result<CopyReport> {
    let started = Instant::now();
    let mut report = CopyReport::default();
    // The tree as it is before the events go: every event it holds is committed, so copied.
    let tree = source.tree_state().await?;

    // Events first: the check that the destination is this source's (or empty) comes before
    // anything is written.
    let after = destination.copy_position(CopyTable::Events).await?;
    if after > 0 {
        check_same_history(source, destination, after).await?;
    }
    let newest = source.copy_position(CopyTable::Events).await?;
    progress.start(CopyTable::Events.label(), rows_between(after, newest));
    // The next batch is read while this one is written (two batches in memory at most).
    let mut next = source.copy_out(CopyTable::Events, after, batch).await?;
    loop {
        let CopyRows::Events {
            events,
            last_assigned,
        } = next
        else {
            anyhow::bail!("the source answered a read of events with other rows");
        };
        let Some(last) = events.last().map(|e| e.event.seq) else {
            // Past the last event: the destination's sequence catches up with the source's,
            // which is higher when the source's newest events were deleted.
            destination
                .copy_in(CopyRows::Events {
                    events,
                    last_assigned,
                })
                .await?;
            break;
        };
        let count = events.len() as u64;
        // Raised only to the batch's own last seq, so the next batch still fits above it.
        let write = destination.copy_in(CopyRows::Events {
            events,
            last_assigned: last,
        });
        let read = source.copy_out(CopyTable::Events, last, batch);
        let (written, read) = tokio::join!(write, read);
        written?;
        next = read?;
        report.events += count;
        progress.advance(count);
    }
    progress.finish();
    report.last_seq = destination.copy_position(CopyTable::Events).await?;
    // Both sides counted: a copy that lost a row is said, not reported as done.
    let (there, here) = tokio::try_join!(
        destination.count_events_through(report.last_seq),
        source.count_events_through(report.last_seq)
    )?;
    if there != here {
        return Err(CopyError::Incomplete {
            through: report.last_seq,
            there,
            here,
        }
        .into());
    }
    report.verified_events = u64::try_from(there).unwrap_or(0);

    let keys = source.list_keys(None).await?;
    report.keys = keys.len() as u64;
    destination.copy_in(CopyRows::Keys(keys)).await?;

    // Security events change (reviews, counts): all of them, every time.
    report.security_events =
        copy_table(source, destination, CopyTable::Security, 0, batch, progress).await?;
    // Audit records never change: only those past the destination's newest.
    let after = destination.copy_position(CopyTable::Audit).await?;
    report.audit_records = copy_table(
        source,
        destination,
        CopyTable::Audit,
        after,
        batch,
        progress,
    )
    .await?;
    (report.subscriptions, report.integrations) = copy_bus(source, destination).await?;
    (report.tree_size, report.checkpoints) = copy_tree(source, destination, tree).await?;
    tracing::debug!(elapsed = ?started.elapsed(), ?report, "copy finished");
    Ok(report)
}

/// Copies every subscription (with its secrets, so webhooks stay signed the same way) and every
/// inbound integration, each replacing the destination's of the same id or name; returns how
/// many of each. Deliveries and the integration log stay behind: a subscription replays what
/// it still needs from the destination (`POST /v1/subscriptions/{id}/replay`).
async fn copy_bus(source: &dyn Store, destination: &dyn Store) -> Result<(u64, u64), StoreError> {
    let subscriptions = source.list_subscriptions(None).await?;
    let copied = subscriptions.len() as u64;
    for subscription in subscriptions {
        if !destination
            .update_subscription(subscription.clone())
            .await?
        {
            destination.create_subscription(subscription).await?;
        }
    }
    let integrations = source.list_integrations().await?;
    let names = integrations.len() as u64;
    for integration in integrations {
        if !destination.create_integration(integration.clone()).await? {
            destination
                .delete_integration(integration.name.clone())
                .await?;
            destination.create_integration(integration).await?;
        }
    }
    Ok((copied, names))
}

/// Copies the source's Merkle tree as it was at `tree` (tiles cut to that size) and its signed
/// checkpoints, so the destination's keeper goes on from the same tree and the checkpoints
/// clients hold still verify there. The destination's events are the source's, so its tree,
/// where it has one, is a prefix of the source's; one that starts at another seq is left as it
/// is (and said). Returns the destination's tree size and the checkpoints copied.
async fn copy_tree(
    source: &dyn Store,
    destination: &dyn Store,
    tree: TreeState,
) -> anyhow::Result<(u64, u64)> {
    let there = destination.tree_state().await?;
    if there.size > 0 && there.base != tree.base {
        tracing::warn!(
            source_base = tree.base,
            destination_base = there.base,
            "the destination's Merkle tree starts at another seq than the source's: not copied"
        );
        return Ok((there.size, 0));
    }
    if there.size < tree.size {
        let ids = tiles::all_tiles(tree.size);
        for chunk in ids.chunks(64) {
            let mut rows = source.read_tiles(chunk.to_vec()).await?;
            tiles::cut_to(&mut rows, tree.size);
            // The state moves only with the last chunk: until then the new tiles lie past it.
            if !destination.extend_tree(there, there, rows).await? {
                anyhow::bail!("the destination's Merkle tree changed during the copy");
            }
        }
        if !destination.extend_tree(there, tree, Vec::new()).await? {
            anyhow::bail!("the destination's Merkle tree changed during the copy");
        }
    }
    let mut copied = 0;
    let mut before = Some(tree.size.saturating_add(1));
    loop {
        let page = source.checkpoints(before, 1000).await?;
        let Some(last) = page.last() else { break };
        before = Some(last.tree_size);
        for checkpoint in page {
            destination.add_checkpoint(checkpoint).await?;
            copied += 1;
        }
    }
    Ok((destination.tree_state().await?.size, copied))
}

/// Copies `table`'s rows past `after`; returns how many.
async fn copy_table(
    source: &dyn Store,
    destination: &dyn Store,
    table: CopyTable,
    mut after: i64,
    batch: usize,
    progress: &mut dyn CopyProgress,
) -> Result<u64, StoreError> {
    let newest = source.copy_position(table).await?;
    progress.start(table.label(), rows_between(after, newest));
    let mut copied = 0;
    loop {
        let rows = source.copy_out(table, after, batch).await?;
        let Some(last) = rows.last_position() else {
            break;
        };
        after = last;
        let count = rows.len() as u64;
        destination.copy_in(rows).await?;
        copied += count;
        progress.advance(count);
    }
    progress.finish();
    Ok(copied)
}

/// About how many rows lie past `after` up to `newest` (for a progress bar).
fn rows_between(after: i64, newest: i64) -> u64 {
    u64::try_from(newest.saturating_sub(after)).unwrap_or(0)
}

/// Refuses a destination whose newest event (at `seq`) is not the source's event of that seq.
async fn check_same_history(
    source: &dyn Store,
    destination: &dyn Store,
    seq: i64,
) -> anyhow::Result<()> {
    let id_at = |rows: CopyRows| match rows {
        CopyRows::Events { events, .. } => events
            .first()
            .filter(|e| e.event.seq == seq)
            .map(|e| e.event.id),
        _ => None,
    };
    let there = id_at(destination.copy_out(CopyTable::Events, seq - 1, 1).await?);
    let here = id_at(source.copy_out(CopyTable::Events, seq - 1, 1).await?);
    match (there, here) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (there, here) => {
            let name = |id: Option<uuid::Uuid>| {
                id.map_or_else(|| String::from("missing"), |id| id.to_string())
            };
            Err(CopyError::OtherEvents {
                seq,
                there: name(there),
                here: name(here),
            }
            .into())
        }
    }
}
