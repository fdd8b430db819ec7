//! How the tree is stored: in tiles, as Go's checksum database stores its log.
//!
//! Tile `(t, k)` holds the hashes of the perfect subtrees at tree level `8t` with indices
//! `[256k, 256k + 256)`, 32 bytes each, in order: level-0 tiles hold the leaf hashes, level-1
//! tiles the roots of 256-leaf subtrees, and so on. A subtree between two stored levels is
//! hashed from at most 256 entries of one tile. So a store keeps ~32 bytes per event and writes
//! one row per 256 events (plus the right edge's partial tiles, rewritten as they grow), and any
//! proof reads ~2 tiles per tree level of 8.
//!
//! Invariant: tiles only grow. An entry, once written, never changes, so a reader that sees a
//! tile longer than the tree size it read with finds the same hashes where it looks.

use std::collections::{BTreeMap, BTreeSet};

use super::merkle::{Frontier, Hash, NodeId, Nodes, frontier_ids, node_hash};

/// Tree levels per tile.
pub const HEIGHT: u8 = 8;
/// Entries in a full tile.
pub const WIDTH: u64 = 1 << HEIGHT;

/// A stored tile: `index`-th run of 256 entries at tree level `8 · level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TileId {
    pub level: u8,
    pub index: u64,
}

/// The tile that holds what `node` is hashed from.
pub fn tile_of(node: NodeId) -> TileId {
    let h = node.level % HEIGHT;
    TileId {
        level: node.level / HEIGHT,
        index: (node.index << h) >> HEIGHT,
    }
}

/// The tiles a set of nodes are hashed from.
pub fn tiles_for(nodes: &[NodeId]) -> Vec<TileId> {
    nodes
        .iter()
        .map(|n| tile_of(*n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// How many perfect subtrees of tile level `level` (tree level `8 · level`) a tree of `size`
/// leaves holds: the entries its tiles at that level have between them.
fn entries_at(level: u8, size: u64) -> u64 {
    size.checked_shr(u32::from(level) * u32::from(HEIGHT))
        .unwrap_or(0)
}

/// The partial tiles at the right edge of a tree of `size` leaves: the ones the next leaves
/// extend.
pub fn edge_tiles(size: u64) -> Vec<TileId> {
    (0u8..)
        .map(|level| (level, entries_at(level, size)))
        .take_while(|(_, entries)| *entries > 0)
        .filter(|(_, entries)| entries % WIDTH != 0)
        .map(|(level, entries)| TileId {
            level,
            index: entries / WIDTH,
        })
        .collect()
}

/// Every tile of a tree of `size` leaves, level by level.
pub fn all_tiles(size: u64) -> Vec<TileId> {
    (0u8..)
        .map(|level| (level, entries_at(level, size)))
        .take_while(|(_, entries)| *entries > 0)
        .flat_map(|(level, entries)| {
            (0..entries.div_ceil(WIDTH)).map(move |index| TileId { level, index })
        })
        .collect()
}

/// How many of a tile's entries a tree of `size` leaves holds.
pub fn entries_within(tile: TileId, size: u64) -> u64 {
    entries_at(tile.level, size)
        .saturating_sub(tile.index * WIDTH)
        .min(WIDTH)
}

/// Cuts tiles read from a store to what a tree of `size` leaves holds: a tile may already be
/// longer (the tree grew since `size` was read, or it is being copied as it was at `size`).
pub fn cut_to(tiles: &mut [(TileId, Vec<u8>)], size: u64) {
    for (id, hashes) in tiles {
        hashes.truncate(entries_within(*id, size) as usize * 32);
    }
}

/// Tiles read from a store; answers perfect subtrees from them. A node whose entries are not
/// there (a store that lost or cut a tile) is noted and answered with zeros: check
/// [`TileSet::missing`] after computing.
#[derive(Clone, Debug, Default)]
pub struct TileSet {
    tiles: BTreeMap<TileId, Vec<u8>>,
    missing: std::cell::Cell<Option<NodeId>>,
    changed: BTreeSet<TileId>,
}

impl TileSet {
    pub fn new(tiles: impl IntoIterator<Item = (TileId, Vec<u8>)>) -> Self {
        Self {
            tiles: tiles.into_iter().collect(),
            ..Self::default()
        }
    }

    /// A node that was asked for and could not be hashed, if any.
    pub fn missing(&self) -> Option<NodeId> {
        self.missing.get()
    }

    /// Appends the hash of a perfect subtree at a stored level (`level % 8 == 0`), which must
    /// be the next entry of its tile.
    fn append(&mut self, node: NodeId, hash: &Hash) {
        let id = tile_of(node);
        let tile = self.tiles.entry(id).or_default();
        debug_assert_eq!(tile.len() as u64 / 32, node.index % WIDTH);
        tile.extend_from_slice(hash);
        self.changed.insert(id);
    }

    /// The tiles `extend` changed or made, with their whole contents.
    pub fn changed(&self) -> Vec<(TileId, Vec<u8>)> {
        self.changed
            .iter()
            .map(|id| (*id, self.tiles[id].clone()))
            .collect()
    }

    /// The entries `[from, from + count)` of a tile, if it holds them.
    fn entries(&self, tile: TileId, from: u64, count: u64) -> Option<&[u8]> {
        let bytes = self.tiles.get(&tile)?;
        let (start, end) = (from as usize * 32, (from + count) as usize * 32);
        bytes.get(start..end)
    }
}

impl Nodes for TileSet {
    fn node(&self, id: NodeId) -> Hash {
        let h = id.level % HEIGHT;
        let first = id.index << h;
        let Some(entries) = self.entries(tile_of(id), first % WIDTH, 1 << h) else {
            self.missing.set(Some(id));
            return [0; 32];
        };
        let mut layer: Vec<Hash> = entries
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        while layer.len() > 1 {
            layer = layer
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
        }
        layer[0]
    }
}

/// The tiles to read before extending a tree of `size` leaves: the frontier's and the edge's.
pub fn tiles_to_extend(size: u64) -> Vec<TileId> {
    let mut tiles: BTreeSet<TileId> = tiles_for(&frontier_ids(size)).into_iter().collect();
    tiles.extend(edge_tiles(size));
    tiles.into_iter().collect()
}

/// Appends leaves to a tree of `size` leaves whose `tiles_to_extend` are in `tiles`; returns
/// the new tree head. The tiles changed are then in `tiles.changed()`.
pub fn extend(tiles: &mut TileSet, size: u64, leaves: &[Hash]) -> Result<Hash, NodeId> {
    let mut frontier = Frontier::at(tiles, size);
    if let Some(missing) = tiles.missing() {
        return Err(missing);
    }
    let mut stored = Vec::new();
    for leaf in leaves {
        frontier.push(*leaf, |node, hash| {
            if node.level % HEIGHT == 0 {
                stored.push((node, *hash));
            }
        });
        for (node, hash) in stored.drain(..) {
            tiles.append(node, &hash);
        }
    }
    Ok(frontier.root())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::merkle::{
        consistency_proof, inclusion_proof, leaf_hash, needed_for, root,
    };

    fn leaves(from: u64, n: u64) -> Vec<Hash> {
        (from..from + n)
            .map(|i| leaf_hash(&i.to_be_bytes()))
            .collect()
    }

    /// A store's view: extends in uneven steps, reading only what `tiles_to_extend` names each
    /// time, as the keeper does.
    #[test]
    fn tiles_grown_in_steps_answer_like_the_whole_tree() {
        let mut stored: BTreeMap<TileId, Vec<u8>> = BTreeMap::new();
        let mut size = 0u64;
        let mut heads = Vec::new();
        for step in [1u64, 2, 255, 1, 300, 65536 - 559, 1, 70000, 3] {
            let wanted = tiles_to_extend(size);
            let mut tiles = TileSet::new(
                wanted
                    .iter()
                    .filter_map(|id| stored.get(id).map(|t| (*id, t.clone()))),
            );
            let head = extend(&mut tiles, size, &leaves(size, step)).expect("complete");
            stored.extend(tiles.changed());
            size += step;
            heads.push((size, head));
        }
        let all = TileSet::new(stored.clone());
        let whole = leaves(0, size);
        let mut frontier = Frontier::default();
        let mut expected = BTreeMap::new();
        for (i, leaf) in whole.iter().enumerate() {
            frontier.push(*leaf, |_, _| {});
            expected.insert(i as u64 + 1, frontier.root());
        }
        for (size, head) in &heads {
            assert_eq!(*head, expected[size]);
            assert_eq!(root(&all, *size), expected[size]);
        }
        // Full tiles are 8 KiB; the leaf tiles hold every leaf.
        assert_eq!(stored[&TileId { level: 0, index: 0 }].len(), 8192);
        assert_eq!(
            all.node(NodeId {
                level: 0,
                index: 1234
            }),
            whole[1234]
        );
        // A proof's nodes come from a handful of tiles.
        let needed = needed_for(|n| {
            inclusion_proof(n, 1234, size);
            consistency_proof(n, 1000, size);
        });
        assert!(tiles_for(&needed).len() <= 12, "{:?}", tiles_for(&needed));
        assert!(all.missing().is_none());
    }

    /// A keeper that read size 10 while another extended the tree to 13 reads tiles of 13
    /// entries; cut to its size, its extension is the one the tree of 10 would get.
    #[test]
    fn tiles_longer_than_the_size_read_are_cut_before_extending() {
        let mut tiles = TileSet::default();
        extend(&mut tiles, 0, &leaves(0, 13)).unwrap();
        let mut read = tiles.changed();
        cut_to(&mut read, 10);
        let mut behind = TileSet::new(read);
        let head = extend(&mut behind, 10, &leaves(10, 5)).unwrap();
        let mut whole = TileSet::default();
        assert_eq!(head, extend(&mut whole, 0, &leaves(0, 15)).unwrap());
        assert_eq!(behind.changed(), whole.changed());
    }

    #[test]
    fn a_cut_tile_is_reported_not_guessed() {
        let mut tiles = TileSet::default();
        extend(&mut tiles, 0, &leaves(0, 10)).unwrap();
        let mut cut = tiles.changed();
        cut[0].1.truncate(32 * 5);
        let cut = TileSet::new(cut);
        root(&cut, 10);
        assert!(cut.missing().is_some());
    }

    #[test]
    fn a_tree_cut_to_a_size_keeps_the_entries_below_it() {
        let ids = all_tiles(65_537);
        assert_eq!(ids.len(), 257 + 1 + 1);
        assert_eq!(
            entries_within(
                TileId {
                    level: 0,
                    index: 256
                },
                65_537
            ),
            1
        );
        assert_eq!(entries_within(TileId { level: 1, index: 0 }, 65_537), 256);
        assert_eq!(entries_within(TileId { level: 2, index: 0 }, 65_537), 1);
        assert_eq!(entries_within(TileId { level: 0, index: 3 }, 700), 0);
        assert!(all_tiles(0).is_empty());
    }

    #[test]
    fn edge_tiles_are_the_partial_ones() {
        assert!(edge_tiles(0).is_empty());
        assert_eq!(edge_tiles(1), vec![TileId { level: 0, index: 0 }]);
        assert!(edge_tiles(256).contains(&TileId { level: 1, index: 0 }));
        assert_eq!(edge_tiles(256).len(), 1);
        assert_eq!(edge_tiles(65536), vec![TileId { level: 2, index: 0 }]);
    }
}
