//! Integration tests: each test starts the real server on a random port against a fresh store
//! in its own temp dir and talks HTTP to it.

mod analytics;
mod api_events;
mod audit;
mod auth;
mod bus;
mod cli;
mod cloudevents;
mod copy;
mod crash;
mod encoding;
mod export;
mod fuzz;
mod helpers;
mod import;
mod inbound;
mod ingest;
mod integrity;
mod isolation;
mod limits;
mod live;
mod nodes;
mod ops;
mod outage;
mod query;
mod retention;
mod security;
mod stream;
