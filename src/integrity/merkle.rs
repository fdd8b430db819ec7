//! RFC 6962 Merkle tree hashing: leaves and nodes, the tree head of any size, inclusion and
//! consistency proofs, and their verification.
//!
//! Leaf index `i` of a tree of size `n` is its `i`-th appended entry. A *perfect subtree*
//! `(level, index)` covers leaves `[index·2^level, (index+1)·2^level)`; its hash is the one
//! thing proofs need from storage, asked for through a [`Nodes`] lookup. Every tree hash RFC 6962
//! defines, `MTH(D[a:b])`, is built here from such perfect subtrees, so a store that can hand
//! out perfect subtrees (see `integrity::tiles`) can answer any proof.
//!
//! Proof generation runs twice over a lookup: once to learn which nodes it needs
//! ([`needed_for`]), so the caller fetches them in one read, and once to compute.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::new().finalize().into()
}

/// A perfect subtree: `2^level` leaves from `index·2^level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

/// Where perfect subtree hashes come from.
pub trait Nodes {
    fn node(&self, id: NodeId) -> Hash;
}

impl<F: Fn(NodeId) -> Hash> Nodes for F {
    fn node(&self, id: NodeId) -> Hash {
        self(id)
    }
}

/// A lookup that answers zeros and records what was asked: the first pass of a proof.
#[derive(Default)]
struct Recorder(std::cell::RefCell<BTreeSet<NodeId>>);

impl Nodes for Recorder {
    fn node(&self, id: NodeId) -> Hash {
        self.0.borrow_mut().insert(id);
        [0; 32]
    }
}

/// The perfect subtrees `compute` asks for, in order: what to fetch before computing for real.
pub fn needed_for(compute: impl FnOnce(&dyn Nodes)) -> Vec<NodeId> {
    let recorder = Recorder::default();
    compute(&recorder);
    recorder.0.into_inner().into_iter().collect()
}

/// The largest power of two smaller than `n` (`n ≥ 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for a range as RFC 6962's recursion meets it: `start` a multiple of the
/// largest power of two not above `end - start`'s enclosing split. Built from the perfect
/// subtrees of the range's binary decomposition, right to left.
pub fn range_hash(nodes: &dyn Nodes, start: u64, end: u64) -> Hash {
    debug_assert!(end > start);
    let mut parts = Vec::new();
    let mut at = start;
    while at < end {
        let size = end - at;
        let level = 63 - size.leading_zeros();
        // The largest perfect subtree that starts at `at` (aligned) and fits.
        let align = if at == 0 { 63 } else { at.trailing_zeros() };
        let level = level.min(align) as u8;
        parts.push(nodes.node(NodeId {
            level,
            index: at >> level,
        }));
        at += 1 << level;
    }
    let mut acc = parts.pop().expect("a non-empty range");
    while let Some(left) = parts.pop() {
        acc = node_hash(&left, &acc);
    }
    acc
}

/// The tree head of the first `size` leaves.
pub fn root(nodes: &dyn Nodes, size: u64) -> Hash {
    if size == 0 {
        empty_root()
    } else {
        range_hash(nodes, 0, size)
    }
}

/// RFC 6962 `PATH(m, D[n])`: the audit path of leaf `m` in the tree of `n` leaves, leaf side
/// first. `m < n`.
pub fn inclusion_proof(nodes: &dyn Nodes, m: u64, n: u64) -> Vec<Hash> {
    let mut path = Vec::new();
    subpath(nodes, m, 0, n, &mut path);
    path
}

fn subpath(nodes: &dyn Nodes, m: u64, start: u64, end: u64, path: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        subpath(nodes, m, start, start + k, path);
        path.push(range_hash(nodes, start + k, end));
    } else {
        subpath(nodes, m - k, start + k, end, path);
        path.push(range_hash(nodes, start, start + k));
    }
}

/// RFC 6962 `PROOF(m, D[n])`: the consistency proof from the tree of `m` leaves to the tree of
/// `n`. `0 < m ≤ n`; empty when `m == n`.
pub fn consistency_proof(nodes: &dyn Nodes, m: u64, n: u64) -> Vec<Hash> {
    let mut proof = Vec::new();
    if m < n {
        subproof(nodes, m, 0, n, true, &mut proof);
    }
    proof
}

fn subproof(nodes: &dyn Nodes, m: u64, start: u64, end: u64, whole: bool, proof: &mut Vec<Hash>) {
    let n = end - start;
    if m == n {
        if !whole {
            proof.push(range_hash(nodes, start, end));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(nodes, m, start, start + k, whole, proof);
        proof.push(range_hash(nodes, start + k, end));
    } else {
        subproof(nodes, m - k, start + k, end, false, proof);
        proof.push(range_hash(nodes, start, start + k));
    }
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, m: u64, n: u64, path: &[Hash], root: &Hash) -> bool {
    if m >= n {
        return false;
    }
    let (mut f_n, mut s_n) = (m, n - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, first: &Hash, second: &Hash, proof: &[Hash]) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && first == second;
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if m.is_power_of_two() {
        proof.insert(0, *first);
    }
    let Some((head, rest)) = proof.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (m - 1, n - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *first && sr == *second && s_n == 0
}

/// The right edge of a growing tree: the perfect subtrees of its size's binary decomposition,
/// largest first. Appending a leaf merges equal-sized neighbours; every subtree it completes is
/// reported, so a caller can store (or check) the ones it keeps.
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, strictly decreasing levels.
    stack: Vec<(u8, Hash)>,
}

impl Frontier {
    /// The frontier of the first `size` leaves, from a lookup of perfect subtrees.
    pub fn at(nodes: &dyn Nodes, size: u64) -> Self {
        Self {
            size,
            stack: frontier_ids(size)
                .into_iter()
                .map(|id| (id.level, nodes.node(id)))
                .collect(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; calls `completed` for each perfect subtree this completes, the leaf
    /// itself first.
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, &Hash)) {
        let index = self.size;
        self.size += 1;
        let mut node = (0u8, leaf);
        completed(NodeId { level: 0, index }, &leaf);
        while let Some(&(level, left)) = self.stack.last() {
            if level != node.0 {
                break;
            }
            self.stack.pop();
            let level = node.0 + 1;
            node = (level, node_hash(&left, &node.1));
            completed(
                NodeId {
                    level,
                    index: index >> level,
                },
                &node.1,
            );
        }
        self.stack.push(node);
    }

    /// The tree head at the current size.
    pub fn root(&self) -> Hash {
        let mut hashes = self.stack.iter().rev().map(|(_, h)| *h);
        let Some(mut acc) = hashes.next() else {
            return empty_root();
        };
        for left in hashes {
            acc = node_hash(&left, &acc);
        }
        acc
    }
}

/// The perfect subtrees that make up the first `size` leaves, largest (leftmost) first.
pub fn frontier_ids(size: u64) -> Vec<NodeId> {
    let mut ids = Vec::new();
    let mut at = 0u64;
    for level in (0..64u8).rev() {
        if size & (1 << level) != 0 {
            ids.push(NodeId {
                level,
                index: at >> level,
            });
            at += 1 << level;
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6962's definitions, straight from the text, over the leaf hashes.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Perfect subtrees computed from the leaves.
    fn lookup(d: &[Hash]) -> impl Fn(NodeId) -> Hash + '_ {
        move |id: NodeId| {
            let start = (id.index << id.level) as usize;
            mth(&d[start..start + (1 << id.level)])
        }
    }

    #[test]
    fn roots_match_the_definition_at_every_size() {
        let d = leaves(70);
        let nodes = lookup(&d);
        let mut frontier = Frontier::default();
        for n in 0..=70u64 {
            assert_eq!(root(&nodes, n), mth(&d[..n as usize]), "size {n}");
            assert_eq!(frontier.root(), mth(&d[..n as usize]), "frontier {n}");
            assert_eq!(Frontier::at(&nodes, n).root(), frontier.root(), "at {n}");
            if n < 70 {
                frontier.push(d[n as usize], |id, h| assert_eq!(*h, nodes(id)));
            }
        }
    }

    #[test]
    fn known_answer_for_the_empty_tree() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_changed_one_does_not() {
        let d = leaves(33);
        let nodes = lookup(&d);
        for n in 1..=33u64 {
            let head = mth(&d[..n as usize]);
            for m in 0..n {
                let path = inclusion_proof(&nodes, m, n);
                assert!(verify_inclusion(&d[m as usize], m, n, &path, &head));
                let wrong_leaf = leaf_hash(b"other");
                assert!(!verify_inclusion(&wrong_leaf, m, n, &path, &head));
                if n > 1 {
                    assert!(!verify_inclusion(
                        &d[m as usize],
                        (m + 1) % n,
                        n,
                        &path,
                        &head
                    ));
                }
            }
            for m in 1..=n {
                let proof = consistency_proof(&nodes, m, n);
                let first = mth(&d[..m as usize]);
                assert!(verify_consistency(m, n, &first, &head, &proof), "{m} {n}");
                if m < n {
                    assert!(!verify_consistency(m, n, &leaf_hash(b"x"), &head, &proof));
                    let mut bent = proof.clone();
                    bent[0][0] ^= 1;
                    assert!(!verify_consistency(m, n, &first, &head, &bent));
                }
            }
        }
    }

    #[test]
    fn the_first_pass_names_every_node_the_second_uses() {
        let d = leaves(100);
        let nodes = lookup(&d);
        let needed = needed_for(|n| {
            inclusion_proof(n, 37, 100);
            consistency_proof(n, 37, 100);
        });
        let asked = std::cell::RefCell::new(BTreeSet::new());
        let tracking = |id: NodeId| {
            asked.borrow_mut().insert(id);
            nodes(id)
        };
        inclusion_proof(&tracking, 37, 100);
        consistency_proof(&tracking, 37, 100);
        assert_eq!(asked.into_inner().into_iter().collect::<Vec<_>>(), needed);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn proofs_hold_for_large_trees(n in 1u64..5000, m_seed in any::<u64>()) {
            let d = leaves(n);
            let nodes = lookup(&d);
            let m = m_seed % n;
            let head = mth(&d);
            let path = inclusion_proof(&nodes, m, n);
            prop_assert!(verify_inclusion(&d[m as usize], m, n, &path, &head));
            let first = m + 1;
            let proof = consistency_proof(&nodes, first, n);
            prop_assert!(verify_consistency(first, n, &mth(&d[..first as usize]), &head, &proof));
        }
    }
}
