//! Ingest plumbing shared by the stores' writers: the bounded write queue that sits in front
//! of a group-commit writer and turns overload into an immediate `503`, never a hang, and the
//! idempotency planning every writer applies inside its transaction, and the recorder of how
//! long appends take (`latency`).

pub mod idempotency;
pub mod latency;
pub mod queue;

pub use queue::{QueueFull, Queued, WriteQueue};
