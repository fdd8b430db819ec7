//! `GET /v1/stream`: new events as Server-Sent Events (seed 003's notify-on-create), filtered
//! like `GET /v1/events` (`event_type` or its alias `pattern`, `user_id`, `source`, data fields,
//! …) and resumable: each message's `id` is the event's `seq`, and a reconnect with
//! `Last-Event-ID` (or `?after=<seq>`) first sends what matched since, then goes on live.
//!
//! Invariants:
//! - A stream reads through the same scoped `query_events` as a listing, so it shows a client
//!   only its own events.
//! - It is woken by the store's commit notices (on PostgreSQL, every node's commits, through
//!   `LISTEN`), which carry seq ranges, never events; it then reads what it has not sent, in
//!   seq order, a page at a time. A notice it missed (lagged) only makes it read sooner.
//! - It subscribes to the notices before it reads where to start, so no commit falls between.
//! - At most `MAX_STREAMS` streams per node; each ends when the server stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use super::AppState;
use super::extract::Auth;
use super::query_params::{parse_list_params, parse_pairs};
use crate::domain::FieldError;
use crate::domain::access::Scope;
use crate::domain::time::truncate_for_message;
use crate::error::ApiError;
use crate::store::{CommittedRange, EventQuery, Order, Store};

/// Streams open at once on one node.
pub const MAX_STREAMS: usize = 1024;
/// Events read per store query.
const PAGE: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stream", get(open))
}

/// The node's stream slots and the signal that ends every stream when the server stops.
#[derive(Clone)]
pub struct Streams {
    slots: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
}

impl Streams {
    pub fn new(stopping: watch::Receiver<bool>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_STREAMS)),
            stopping,
        }
    }

    /// A place for one more live connection (a stream or a metrics socket), held while it is
    /// open; `503` when the node serves `MAX_STREAMS` already.
    pub fn take_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            let mut e = ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!(
                    "this node already serves {MAX_STREAMS} live connections; retry later or on another node"
                ),
            );
            e.retry_after_secs = Some(5);
            e
        })
    }

    /// Changes to `true` when the server stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.clone()
    }

    /// How many streams are open on this node.
    pub fn open(&self) -> usize {
        MAX_STREAMS - self.slots.available_permits()
    }
}

/// What one open stream holds between messages.
struct Cursor {
    store: Arc<dyn Store>,
    query: EventQuery,
    commits: broadcast::Receiver<CommittedRange>,
    stopping: watch::Receiver<bool>,
    /// The last seq sent (or the start).
    last: i64,
    /// Read, not yet sent.
    ready: VecDeque<Event>,
    /// Whether the store may hold matching events after `last`.
    behind: bool,
    /// Ends the stream once `ready` is sent (a read failed).
    done: bool,
    _slot: OwnedSemaphorePermit,
}

impl Cursor {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            if self.behind {
                let mut query = self.query.clone();
                query.after_seq = Some(self.last);
                match self.store.query_events(query).await {
                    Ok(page) => {
                        self.behind = page.events.len() == PAGE;
                        for event in &page.events {
                            self.last = self.last.max(event.seq);
                            let data = serde_json::to_string(event).unwrap_or_default();
                            self.ready
                                .push_back(Event::default().id(event.seq.to_string()).data(data));
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream read failed; closing it");
                        let error = Event::default()
                            .event("error")
                            .data(r#"{"error":"unavailable","message":"reading events failed; reconnect with Last-Event-ID"}"#);
                        self.done = true;
                        return Some((Ok(error), self));
                    }
                }
            }
            if *self.stopping.borrow() {
                return None;
            }
            tokio::select! {
                heard = self.commits.recv() => match heard {
                    Ok(range) => self.behind = range.last > self.last,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.behind = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.stopping.changed() => return None,
            }
        }
    }
}

async fn open(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let mut pairs = parse_pairs(raw.as_deref())?;
    let mut after = None;
    let mut errors = Vec::new();
    pairs.retain(|(name, value)| match name.as_str() {
        "after" => {
            match value.parse::<i64>() {
                Ok(seq) if seq >= 0 => after = Some(seq),
                _ => errors.push(FieldError::new(
                    "after",
                    "must be an event seq (a whole number, 0 or more)",
                )),
            }
            false
        }
        "limit" | "order" | "cursor" => {
            errors.push(FieldError::new(
                name.clone(),
                "is not used by a stream; it sends every matching event in seq order",
            ));
            false
        }
        _ => true,
    });
    for (name, _) in pairs.iter_mut() {
        if name == "pattern" {
            *name = String::from("event_type");
        }
    }
    if let Some(id) = headers.get("last-event-id") {
        match id.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
            Some(seq) if seq >= 0 => after = after.or(Some(seq)),
            _ => errors.push(FieldError::new(
                "Last-Event-ID",
                format!(
                    "must be the id of a message this stream sent (an event seq), not '{}'",
                    truncate_for_message(id.to_str().unwrap_or("?"))
                ),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let params = parse_list_params(&pairs)?;
    let mut query = params.query;
    query.client_id = principal.read_scope(params.requested_client)?;
    query.order = Order::Asc;
    query.limit = PAGE;
    let slot = state.streams.take_slot()?;
    // Notices first, then the starting point: a commit in between is heard, not lost.
    let commits = state.store.commits();
    let last = match after {
        Some(seq) => seq,
        None => newest_seq(state.store.as_ref(), &query).await?,
    };
    let cursor = Cursor {
        store: state.store.clone(),
        query,
        commits,
        stopping: state.streams.stopping.clone(),
        last,
        ready: VecDeque::new(),
        behind: after.is_some(),
        done: false,
        _slot: slot,
    };
    let events = stream::unfold(cursor, Cursor::next);
    Ok(sse(events).into_response())
}

fn sse(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> impl IntoResponse {
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The seq of the newest event the query's scope holds (0 if none): a stream without a resume
/// point starts after it.
async fn newest_seq(store: &dyn Store, query: &EventQuery) -> Result<i64, ApiError> {
    let newest = EventQuery {
        client_id: query.client_id.clone(),
        order: Order::Desc,
        limit: 1,
        ..Default::default()
    };
    Ok(store
        .query_events(newest)
        .await?
        .events
        .first()
        .map_or(0, |e| e.seq))
}
