//! The tree keeper: one task per node that hashes committed events into the stored tree (every
//! second) and signs a checkpoint when the tree grew (every `ANNALS_CHECKPOINT_INTERVAL_SECS`);
//! and the reads proofs are answered from.
//!
//! Invariants:
//! - Leaves are appended in seq order with no gap: the keeper reads the events after the
//!   tree's last leaf and stops at a missing seq (an event deleted before it was hashed, which
//!   retention never does: only something outside Annals), which it reports instead of
//!   skipping — the tree never silently leaves an event out.
//! - On PostgreSQL every node runs a keeper; each extension is a compare-and-set on the tree
//!   state (`IntegrityStore::extend_tree`), so racing keepers never write one size twice.
//! - A checkpoint's size is one the tree reached, and its head is computed from the stored
//!   tiles, the same ones proofs read.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::canonical::event_leaf;
use super::checkpoint::{Checkpoint, Signer};
use super::merkle::{self, Hash, NodeId, Nodes, needed_for};
use super::tiles::{self, TileSet};
use crate::store::copy::CopyTable;
use crate::store::integrity::TreeState;
use crate::store::{Store, StoreError};

/// Events hashed per round trip.
const BATCH: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "event seq {expected} is missing: it was deleted before it was added to the Merkle tree, \
         which stops there (next event: seq {found}); run `annals verify`"
    )]
    Gap { expected: i64, found: i64 },
    #[error("the stored Merkle tree lacks the node at level {} index {}; run `annals verify`", .0.level, .0.index)]
    MissingNode(NodeId),
}

impl From<KeeperError> for StoreError {
    fn from(e: KeeperError) -> Self {
        match e {
            KeeperError::Store(e) => e,
            other => StoreError::Internal(anyhow::anyhow!(other)),
        }
    }
}

/// A tree size and its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub state: TreeState,
    pub root: Hash,
}

/// Hashes every event committed before the call that the tree lacks into it; returns the
/// state it reached. Events committed meanwhile wait for the next call: under steady ingest a
/// call is a few full rounds, not a chase of each new commit with a transaction of its own.
pub async fn catch_up(store: &dyn Store) -> Result<TreeState, KeeperError> {
    let target = store.copy_position(CopyTable::Events).await?;
    loop {
        let state = store.tree_state().await?;
        let next_seq = state.seq_of(state.size);
        if state.size > 0 && next_seq > target {
            return Ok(state);
        }
        let events = store.events_after(next_seq - 1, BATCH).await?;
        let Some(first) = events.first() else {
            return Ok(state);
        };
        let base = if state.size == 0 {
            // An empty tree starts at the oldest event there is (older ones may have gone to
            // retention before the tree existed).
            first.seq - 1
        } else {
            state.base
        };
        let from = TreeState {
            base,
            size: state.size,
        };
        for (expected, event) in (from.seq_of(from.size)..).zip(&events) {
            if event.seq != expected {
                return Err(KeeperError::Gap {
                    expected,
                    found: event.seq,
                });
            }
        }
        // Cut to the size read: a keeper that extended the tree since wrote longer tiles (its
        // compare-and-set then fails ours, but the leaves must go where this size puts them).
        let mut read = store.read_tiles(tiles::tiles_to_extend(state.size)).await?;
        tiles::cut_to(&mut read, state.size);
        let mut tiles = TileSet::new(read);
        let size = state.size;
        let (tiles, added) = tokio::task::spawn_blocking(move || {
            let leaves: Vec<Hash> = events.iter().map(event_leaf).collect();
            let extended = tiles::extend(&mut tiles, size, &leaves);
            extended.map(|_| (tiles, leaves.len() as u64))
        })
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("hashing task failed: {e}")))?
        .map_err(KeeperError::MissingNode)?;
        let to = TreeState {
            base,
            size: size + added,
        };
        // Lost a race with another node's keeper: read the state again.
        store.extend_tree(state, to, tiles.changed()).await?;
    }
}

/// Reads the stored nodes `compute` needs (a first pass learns which), then runs it.
pub async fn with_nodes<T>(
    store: &dyn Store,
    compute: impl Fn(&dyn Nodes) -> T,
) -> Result<T, KeeperError> {
    let needed = needed_for(|n| {
        compute(n);
    });
    let tiles = TileSet::new(store.read_tiles(tiles::tiles_for(&needed)).await?);
    let value = compute(&tiles);
    match tiles.missing() {
        Some(node) => Err(KeeperError::MissingNode(node)),
        None => Ok(value),
    }
}

/// The head of the tree at `state`.
pub async fn head(store: &dyn Store, state: TreeState) -> Result<TreeHead, KeeperError> {
    let root = with_nodes(store, |n| merkle::root(n, state.size)).await?;
    Ok(TreeHead { state, root })
}

/// Catches the tree up and signs its head, unless a checkpoint of that size exists (then that
/// one is returned). `Ok(None)` for an empty tree. `bool`: whether this call signed it.
pub async fn checkpoint(
    store: &dyn Store,
    signer: &Signer,
) -> Result<Option<(Checkpoint, bool)>, KeeperError> {
    let state = catch_up(store).await?;
    if state.size == 0 {
        return Ok(None);
    }
    if let Some(existing) = store.checkpoint_at(state.size).await? {
        return Ok(Some((existing, false)));
    }
    let head = head(store, state).await?;
    store
        .add_checkpoint(signer.sign(state.size, head.root))
        .await?;
    // Another node may have signed the same size first; everyone answers with the stored one.
    let stored = store
        .checkpoint_at(state.size)
        .await?
        .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("checkpoint not stored")))?;
    let ours = stored.public_key == signer.public_key();
    Ok(Some((stored, ours)))
}

/// Runs the keeper until the handle is aborted: the tree every `tree_every`, a checkpoint every
/// `checkpoint_every` when the tree grew. A failure is logged once when it starts and once
/// when it ends.
pub fn spawn(
    store: Arc<dyn Store>,
    signer: Signer,
    tree_every: Duration,
    checkpoint_every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(tree_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tick.tick().await;
            let due = last_checkpoint.elapsed() >= checkpoint_every;
            let result = if due {
                last_checkpoint = tokio::time::Instant::now();
                checkpoint(store.as_ref(), &signer).await.map(|_| ())
            } else {
                catch_up(store.as_ref()).await.map(|_| ())
            };
            match result {
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "the Merkle tree keeper failed; retrying");
                }
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the Merkle tree keeper works again");
                }
                _ => {}
            }
        }
    })
}
