//! `IntegrityStore`: what the Merkle tree asks of a store — its state row, its tiles (see
//! `integrity::tiles`), the events to hash in `seq` order, and the signed checkpoints.
//!
//! Invariants every backend keeps:
//! - `merkle_state` names the tree: leaf `i` is the event of seq `base + 1 + i`, and `size`
//!   leaves are in the tiles. Only `extend_tree` changes it, as a compare-and-set in the same
//!   transaction as the tiles, so two keepers (two PostgreSQL nodes) never both extend one size.
//! - Tiles and checkpoints outlive the events: retention deletes events, never these, so the
//!   tree of a store that drops old events still proves what it held.

use async_trait::async_trait;

use super::StoreError;
use crate::domain::StoredEvent;
use crate::integrity::checkpoint::Checkpoint;
use crate::integrity::tiles::TileId;

/// The tree's state row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeState {
    /// The seq before the first leaf's.
    pub base: i64,
    /// Leaves in the tree.
    pub size: u64,
}

impl TreeState {
    /// The seq of leaf `index`.
    pub fn seq_of(&self, index: u64) -> i64 {
        self.base + 1 + index as i64
    }

    /// The leaf index of `seq`, if the tree (of any size) would hold it there.
    pub fn index_of(&self, seq: i64) -> Option<u64> {
        u64::try_from(seq - self.base - 1).ok()
    }
}

#[async_trait]
pub trait IntegrityStore: Send + Sync {
    async fn tree_state(&self) -> Result<TreeState, StoreError>;

    /// The tiles among `ids` the store has, with their contents.
    async fn read_tiles(&self, ids: Vec<TileId>) -> Result<Vec<(TileId, Vec<u8>)>, StoreError>;

    /// Writes `tiles` and moves the state from `from` to `to`, in one transaction, if the state
    /// is still `from`; `false` (nothing written) if another keeper moved it first.
    async fn extend_tree(
        &self,
        from: TreeState,
        to: TreeState,
        tiles: Vec<(TileId, Vec<u8>)>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` events with a seq above `after`, in seq order (fewer when their data passes
    /// `copy::BATCH_BYTES`).
    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// Stores a checkpoint; one for a size already checkpointed is ignored.
    async fn add_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError>;

    /// Checkpoints newest first: up to `limit` with a tree size below `before` (all when `None`).
    async fn checkpoints(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError>;

    /// The checkpoint of exactly `size` leaves, if one was signed.
    async fn checkpoint_at(&self, size: u64) -> Result<Option<Checkpoint>, StoreError> {
        let found = self.checkpoints(Some(size.saturating_add(1)), 1).await?;
        Ok(found.into_iter().next().filter(|c| c.tree_size == size))
    }
}

/// The columns of `merkle_checkpoints`, in the order `checkpoint_from_columns` takes them.
pub(crate) const CHECKPOINT_COLUMNS: &str =
    "origin, tree_size, root, signed_at, public_key, signature";

/// A stored checkpoint's columns read back; a row whose blobs have the wrong length is
/// `Internal` (it was not written by Annals).
pub(crate) fn checkpoint_from_columns(
    origin: String,
    tree_size: i64,
    root: Vec<u8>,
    signed_at: i64,
    public_key: Vec<u8>,
    signature: Vec<u8>,
) -> Result<Checkpoint, StoreError> {
    let bad =
        |what: &str| StoreError::Internal(anyhow::anyhow!("checkpoint {tree_size}: bad {what}"));
    Ok(Checkpoint {
        origin,
        tree_size: u64::try_from(tree_size).map_err(|_| bad("size"))?,
        root: root.try_into().map_err(|_| bad("root"))?,
        signed_at: crate::domain::Timestamp::from_micros(signed_at),
        public_key: public_key.try_into().map_err(|_| bad("public key"))?,
        signature: signature.try_into().map_err(|_| bad("signature"))?,
    })
}
