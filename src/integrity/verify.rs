//! `annals verify`: recomputes the tree from the events and checks it against everything the
//! store holds — each event against its stored leaf hash, each stored node against the node
//! the stored leaves make, each checkpoint's signature and head against the tree at its size —
//! and names what differs, first row first.
//!
//! The tree is built from the *stored* leaves (a changed event is reported once, as that event,
//! not again as every node and checkpoint above it); a changed leaf or node shows as a changed
//! node above it or a checkpoint whose head no longer matches. Events deleted by retention (the
//! oldest ones, all before the first kept) are counted, and their stored leaves stand in for
//! them; a gap anywhere else is a missing event.

use std::collections::BTreeMap;

use super::canonical::event_leaf;
use super::checkpoint::Checkpoint;
use super::merkle::{Frontier, Hash, NodeId};
use super::tiles::{self, TileId};
use crate::store::integrity::TreeState;
use crate::store::{Store, StoreError};

/// What verification found wrong, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The event no longer matches the leaf hashed when it was added.
    EventChanged { seq: i64, id: String },
    /// An event inside the tree is gone, and not by retention.
    EventMissing { seq: i64 },
    /// A stored leaf or node is missing.
    TreeIncomplete { level: u8, index: u64 },
    /// A stored node differs from the one its stored children make.
    NodeChanged { level: u8, index: u64 },
    /// The checkpoint's signature does not verify.
    BadSignature { tree_size: u64 },
    /// The checkpoint is signed by a key other than the trusted one.
    UntrustedKey { tree_size: u64, key_id: String },
    /// The tree at the checkpoint's size has another head than the one signed.
    HeadDiffers { tree_size: u64, after: u64 },
    /// A checkpoint of a size the tree no longer reaches.
    TreeShorter { tree_size: u64, size: u64 },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EventChanged { seq, id } => write!(
                f,
                "event seq {seq} (id {id}) was changed after it was added to the tree: \
                 its content no longer matches its leaf hash"
            ),
            Self::EventMissing { seq } => write!(
                f,
                "event seq {seq} is missing: it is in the tree but not in the store, and \
                 retention removes only the oldest events"
            ),
            Self::TreeIncomplete { level, index } => {
                write!(
                    f,
                    "the stored tree lacks its node at level {level} index {index}"
                )
            }
            Self::NodeChanged { level, index } => write!(
                f,
                "the stored tree node at level {level} index {index} differs from the one its \
                 leaves make (leaves {} to {})",
                index << level,
                ((index + 1) << level) - 1
            ),
            Self::BadSignature { tree_size } => {
                write!(
                    f,
                    "the checkpoint of tree size {tree_size} has a bad signature"
                )
            }
            Self::UntrustedKey { tree_size, key_id } => write!(
                f,
                "the checkpoint of tree size {tree_size} is not signed by the trusted key \
                 (it names key {key_id})"
            ),
            Self::HeadDiffers { tree_size, after } => write!(
                f,
                "the tree of size {tree_size} no longer has the head its checkpoint signed: \
                 leaves from index {after} (the previous checkpoint's size) to {} changed \
                 together with their stored hashes",
                tree_size - 1
            ),
            Self::TreeShorter { tree_size, size } => write!(
                f,
                "the checkpoint of tree size {tree_size} is past the stored tree's {size} leaves: \
                 the tree was cut back"
            ),
        }
    }
}

/// What `verify` read and found.
#[derive(Debug, Default)]
pub struct Report {
    pub tree_size: u64,
    /// Events checked against their leaves.
    pub events_checked: u64,
    /// Leaves whose events retention removed.
    pub removed_by_retention: u64,
    /// Events newer than the tree (the keeper adds them within a second or two).
    pub not_yet_in_tree: u64,
    pub checkpoints: u64,
    /// Key ids that signed checkpoints, with how many each.
    pub signers: BTreeMap<String, u64>,
    pub findings: Vec<Finding>,
    /// Findings past `MAX_FINDINGS` that were counted, not kept.
    pub more_findings: u64,
}

/// Findings kept in a report.
pub const MAX_FINDINGS: usize = 100;

impl Report {
    fn found(&mut self, finding: Finding) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.more_findings += 1;
        }
    }
}

/// Events read per round trip.
const BATCH: usize = 5000;

/// A cached tile per tree level of tiles, read as the walk reaches it.
#[derive(Default)]
struct StoredTiles {
    cached: BTreeMap<u8, (TileId, Vec<u8>)>,
}

impl StoredTiles {
    /// The stored hash of a node at a stored level (`level % 8 == 0`).
    async fn entry(&mut self, store: &dyn Store, node: NodeId) -> Result<Option<Hash>, StoreError> {
        let id = tiles::tile_of(node);
        if self.cached.get(&id.level).map(|(t, _)| *t) != Some(id) {
            let tile = store
                .read_tiles(vec![id])
                .await?
                .pop()
                .map_or_else(Vec::new, |(_, t)| t);
            self.cached.insert(id.level, (id, tile));
        }
        let tile = &self.cached[&id.level].1;
        let at = (node.index % tiles::WIDTH) as usize * 32;
        Ok(tile
            .get(at..at + 32)
            .map(|h| h.try_into().expect("32 bytes")))
    }
}

/// Verifies the whole store; `trusted_key` (the node's own public key), when given, is the
/// only key whose checkpoints count as signed.
pub async fn verify(
    store: &dyn Store,
    trusted_key: Option<[u8; 32]>,
) -> Result<Report, StoreError> {
    let state = store.tree_state().await?;
    let mut report = Report {
        tree_size: state.size,
        ..Report::default()
    };
    let checkpoints = all_checkpoints(store).await?;
    report.checkpoints = checkpoints.len() as u64;
    let mut heads: BTreeMap<u64, Hash> = BTreeMap::new();
    for cp in &checkpoints {
        *report.signers.entry(cp.key_id()).or_default() += 1;
        if !cp.signature_holds() {
            report.found(Finding::BadSignature {
                tree_size: cp.tree_size,
            });
        } else if trusted_key.is_some_and(|k| k != cp.public_key) {
            report.found(Finding::UntrustedKey {
                tree_size: cp.tree_size,
                key_id: cp.key_id(),
            });
        } else if cp.tree_size > state.size {
            report.found(Finding::TreeShorter {
                tree_size: cp.tree_size,
                size: state.size,
            });
        } else {
            heads.insert(cp.tree_size, cp.root);
        }
    }

    let mut walk = Walk {
        store,
        tiles: StoredTiles::default(),
        frontier: Frontier::default(),
        report,
        heads,
        previous_checkpoint: 0,
    };
    let mut after = state.base;
    let mut first_read = true;
    loop {
        let events = store.events_after(after, BATCH).await?;
        if first_read {
            first_read = false;
            // Retention removes the oldest events; their leaves stand in for them.
            let first_kept = events.first().map_or(state.seq_of(state.size), |e| e.seq);
            let removed = state.index_of(first_kept).unwrap_or(0).min(state.size);
            while walk.frontier.size() < removed {
                walk.add_stored().await?;
            }
            walk.report.removed_by_retention = removed;
        }
        let Some(last) = events.last() else { break };
        after = last.seq;
        for event in &events {
            let Some(index) = state.index_of(event.seq) else {
                continue;
            };
            if index >= state.size {
                walk.report.not_yet_in_tree += 1;
                continue;
            }
            // Events the walk skipped over are missing.
            while walk.frontier.size() < index {
                walk.add_missing(&state).await?;
            }
            let computed = event_leaf(event);
            let stored = walk.stored_leaf(index).await?;
            if stored.is_some_and(|s| s != computed) {
                walk.report.found(Finding::EventChanged {
                    seq: event.seq,
                    id: event.id.to_string(),
                });
            }
            walk.report.events_checked += 1;
            walk.add(stored.unwrap_or(computed)).await?;
        }
    }
    while walk.frontier.size() < state.size {
        walk.add_missing(&state).await?;
    }
    Ok(walk.report)
}

/// The tree rebuilt leaf by leaf, checked against the store as it grows.
struct Walk<'a> {
    store: &'a dyn Store,
    tiles: StoredTiles,
    frontier: Frontier,
    report: Report,
    /// Size → head, of the checkpoints whose signature holds.
    heads: BTreeMap<u64, Hash>,
    previous_checkpoint: u64,
}

impl Walk<'_> {
    /// The stored leaf hash of `index`, reporting it when the tree lacks it.
    async fn stored_leaf(&mut self, index: u64) -> Result<Option<Hash>, StoreError> {
        let node = NodeId { level: 0, index };
        let stored = self.tiles.entry(self.store, node).await?;
        if stored.is_none() {
            self.report
                .found(Finding::TreeIncomplete { level: 0, index });
        }
        Ok(stored)
    }

    /// Adds the next leaf as stored (its event is gone).
    async fn add_stored(&mut self) -> Result<(), StoreError> {
        let stored = self.stored_leaf(self.frontier.size()).await?;
        self.add(stored.unwrap_or([0; 32])).await
    }

    /// Reports the next leaf's event missing, and adds the leaf as stored.
    async fn add_missing(&mut self, state: &TreeState) -> Result<(), StoreError> {
        self.report.found(Finding::EventMissing {
            seq: state.seq_of(self.frontier.size()),
        });
        self.add_stored().await
    }

    /// Adds a leaf: checks the stored nodes it completes and the checkpoint at the new size,
    /// if any.
    async fn add(&mut self, leaf: Hash) -> Result<(), StoreError> {
        let mut completed = Vec::new();
        self.frontier.push(leaf, |node, hash| {
            if node.level > 0 && node.level % tiles::HEIGHT == 0 {
                completed.push((node, *hash));
            }
        });
        for (node, hash) in completed {
            match self.tiles.entry(self.store, node).await? {
                None => self.report.found(Finding::TreeIncomplete {
                    level: node.level,
                    index: node.index,
                }),
                Some(stored) if stored != hash => self.report.found(Finding::NodeChanged {
                    level: node.level,
                    index: node.index,
                }),
                Some(_) => {}
            }
        }
        let size = self.frontier.size();
        if let Some(head) = self.heads.get(&size) {
            if *head != self.frontier.root() {
                self.report.found(Finding::HeadDiffers {
                    tree_size: size,
                    after: self.previous_checkpoint,
                });
            }
            self.previous_checkpoint = size;
        }
        Ok(())
    }
}

/// Every checkpoint, oldest first.
async fn all_checkpoints(store: &dyn Store) -> Result<Vec<Checkpoint>, StoreError> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = store.checkpoints(before, 1000).await?;
        let Some(last) = page.last() else { break };
        before = Some(last.tree_size);
        all.extend(page);
    }
    all.reverse();
    Ok(all)
}
