//! `GET /v1/ws/metrics` (and `/api/v1/ws/metrics`), seed 002's live metrics over a WebSocket.
//!
//! The client sends `{"type": "subscribe", "client_id": "…"}` and then gets a `metrics` message
//! every `interval_secs` (default 1, 1–60; see `analytics::live_metrics`). A key comes in the
//! upgrade request's `X-API-Key` / `Authorization` header or, for browsers (which can't set
//! headers on a WebSocket), as `api_key` in the subscribe message.
//!
//! Invariants:
//! - A socket answers nothing but errors until its key has passed the same checks as the access
//!   layer (`access::Gate`: flood refusal, failure counting, rate limit); a refused key closes
//!   it. A socket that has not subscribed within `SUBSCRIBE_WITHIN` is closed.
//! - The key is checked again every `RECHECK`, so a deleted or disabled key stops receiving.
//! - Sockets share the node's live-connection slots with `/v1/stream`, and close when the
//!   server stops. Client messages are at most `MAX_MESSAGE_BYTES`.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::AppState;
use super::access::Gate;
use super::extract::presented_key;
use crate::auth::Principal;
use crate::domain::ClientId;
use crate::domain::access::Scope;
use crate::error::ApiError;

const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(10);
const RECHECK: Duration = Duration::from_secs(30);
const MAX_MESSAGE_BYTES: usize = 4096;
const MAX_INTERVAL_SECS: u64 = 60;
/// WebSocket close code 1008: policy violation (a refused key).
const POLICY: u16 = 1008;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/ws/metrics", get(upgrade))
        .route("/api/v1/ws/metrics", get(upgrade))
}

async fn upgrade(State(state): State<AppState>, request: Request) -> Response {
    let gate = Gate::of(&state, &request);
    let header_key = presented_key(request.headers()).map(str::to_owned);
    let (mut parts, _) = request.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "websocket_required",
                format!("this address speaks WebSocket only: {rejection}"),
            )
            .into_response();
        }
    };
    // A key in the headers is checked before the upgrade: a refusal is a plain HTTP answer.
    let principal = match &header_key {
        Some(key) => match gate.admit(Some(key)).await {
            Ok(principal) => Some(principal),
            Err(refused) => return refused,
        },
        None => None,
    };
    let slot = match state.streams.take_slot() {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let session = Session {
        state,
        gate,
        key: header_key,
        principal,
        subscribed: None,
        _slot: slot,
    };
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session.run(socket))
}

/// What a subscription asked for.
struct Subscribed {
    client: Option<String>,
    every: Duration,
}

struct Session {
    state: AppState,
    gate: Gate,
    key: Option<String>,
    principal: Option<Principal>,
    subscribed: Option<Subscribed>,
    _slot: OwnedSemaphorePermit,
}

/// How a client message left the session.
enum Next {
    Continue,
    Close(u16, String),
}

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        let mut stopping = self.state.streams.stopping();
        let deadline = tokio::time::sleep(SUBSCRIBE_WITHIN);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.reset();
        let outcome = loop {
            tokio::select! {
                message = socket.recv() => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    };
                    match self.handle(&text).await {
                        Ok(Next::Continue) => {}
                        Ok(Next::Close(code, reason)) => break Some((code, reason)),
                        Err(error) => {
                            if send(&mut socket, &error).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    if let Some(s) = &self.subscribed {
                        // A (re)subscription answers at once, then every interval.
                        tick = tokio::time::interval(s.every);
                    }
                }
                _ = tick.tick(), if self.subscribed.is_some() => {
                    let message = self.snapshot().await;
                    if send(&mut socket, &message).await.is_err() {
                        return;
                    }
                }
                _ = recheck.tick(), if self.principal.is_some() => {
                    if let Err(refused) = self.state.auth.authenticate(self.key.as_deref()).await {
                        break Some((POLICY, refused.message.clone()));
                    }
                }
                () = &mut deadline, if self.subscribed.is_none() => {
                    break Some((POLICY, String::from("no subscribe message within 10 s")));
                }
                _ = stopping.changed() => break Some((1001, String::from("the server is stopping"))),
            }
        };
        if let Some((code, reason)) = outcome {
            let reason: String = reason.chars().take(100).collect();
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                })))
                .await;
        }
    }

    /// One client message. An `Err` is sent back and the socket stays open; a refused key
    /// closes it.
    async fn handle(&mut self, text: &str) -> Result<Next, Value> {
        let message: Value = serde_json::from_str(text).map_err(|e| {
            error_json(&ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("a message must be a JSON object: {e}"),
            ))
        })?;
        match message.get("type").and_then(Value::as_str) {
            Some("subscribe") => {}
            Some("unsubscribe") => {
                self.subscribed = None;
                return Ok(Next::Continue);
            }
            _ => {
                return Err(error_json(&ApiError::invalid(
                    "type",
                    "must be subscribe or unsubscribe",
                )));
            }
        }
        if self.principal.is_none() {
            let key = message.get("api_key").and_then(Value::as_str);
            if key.is_none() {
                return Err(error_json(&ApiError::invalid(
                    "api_key",
                    "send your key in the upgrade's X-API-Key header or as api_key here",
                )));
            }
            match self.gate.admit(key).await {
                Ok(principal) => {
                    self.principal = Some(principal);
                    self.key = key.map(str::to_owned);
                }
                Err(refused) => {
                    let body = response_json(refused).await;
                    let reason = body["message"].as_str().unwrap_or("refused").to_string();
                    return Ok(Next::Close(POLICY, reason));
                }
            }
        }
        let principal = self.principal.as_ref().expect("admitted above");
        principal
            .require(Scope::EventsRead)
            .map_err(|e| error_json(&e))?;
        let requested = match message.get("client_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) => Some(
                ClientId::parse(c).map_err(|m| error_json(&ApiError::invalid("client_id", m)))?,
            ),
            Some(_) => {
                return Err(error_json(&ApiError::invalid(
                    "client_id",
                    "must be a string",
                )));
            }
        };
        let client = principal
            .read_scope(requested)
            .map_err(|e| error_json(&e))?
            .map(|c| c.to_string());
        let every = match message.get("interval_secs") {
            None | Some(Value::Null) => 1,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_INTERVAL_SECS).contains(n))
                .ok_or_else(|| {
                    error_json(&ApiError::invalid(
                        "interval_secs",
                        format!("must be a whole number of seconds from 1 to {MAX_INTERVAL_SECS}"),
                    ))
                })?,
        };
        self.subscribed = Some(Subscribed {
            client,
            every: Duration::from_secs(every),
        });
        Ok(Next::Continue)
    }

    async fn snapshot(&self) -> Value {
        let Some(s) = &self.subscribed else {
            return Value::Null;
        };
        let admin = self.principal.as_ref().is_some_and(Principal::is_admin);
        match super::analytics::live_metrics(&self.state, s.client.clone(), admin).await {
            Ok(metrics) => metrics,
            Err(e) => error_json(&e),
        }
    }
}

async fn send(socket: &mut WebSocket, message: &Value) -> Result<(), axum::Error> {
    socket
        .send(Message::Text(Utf8Bytes::from(message.to_string())))
        .await
}

/// An error as a socket message: the JSON body the same error has over HTTP, with its type.
fn error_json(error: &ApiError) -> Value {
    let mut body = error.body();
    body["type"] = json!("error");
    body["status"] = json!(error.status.as_u16());
    body
}

/// A refusal's JSON body (the access checks answer with whole responses).
async fn response_json(response: Response) -> Value {
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let mut body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
    body["type"] = json!("error");
    body["status"] = json!(status);
    body
}
