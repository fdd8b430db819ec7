//! Domain types: the shapes a request becomes once it has been checked at the edge.
//!
//! Invariant: every value of a type in this module is valid. Handlers and stores never see an
//! unchecked string where one of these types is expected; parsing is the only way to build one.

pub mod access;
pub mod analytics;
pub mod api_event;
pub mod audit;
pub mod bus;
pub mod cloudevents;
pub mod envelope;
pub mod event;
pub mod format;
#[cfg(test)]
mod fuzz_tests;
pub mod inbound;
pub mod json_depth;
pub mod masking;
pub mod names;
pub mod nul;
pub mod page;
pub mod security;
pub mod subscription_input;
pub mod time;
pub mod topic;
pub mod type_policy;
pub mod unique_keys;

pub use envelope::{EnvelopeRules, FieldError, NewEvent, parse_event};
pub use event::StoredEvent;
pub use format::EventFormat;
pub use names::{ClientId, EventType};
pub use time::Timestamp;
pub use topic::TopicPattern;
