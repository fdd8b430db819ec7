//! The event bus's domain (seed 004): subscriptions (`EVENT_SUBSCRIPTION`), their deliveries
//! (`EVENT_QUEUE`) and the integration log (`INTEGRATION_LOG`), plus `SubscriptionIndex`, the
//! pattern index a writer matches each new event against.
//!
//! Invariants:
//! - A subscription delivers either to a `webhook_url` (pushed by the delivery worker) or to a
//!   `callback_method` (pulled by its owner), never both, never neither.
//! - A subscription with an owner (`client_id`) matches only that client's events; one without
//!   (made by an admin) matches every client's.
//! - A delivery references its event by `seq`; the body is built when it is sent.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::page::IdPage;
use super::time::Timestamp;
use super::topic::TopicPattern;

/// Longest `subscriber_name`, `topic_pattern`, `callback_method` (seed 004's columns).
pub const MAX_NAME_LEN: usize = 100;
/// Longest `webhook_url` (seed 004's column).
pub const MAX_URL_LEN: usize = 500;
/// Largest `subscription_config`, serialized.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;
/// Most retries a subscription may ask for.
pub const MAX_RETRIES: i32 = 20;
/// Retries when a subscription names none (seed 004's default).
pub const DEFAULT_MAX_RETRIES: i32 = 3;
/// Most subscriptions one owner may hold.
pub const MAX_SUBSCRIPTIONS_PER_OWNER: i64 = 1000;

/// A subscription as stored.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: Uuid,
    /// `None`: every client's events (only an admin makes these).
    pub client_id: Option<String>,
    pub subscriber_name: String,
    pub topic_pattern: TopicPattern,
    pub webhook_url: Option<String>,
    pub callback_method: Option<String>,
    pub is_active: bool,
    /// Serialized JSON object, if any.
    pub config: Option<String>,
    pub max_retries: i32,
    /// The signing secret, `whsec_<base64>`.
    pub secret: String,
    /// The secret before the last rotation, still signed with until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<Timestamp>,
    /// Why Annals turned the subscription off (a `410 Gone`), if it did.
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Subscription {
    /// Whether its deliveries wait to be pulled rather than pushed.
    pub fn is_pull(&self) -> bool {
        self.webhook_url.is_none()
    }

    /// The secrets a delivery sent at `now` is signed with: the current one, and the previous
    /// one while it is still honoured after a rotation.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && now < until
        {
            secrets.push(previous.as_str());
        }
        secrets
    }

    /// Its JSON form; the secret only when `with_secret` (on creation and rotation).
    pub fn view(&self, with_secret: bool) -> Value {
        let mut view = json!({
            "id": self.id,
            "client_id": self.client_id,
            "subscriber_name": self.subscriber_name,
            "topic_pattern": self.topic_pattern.as_str(),
            "webhook_url": self.webhook_url,
            "callback_method": self.callback_method,
            "is_active": self.is_active,
            "subscription_config": self.config.as_deref().map(parse_stored_json),
            "max_retries": self.max_retries,
            "disabled_reason": self.disabled_reason,
            "created_at": self.created_at.to_rfc3339(),
            "updated_at": self.updated_at.to_rfc3339(),
        });
        if with_secret {
            view["secret"] = Value::String(self.secret.clone());
        }
        view
    }
}

fn parse_stored_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A new signing secret: `whsec_` and 32 random bytes in standard base64.
pub fn new_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A matching subscription, as a writer needs it to queue a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub subscription_id: Uuid,
    pub max_retries: i32,
    pub pull: bool,
    /// The owner is the event's client (`false`: an all-clients subscription).
    pub owned: bool,
}

/// The active subscriptions, indexed by owner and then by pattern segment, so matching an
/// event walks the segments of its type instead of testing every subscription.
#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    by_owner: HashMap<Option<String>, PatternTrie>,
    len: usize,
}

#[derive(Debug, Default)]
struct PatternTrie {
    here: Vec<Target>,
    literal: HashMap<String, PatternTrie>,
    one: Option<Box<PatternTrie>>,
    any: Option<Box<PatternTrie>>,
}

impl PatternTrie {
    fn insert(&mut self, segments: &[&str], target: Target) {
        match segments.split_first() {
            None => self.here.push(target),
            Some((&"*", rest)) => self.one.get_or_insert_default().insert(rest, target),
            Some((&"#", rest)) => self.any.get_or_insert_default().insert(rest, target),
            Some((literal, rest)) => self
                .literal
                .entry((*literal).to_string())
                .or_default()
                .insert(rest, target),
        }
    }

    fn collect(&self, parts: &[&str], out: &mut Vec<Target>) {
        if let Some(any) = &self.any {
            // `#` absorbs zero or more segments.
            for skip in 0..=parts.len() {
                any.collect(&parts[skip..], out);
            }
        }
        match parts.split_first() {
            None => out.extend_from_slice(&self.here),
            Some((part, rest)) => {
                if let Some(next) = self.literal.get(*part) {
                    next.collect(rest, out);
                }
                if let Some(one) = &self.one {
                    one.collect(rest, out);
                }
            }
        }
    }
}

impl SubscriptionIndex {
    /// The index of `subscriptions`' active ones.
    pub fn new<'a>(subscriptions: impl IntoIterator<Item = &'a Subscription>) -> Self {
        let mut index = Self::default();
        for s in subscriptions.into_iter().filter(|s| s.is_active) {
            let target = Target {
                subscription_id: s.id,
                max_retries: s.max_retries,
                pull: s.is_pull(),
                owned: s.client_id.is_some(),
            };
            let segments: Vec<&str> = s.topic_pattern.as_str().split('.').collect();
            index
                .by_owner
                .entry(s.client_id.clone())
                .or_default()
                .insert(&segments, target);
            index.len += 1;
        }
        index
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The subscriptions an event of `client` and `event_type` goes to, each once.
    pub fn matches(&self, client: &str, event_type: &str) -> Vec<Target> {
        let mut out = Vec::new();
        if self.is_empty() {
            return out;
        }
        let parts: Vec<&str> = event_type.split('.').collect();
        if let Some(trie) = self.by_owner.get(&Some(client.to_string())) {
            trie.collect(&parts, &mut out);
        }
        // Annals' own events (security) reach only all-clients (admin) subscriptions, and those
        // reach every client's events.
        if let Some(trie) = self.by_owner.get(&None) {
            trie.collect(&parts, &mut out);
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|t| t.subscription_id);
            out.dedup_by_key(|t| t.subscription_id);
        }
        out
    }
}

/// A delivery a writer queues for a new event (or a replay for a stored one).
#[derive(Clone, Copy, Debug)]
pub struct NewDelivery<'a> {
    pub message_id: Uuid,
    pub target: Target,
    /// The subscription's owner: the event's client, or `SYSTEM_CLIENT` for an all-clients one.
    pub client_id: &'a str,
    pub event_seq: i64,
    pub event_uuid: Uuid,
    pub topic: &'a str,
}

impl SubscriptionIndex {
    /// Adds to `out` a delivery for each subscription an event matches.
    pub fn queue<'a>(
        &self,
        seq: i64,
        id: Uuid,
        client: &'a str,
        event_type: &'a str,
        out: &mut Vec<NewDelivery<'a>>,
    ) {
        for target in self.matches(client, event_type) {
            out.push(NewDelivery {
                message_id: Uuid::now_v7(),
                target,
                client_id: if target.owned {
                    client
                } else {
                    super::security::SYSTEM_CLIENT
                },
                event_seq: seq,
                event_uuid: id,
                topic: event_type,
            });
        }
    }
}

/// The index a writer reads at each group and subscription changes replace.
pub type SharedIndex = Arc<std::sync::RwLock<Arc<SubscriptionIndex>>>;

/// Where a delivery stands (seed 004's `EVENT_QUEUE.status`). `Failed` is the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| String::from("must be PENDING, PROCESSING, COMPLETED or FAILED"))
    }
}

/// A delivery as stored.
#[derive(Clone, Debug)]
pub struct StoredDelivery {
    pub id: i64,
    /// The webhook's `webhook-id`: the same on every attempt, new for every delivery.
    pub message_id: Uuid,
    pub subscription_id: Uuid,
    /// The subscription's owner (`SYSTEM_CLIENT` for an all-clients subscription).
    pub client_id: String,
    pub event_seq: i64,
    pub event_uuid: Uuid,
    pub topic: String,
    pub status: DeliveryStatus,
    pub retry_count: i32,
    pub max_retries: i32,
    pub next_retry_at: Option<Timestamp>,
    pub failure_reason: Option<String>,
    pub last_status_code: Option<i32>,
    pub created_at: Timestamp,
    pub processed_at: Option<Timestamp>,
}

impl StoredDelivery {
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "message_id": format!("msg_{}", self.message_id.simple()),
            "subscription_id": self.subscription_id,
            "client_id": self.client_id,
            "event_id": self.event_uuid,
            "event_seq": self.event_seq,
            "topic": self.topic,
            "status": self.status.as_str(),
            "retry_count": self.retry_count,
            "max_retries": self.max_retries,
            "next_retry_at": self.next_retry_at.map(Timestamp::to_rfc3339),
            "failure_reason": self.failure_reason,
            "last_status_code": self.last_status_code,
            "created_at": self.created_at.to_rfc3339(),
            "processed_at": self.processed_at.map(Timestamp::to_rfc3339),
        })
    }
}

/// Which deliveries a listing shows.
#[derive(Clone, Debug, Default)]
pub struct DeliveryQuery {
    /// The owner whose deliveries are visible; `None` = all (admin).
    pub client_id: Option<String>,
    pub subscription_id: Option<Uuid>,
    pub status: Option<DeliveryStatus>,
    pub page: IdPage,
}

/// A delivery taken by one sender for one attempt, with what the attempt needs.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub delivery: StoredDelivery,
    pub subscription: Subscription,
    /// `None` when retention removed the event since it was queued.
    pub event: Option<super::StoredEvent>,
}

/// What one attempt came to.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    Delivered,
    /// Try again at this time.
    RetryAt(Timestamp),
    /// No tries left: into the dead-letter queue.
    Failed,
    /// The receiver answered `410 Gone`: the subscription is turned off.
    Gone,
}

/// A finished attempt, to be recorded with its integration log row.
#[derive(Clone, Debug)]
pub struct FinishedAttempt {
    pub delivery_id: i64,
    pub subscription_id: Uuid,
    pub outcome: AttemptOutcome,
    pub status_code: Option<i32>,
    pub failure_reason: Option<String>,
    pub at: Timestamp,
    /// The call's integration log row (none for a pulled delivery's acknowledgement).
    pub log: Option<NewIntegrationLog>,
}

/// The columns a finished attempt sets on its delivery.
#[derive(Clone, Copy, Debug)]
pub struct AttemptUpdate {
    pub status: DeliveryStatus,
    /// 1 when another attempt is due, else 0.
    pub retried: i32,
    pub next_retry_at: Option<Timestamp>,
    pub processed_at: Option<Timestamp>,
}

impl FinishedAttempt {
    pub fn update(&self) -> AttemptUpdate {
        let done = |status| AttemptUpdate {
            status,
            retried: 0,
            next_retry_at: None,
            processed_at: Some(self.at),
        };
        match self.outcome {
            AttemptOutcome::Delivered => done(DeliveryStatus::Completed),
            AttemptOutcome::Failed | AttemptOutcome::Gone => done(DeliveryStatus::Failed),
            AttemptOutcome::RetryAt(at) => AttemptUpdate {
                status: DeliveryStatus::Pending,
                retried: 1,
                next_retry_at: Some(at),
                processed_at: None,
            },
        }
    }
}

/// Why a subscription's waiting deliveries failed when a `410 Gone` turned it off.
pub const GONE_REASON: &str = "the receiver answered 410 Gone; the subscription was turned off";
/// Why a turned-off subscription's waiting deliveries failed.
pub const INACTIVE_REASON: &str = "the subscription was turned off";

/// Seed 004's `INTEGRATION_LOG.operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    WebhookReceived,
    ApiCallMade,
    DataSync,
}

impl Operation {
    pub const ALL: [Self; 3] = [Self::WebhookReceived, Self::ApiCallMade, Self::DataSync];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebhookReceived => "WEBHOOK_RECEIVED",
            Self::ApiCallMade => "API_CALL_MADE",
            Self::DataSync => "DATA_SYNC",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == text)
            .ok_or_else(|| String::from("must be WEBHOOK_RECEIVED, API_CALL_MADE or DATA_SYNC"))
    }
}

/// An integration log row to write.
#[derive(Clone, Debug)]
pub struct NewIntegrationLog {
    pub client_id: String,
    pub integration_name: String,
    pub operation: Operation,
    pub external_id: Option<String>,
    /// Serialized JSON, if any.
    pub request_data: Option<String>,
    pub response_data: Option<String>,
    pub http_status_code: Option<i32>,
    pub success: bool,
    pub error_message: Option<String>,
    pub occurred_at: Timestamp,
    /// The delivery this row is an attempt of, for Annals' own webhook calls.
    pub delivery_id: Option<i64>,
    pub duration_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct StoredIntegrationLog {
    pub id: i64,
    pub log: NewIntegrationLog,
}

impl StoredIntegrationLog {
    pub fn view(&self) -> Value {
        let l = &self.log;
        let mut view = Map::new();
        view.insert("id".into(), self.id.into());
        view.insert("client_id".into(), l.client_id.clone().into());
        view.insert("integration_name".into(), l.integration_name.clone().into());
        view.insert("operation".into(), l.operation.as_str().into());
        view.insert("external_id".into(), l.external_id.clone().into());
        view.insert(
            "request_data".into(),
            l.request_data
                .as_deref()
                .map_or(Value::Null, parse_stored_json),
        );
        view.insert(
            "response_data".into(),
            l.response_data
                .as_deref()
                .map_or(Value::Null, parse_stored_json),
        );
        view.insert("http_status_code".into(), l.http_status_code.into());
        view.insert("success".into(), l.success.into());
        view.insert("error_message".into(), l.error_message.clone().into());
        view.insert("delivery_id".into(), l.delivery_id.into());
        view.insert("duration_ms".into(), l.duration_ms.into());
        view.insert("occurred_at".into(), l.occurred_at.to_rfc3339().into());
        Value::Object(view)
    }
}

#[derive(Clone, Debug, Default)]
pub struct IntegrationLogQuery {
    /// `None` = all (admin).
    pub client_id: Option<String>,
    pub integration_name: Option<String>,
    pub operation: Option<Operation>,
    pub success: Option<bool>,
    pub delivery_id: Option<i64>,
    pub page: IdPage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(client: Option<&str>, pattern: &str) -> Subscription {
        let now = Timestamp::now();
        Subscription {
            id: Uuid::new_v4(),
            client_id: client.map(str::to_string),
            subscriber_name: String::from("s"),
            topic_pattern: TopicPattern::parse(pattern).unwrap(),
            webhook_url: Some(String::from("https://example.com/hook")),
            callback_method: None,
            is_active: true,
            config: None,
            max_retries: 3,
            secret: new_secret(),
            previous_secret: None,
            previous_secret_until: None,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn the_index_agrees_with_the_pattern_rule() {
        let patterns = [
            "billing.#",
            "billing.invoice.*",
            "*.user.created",
            "#",
            "#.paid",
            "a.#.z",
            "a.#.#.z",
            "exact.type",
            "*",
        ];
        let subs: Vec<Subscription> = patterns.iter().map(|p| sub(Some("c"), p)).collect();
        let index = SubscriptionIndex::new(&subs);
        for event_type in [
            "billing",
            "billing.invoice.paid",
            "billing.invoice",
            "iam.user.created",
            "a.z",
            "a.b.c.z",
            "a.b.c",
            "exact.type",
            "exact",
            "x.paid",
        ] {
            let mut got: Vec<Uuid> = index
                .matches("c", event_type)
                .into_iter()
                .map(|t| t.subscription_id)
                .collect();
            got.sort();
            let mut want: Vec<Uuid> = subs
                .iter()
                .filter(|s| s.topic_pattern.matches(event_type))
                .map(|s| s.id)
                .collect();
            want.sort();
            assert_eq!(got, want, "{event_type}");
        }
    }

    #[test]
    fn owners_see_their_own_events_and_admin_subscriptions_see_all() {
        let subs = vec![
            sub(Some("a"), "#"),
            sub(Some("b"), "#"),
            sub(None, "billing.#"),
        ];
        let mut inactive = sub(Some("a"), "#");
        inactive.is_active = false;
        let mut all = subs.clone();
        all.push(inactive);
        let index = SubscriptionIndex::new(&all);
        let got: Vec<Uuid> = index
            .matches("a", "billing.paid")
            .iter()
            .map(|t| t.subscription_id)
            .collect();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&subs[0].id) && got.contains(&subs[2].id));
        assert_eq!(index.matches("c", "other").len(), 0);
        assert_eq!(index.matches("c", "billing").len(), 1);
    }

    #[test]
    fn previous_secret_signs_only_until_it_expires() {
        let mut s = sub(None, "#");
        let now = Timestamp::now();
        s.previous_secret = Some(new_secret());
        s.previous_secret_until = Some(now.plus_days(1));
        assert_eq!(s.signing_secrets(now).len(), 2);
        assert_eq!(s.signing_secrets(now.plus_days(2)).len(), 1);
        assert!(s.secret.starts_with("whsec_"));
    }
}
