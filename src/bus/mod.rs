//! The event bus's delivery side: the worker that sends queued deliveries to webhooks, signs
//! them (`signing.rs`), goes out only through the guarded client (`client.rs`), and records
//! every attempt (a delivery's new status and an `API_CALL_MADE` integration log row).
//!
//! Invariants:
//! - Delivery is at least once: a delivery is claimed with a lease before its call and
//!   finished after it; one whose sender died is claimed again when its lease runs out.
//! - The body is built at send time from the stored event, so a delivery holds no copy of it;
//!   every attempt of one delivery carries the same `webhook-id`.
//! - A non-2xx answer or a failed call is retried after an exponential backoff with jitter
//!   (longer if the receiver's `Retry-After` says so) until `max_retries` retries are spent; then
//!   the delivery is `FAILED` (the dead-letter queue). `410 Gone` turns the subscription off.
//! - At most `concurrency` calls are in flight per node; a slow receiver holds only its own
//!   calls, never the claim loop.
//! - A claim is a write (on SQLite, a job on the writer thread), so an idle worker claims again
//!   only when a commit queued webhook deliveries (`CommittedRange::pushes`, from any node on
//!   PostgreSQL) or every `poll` (retries falling due, replays): woken by every commit, it had
//!   put a claim transaction between every two groups, halving single-event throughput.

pub mod client;
pub mod inbound;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::domain::Timestamp;
use crate::domain::bus::{
    AttemptOutcome, ClaimedDelivery, FinishedAttempt, NewIntegrationLog, Operation, StoredDelivery,
};
use crate::store::Store;
use crate::store::bus::ClaimFor;

use self::client::{Answer, WebhookClient};

/// Longest backoff between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Longest wait a receiver's `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Request body bytes kept in the integration log.
const LOGGED_BODY_BYTES: usize = 2048;
/// Finished attempts are recorded at least this often, or once this many are waiting.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 64;

#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub allow_private: bool,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub concurrency: usize,
    /// How often due retries are looked for when no new event arrives.
    pub poll: Duration,
}

/// The running worker; `stop` ends it, leaving unfinished calls to be claimed again.
pub struct DeliveryWorker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl DeliveryWorker {
    pub fn start(store: Arc<dyn Store>, config: DeliveryConfig) -> anyhow::Result<Self> {
        let client = WebhookClient::new(config.allow_private, config.timeout)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(store, client, config, stopped));
        Ok(Self { stop, task })
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(
    store: Arc<dyn Store>,
    client: WebhookClient,
    config: DeliveryConfig,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut commits = store.commits();
    let mut inflight: JoinSet<FinishedAttempt> = JoinSet::new();
    let mut finished: Vec<FinishedAttempt> = Vec::new();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the last claim found nothing due: then wait for new events or the poll.
    let mut idle_until: Option<tokio::time::Instant> = None;
    loop {
        if idle_until.is_none() && inflight.len() < config.concurrency {
            let room = config.concurrency - inflight.len();
            let now = Timestamp::now();
            let lease = lease_end(now, config.timeout);
            match store
                .claim_deliveries(ClaimFor::Push, now, lease, room)
                .await
            {
                Ok(claimed) => {
                    if claimed.len() < room {
                        idle_until = Some(tokio::time::Instant::now() + config.poll);
                    }
                    for delivery in claimed {
                        let client = client.clone();
                        let retry_base = config.retry_base;
                        inflight.spawn(async move { attempt(&client, delivery, retry_base).await });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed; will retry");
                    idle_until = Some(tokio::time::Instant::now() + config.poll);
                }
            }
        }
        let wake = idle_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = &mut stopped => break,
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                if let Ok(attempt) = done {
                    finished.push(attempt);
                }
                if finished.len() >= FLUSH_AT {
                    record(store.as_ref(), &mut finished).await;
                }
            }
            _ = flush.tick() => record(store.as_ref(), &mut finished).await,
            heard = commits.recv(), if idle_until.is_some() => {
                // Only a commit that queued webhook deliveries is worth a claim (a write): the
                // rest wait for the poll. A lagging receiver may have missed one, so it claims.
                match heard {
                    Ok(range) if range.pushes => idle_until = None,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => idle_until = None,
                    Ok(_) | Err(_) => {}
                }
            }
            _ = tokio::time::sleep_until(wake), if idle_until.is_some() => idle_until = None,
        }
    }
    // Calls still in flight are dropped: their leases run out and they are claimed again.
    inflight.abort_all();
    record(store.as_ref(), &mut finished).await;
}

/// The end of a claim's lease: the call's time limit and a margin to record its result.
fn lease_end(now: Timestamp, timeout: Duration) -> Timestamp {
    now.plus(timeout + Duration::from_secs(30))
}

async fn record(store: &dyn Store, finished: &mut Vec<FinishedAttempt>) {
    if finished.is_empty() {
        return;
    }
    let batch = std::mem::take(finished);
    let count = batch.len();
    if let Err(e) = store.finish_attempts(batch).await {
        // The deliveries stay PROCESSING until their leases run out, then go again.
        tracing::warn!(error = %e, count, "recording webhook attempts failed; they will be retried");
    }
}

/// The wait before retry number `retry + 1`: `base · 2^retry`, at most `MAX_BACKOFF`, of which a
/// random half to all (full jitter would let some retries come at once).
pub fn backoff(base: Duration, retry: i32, retry_after: Option<Duration>) -> Duration {
    let exp = base
        .saturating_mul(1u32 << retry.clamp(0, 20))
        .min(MAX_BACKOFF);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let jittered = exp.mul_f64(0.5 + f64::from(byte[0]) / 510.0);
    match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

/// What a failed attempt of `delivery` leads to: another after the backoff while retries are
/// left, else the dead-letter queue. Pushed and pulled deliveries alike.
pub fn after_failure(
    delivery: &StoredDelivery,
    retry_base: Duration,
    retry_after: Option<Duration>,
) -> AttemptOutcome {
    if delivery.retry_count < delivery.max_retries {
        let wait = backoff(retry_base, delivery.retry_count, retry_after);
        AttemptOutcome::RetryAt(Timestamp::now().plus(wait))
    } else {
        AttemptOutcome::Failed
    }
}

/// One call of one delivery, and what it came to.
async fn attempt(
    client: &WebhookClient,
    claimed: ClaimedDelivery,
    retry_base: Duration,
) -> FinishedAttempt {
    let ClaimedDelivery {
        delivery,
        subscription,
        event,
    } = claimed;
    let started = std::time::Instant::now();
    let at = Timestamp::now();
    let message_id = format!("msg_{}", delivery.message_id.simple());
    let url = subscription.webhook_url.clone().unwrap_or_default();
    let mut log = NewIntegrationLog {
        client_id: delivery.client_id.clone(),
        integration_name: subscription.subscriber_name.clone(),
        operation: Operation::ApiCallMade,
        external_id: Some(message_id.clone()),
        request_data: None,
        response_data: None,
        http_status_code: None,
        success: false,
        error_message: None,
        occurred_at: at,
        delivery_id: Some(delivery.id),
        duration_ms: None,
    };
    let finish = |outcome, status_code, reason: Option<String>, log| FinishedAttempt {
        delivery_id: delivery.id,
        subscription_id: subscription.id,
        outcome,
        status_code,
        failure_reason: reason,
        at,
        log: Some(log),
    };
    let Some(event) = event else {
        let reason = String::from("the event is no longer stored (event retention removed it)");
        log.error_message = Some(reason.clone());
        return finish(AttemptOutcome::Failed, None, Some(reason), log);
    };
    let body = json!({
        "type": event.event_type,
        "timestamp": at.to_rfc3339(),
        "data": event,
    })
    .to_string()
    .into_bytes();
    let timestamp = at.as_micros().div_euclid(1_000_000);
    let signature = signing::sign(
        &subscription.signing_secrets(at),
        &message_id,
        timestamp,
        &body,
    );
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", message_id.as_str()),
        ("webhook-timestamp", &timestamp.to_string()),
        ("webhook-signature", &signature),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    log.request_data = Some(
        json!({
            "url": url,
            "webhook_id": message_id,
            "attempt": delivery.retry_count + 1,
            "body_bytes": body.len(),
            "body": preview(&body),
        })
        .to_string(),
    );
    let answer = client.post(&url, headers, body).await;
    log.duration_ms = Some(started.elapsed().as_millis() as i64);
    let retry_or_fail = |retry_after| after_failure(&delivery, retry_base, retry_after);
    match answer {
        Ok(Answer {
            status,
            body,
            retry_after,
        }) => {
            log.http_status_code = Some(i32::from(status));
            log.response_data = Some(json!({"status": status, "body": body}).to_string());
            let (outcome, reason) = match status {
                200..=299 => (AttemptOutcome::Delivered, None),
                410 => (
                    AttemptOutcome::Gone,
                    Some(String::from(crate::domain::bus::GONE_REASON)),
                ),
                _ => (
                    retry_or_fail(retry_after),
                    Some(format!("the receiver answered {status}")),
                ),
            };
            log.success = matches!(outcome, AttemptOutcome::Delivered);
            log.error_message = reason.clone();
            finish(outcome, Some(i32::from(status)), reason, log)
        }
        Err(reason) => {
            log.error_message = Some(reason.clone());
            // A refused address will be refused again: no retries.
            let outcome = if reason.starts_with("refused") {
                AttemptOutcome::Failed
            } else {
                retry_or_fail(None)
            };
            finish(outcome, None, Some(reason), log)
        }
    }
}

/// The start of a body as text, for the integration log.
fn preview(body: &[u8]) -> String {
    let end = body.len().min(LOGGED_BODY_BYTES);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let base = Duration::from_secs(10);
        for retry in 0..4 {
            let d = backoff(base, retry, None);
            let full = base * (1 << retry);
            assert!(d >= full / 2 && d <= full, "{retry}: {d:?}");
        }
        assert!(backoff(base, 30, None) <= MAX_BACKOFF);
        assert!(backoff(base, 0, Some(Duration::from_secs(600))) >= Duration::from_secs(600));
        assert!(backoff(base, 0, Some(Duration::from_secs(10 * 86400))) <= MAX_RETRY_AFTER);
    }
}
