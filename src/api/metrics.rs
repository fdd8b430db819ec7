//! `GET /metrics`: the node's metrics in Prometheus' text format, for admin keys (a scraper
//! sends one as `Authorization: Bearer …`). Counters come from `Telemetry`; the queue, stream,
//! delivery, store and Merkle tree gauges are read at each scrape.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::extract::Auth;
use crate::domain::access::Scope;
use crate::error::ApiError;
use crate::store::copy::CopyTable;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    let g = &state.telemetry.gauges;
    let queue = state.store.write_queue();
    g.write_queue_jobs.set(queue.jobs as i64);
    g.write_queue_bytes.set(queue.bytes as i64);
    if let Some(audit) = &state.audit {
        let (queued, dropped) = audit.depth();
        g.audit_queue_records.set(queued as i64);
        g.audit_records_dropped.set(dropped);
    }
    g.streams_open.set(state.streams.open() as i64);
    g.store_up
        .set(i64::from(state.store.health().await.is_ok()));
    // Deliveries are counted in the store; a store that can't answer leaves the last figures.
    if let Ok(d) = state.store.delivery_counts(None).await {
        for (status, n) in [
            ("pending", d.pending),
            ("processing", d.processing),
            ("failed", d.failed),
        ] {
            g.deliveries.get_or_create(&vec![("status", status)]).set(n);
        }
    }
    if let (Ok(tree), Ok(newest)) = (
        state.store.tree_state().await,
        state.store.copy_position(CopyTable::Events).await,
    ) {
        g.merkle_tree_size.set(tree.size as i64);
        let hashed_through = tree.seq_of(tree.size) - 1;
        g.merkle_events_behind.set((newest - hashed_through).max(0));
    }
    if let Ok(latest) = state.store.checkpoints(None, 1).await {
        g.merkle_checkpoint_size
            .set(latest.first().map_or(0, |c| c.tree_size as i64));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.telemetry.render(),
    )
        .into_response())
}
