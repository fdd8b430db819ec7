//! Ingest plumbing shared by the stores' writers: the bounded write queue that sits in front
//! of a group-commit writer and turns overload into an immediate `503`, never a hang.

pub mod queue;

pub use queue::{QueueFull, Queued, WriteQueue};
