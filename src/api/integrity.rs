//! Tamper evidence over HTTP (`integrity`):
//! - `GET /v1/integrity/tree`: the tree's current size and head (not yet signed);
//! - `GET /v1/integrity/checkpoints` (newest first, `before`, `limit`),
//!   `GET /v1/integrity/checkpoints/latest`: signed checkpoints;
//! - `POST /v1/integrity/checkpoints` (admin): add every committed event and sign now;
//! - `GET /v1/events/{id}/proof?tree_size=N`: the event's inclusion proof, with its canonical
//!   form so the caller can hash the leaf itself;
//! - `GET /v1/integrity/consistency?first=M&second=N`: the proof that tree `N` extends tree `M`.
//!
//! Reads need `events:read`. The tree is one for the whole store, so its size and heads (not
//! the events) are the same for every client; an inclusion proof is given only for the
//! caller's own events (another client's is a 404, as everywhere).

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::extract::Auth;
use super::query_params::{invalid_if_any, known_params, only_known_params};
use crate::domain::FieldError;
use crate::domain::access::Scope;
use crate::error::ApiError;
use crate::integrity::canonical::canonical_event;
use crate::integrity::checkpoint::Checkpoint;
use crate::integrity::keeper::{self, KeeperError};
use crate::integrity::merkle::{self, NodeId};
use crate::store::integrity::TreeState;

/// Most checkpoints one listing returns.
const MAX_CHECKPOINTS: usize = 100;

pub fn router() -> Router<AppState> {
    let routes = || {
        Router::new()
            .route("/integrity/tree", get(tree))
            .route("/integrity/checkpoints", get(list).post(sign_now))
            .route("/integrity/checkpoints/latest", get(latest))
            .route("/integrity/consistency", get(consistency))
            .route("/events/{id}/proof", get(inclusion))
    };
    Router::new()
        .nest("/v1", routes())
        .nest("/api/v1", routes())
}

impl From<KeeperError> for ApiError {
    fn from(e: KeeperError) -> Self {
        ApiError::from_store(e.into())
    }
}

fn hex_list(hashes: &[merkle::Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn view(checkpoint: Option<Checkpoint>) -> Value {
    checkpoint.map_or(Value::Null, |c| json!(c.view()))
}

/// A tree size parameter: a whole number from `min` to the tree's size.
fn tree_size(value: &str, min: u64, state: &TreeState) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n >= min && n <= state.size => Ok(n),
        _ if state.size < min => Err(format!(
            "the tree holds {} events, fewer than the {min} this needs",
            state.size
        )),
        _ => Err(format!(
            "must be a whole number from {min} to {} (the tree's size)",
            state.size
        )),
    }
}

/// The size proofs are given for when the caller names none: the newest checkpoint's, if it
/// is at least `min`, else the tree's.
async fn default_size(state: &AppState, min: u64, tree: &TreeState) -> Result<u64, ApiError> {
    let latest = state.store.checkpoints(None, 1).await?;
    Ok(match latest.first() {
        Some(c) if c.tree_size >= min => c.tree_size,
        _ => tree.size,
    })
}

async fn tree(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::EventsRead)?;
    let tree = state.store.tree_state().await?;
    let head = keeper::head(state.store.as_ref(), tree).await?;
    Ok(Json(json!({
        "tree_size": tree.size,
        "root_hash": hex::encode(head.root),
        "first_seq": tree.seq_of(0),
        "last_seq": tree.seq_of(tree.size) - 1,
    })))
}

async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::EventsRead)?;
    let (mut before, mut limit) = (None, 20);
    only_known_params(
        raw.as_deref(),
        &["before", "limit"],
        |name, value| match name {
            "before" => value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| before = Some(n))
                .ok_or_else(|| String::from("must be a tree size, a whole number from 1")),
            _ => value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CHECKPOINTS).contains(n))
                .map(|n| limit = n)
                .ok_or_else(|| format!("must be a whole number from 1 to {MAX_CHECKPOINTS}")),
        },
    )?;
    let found = state.store.checkpoints(before, limit).await?;
    Ok(Json(Value::Array(
        found.into_iter().map(|c| json!(c.view())).collect(),
    )))
}

async fn latest(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::EventsRead)?;
    match state.store.checkpoints(None, 1).await?.pop() {
        Some(c) => Ok(Json(json!(c.view()))),
        None => Err(ApiError::not_found(
            "no checkpoint is signed yet: one is signed within ANNALS_CHECKPOINT_INTERVAL_SECS \
             of the first event, or at once by POST /v1/integrity/checkpoints",
        )),
    }
}

async fn sign_now(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> Result<Response, ApiError> {
    principal.require(Scope::Admin)?;
    match keeper::checkpoint(state.store.as_ref(), &state.signer).await? {
        None => Err(ApiError::conflict(
            "the store holds no events yet: there is no tree to sign",
        )),
        Some((checkpoint, signed)) => {
            let status = if signed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(json!(checkpoint.view()))).into_response())
        }
    }
}

async fn inclusion(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let event = super::events::fetch_event(&state, &principal, &id, |_| true).await?;
    let mut tree = state.store.tree_state().await?;
    let in_tree = |tree: &TreeState| tree.index_of(event.seq).filter(|i| *i < tree.size);
    if in_tree(&tree).is_none() {
        // Committed, not hashed yet (the keeper runs every second): add it now.
        tree = keeper::catch_up(state.store.as_ref()).await?;
    }
    let Some(index) = in_tree(&tree) else {
        return Err(ApiError::conflict(format!(
            "event seq {} is not in the Merkle tree (it starts at seq {})",
            event.seq,
            tree.seq_of(0)
        )));
    };
    let mut size = None;
    only_known_params(raw.as_deref(), &["tree_size"], |_, value| {
        tree_size(value, index + 1, &tree).map(|n| size = Some(n))
    })?;
    let size = match size {
        Some(n) => n,
        None => default_size(&state, index + 1, &tree).await?,
    };
    let (leaf, path, root) = keeper::with_nodes(state.store.as_ref(), |nodes| {
        (
            nodes.node(NodeId { level: 0, index }),
            merkle::inclusion_proof(nodes, index, size),
            merkle::root(nodes, size),
        )
    })
    .await?;
    let canonical = canonical_event(&event);
    let checkpoint = state.store.checkpoint_at(size).await?;
    Ok(Json(json!({
        "id": event.id,
        "seq": event.seq,
        "leaf_index": index,
        "tree_size": size,
        "leaf_hash": hex::encode(leaf),
        "leaf_matches_event": merkle::leaf_hash(canonical.as_bytes()) == leaf,
        "canonical_event": canonical,
        "audit_path": hex_list(&path),
        "root_hash": hex::encode(root),
        "checkpoint": view(checkpoint),
    })))
}

async fn consistency(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    principal.require(Scope::EventsRead)?;
    let tree = state.store.tree_state().await?;
    let (mut first, mut second) = (None, None);
    let mut errors = known_params(raw.as_deref(), &["first", "second"], |name, value| {
        let n = tree_size(value, 1, &tree)?;
        if name == "first" {
            first = Some(n);
        } else {
            second = Some(n);
        }
        Ok(())
    })?;
    if first.is_none() && !errors.iter().any(|e| e.field == "first") {
        errors.push(FieldError::new("first", "is required: the older tree size"));
    }
    invalid_if_any(errors)?;
    let first = first.expect("checked above");
    let second = match second {
        Some(n) => n,
        None => default_size(&state, first, &tree).await?,
    };
    if first > second {
        return Err(ApiError::invalid(
            "first",
            format!("must not be larger than second ({second})"),
        ));
    }
    let (proof, first_root, second_root) = keeper::with_nodes(state.store.as_ref(), |nodes| {
        (
            merkle::consistency_proof(nodes, first, second),
            merkle::root(nodes, first),
            merkle::root(nodes, second),
        )
    })
    .await?;
    Ok(Json(json!({
        "first": first,
        "second": second,
        "first_root_hash": hex::encode(first_root),
        "second_root_hash": hex::encode(second_root),
        "proof": hex_list(&proof),
        "first_checkpoint": view(state.store.checkpoint_at(first).await?),
        "second_checkpoint": view(state.store.checkpoint_at(second).await?),
    })))
}
