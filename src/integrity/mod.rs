//! Tamper evidence: the events of a store form an RFC 6962 Merkle tree in `seq` order, its heads
//! are signed (Ed25519) in checkpoints, and proofs show an event is in a signed tree and that a
//! later tree extends an earlier one.
//!
//! - `merkle`: hashing, tree heads, proofs and their checks (pure).
//! - `canonical`: the bytes an event's leaf hashes.
//! - `tiles`: how a store keeps the tree (256 hashes per row).
//! - `checkpoint`: the signing key, the signed note.
//! - `keeper`: the background job that hashes committed events into the tree and signs
//!   checkpoints, and the proof answers read from the stored tiles.
//! - `verify`: `annals verify`, which recomputes everything from the events.
//!
//! Invariant: the tree is built from events *read back from the store* after they commit, by
//! the keeper, never inside the ingest path: appends pay nothing for it, and what is hashed is
//! exactly what a later reader (or `annals verify`) reads.

pub mod canonical;
pub mod checkpoint;
pub mod keeper;
pub mod merkle;
pub mod tiles;
pub mod verify;
