//! Annals: records events for auditability, answers questions about them, and delivers them to
//! subscribers. See ARCHITECTURE.md for the map of this crate.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod import;
pub mod ingest;
pub mod integrity;
pub mod jobs;
pub mod listener;
pub mod server;
pub mod store;
pub mod telemetry;
