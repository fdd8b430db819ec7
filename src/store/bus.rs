//! `BusStore`: what the event bus asks of a store — subscriptions, their deliveries (the outbox
//! rows each backend's writer adds in the event's own transaction) and the integration log.
//!
//! Invariants every backend keeps:
//! - A subscription change is seen by every append committed after it, on every node: SQLite
//!   changes subscriptions on its writer thread, which swaps the index between two groups;
//!   PostgreSQL bumps `event_sequence.subscriptions_version` under the lock every group takes.
//! - A delivery is claimed by one sender at a time: claiming sets it `PROCESSING` with a lease
//!   (`next_retry_at`), after which another sender may take it again (at-least-once delivery).
//! - Turning a subscription off (by a request or a `410 Gone`) or deleting it fails its waiting
//!   deliveries into the dead-letter queue (or removes them with it), so none waits forever.

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreError;
use crate::domain::Timestamp;
use crate::domain::bus::{
    ClaimedDelivery, DeliveryQuery, FinishedAttempt, IntegrationLogQuery, NewIntegrationLog,
    StoredDelivery, StoredIntegrationLog, Subscription,
};
use crate::domain::inbound::Integration;

/// Most deliveries one replay queues.
pub const MAX_REPLAY: usize = 100_000;

/// What a replay queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub queued: usize,
    /// The `seq` to continue from when the replay stopped at `MAX_REPLAY`.
    pub next_seq: Option<i64>,
}

/// What asking to retry a delivery came to.
#[derive(Clone, Debug)]
pub enum RetryOutcome {
    Queued(StoredDelivery),
    NotFound,
    /// It is not in the dead-letter queue (its status is given).
    NotFailed(StoredDelivery),
    /// Its subscription is turned off or gone.
    SubscriptionInactive,
}

/// Whose deliveries a claim takes: the push worker's (every webhook subscription's) or one
/// pull subscription's.
#[derive(Clone, Copy, Debug)]
pub enum ClaimFor {
    Push,
    Pull(Uuid),
}

#[async_trait]
pub trait BusStore: Send + Sync {
    /// Stores a new subscription; `LimitReached` when its owner already has the most allowed.
    async fn create_subscription(&self, subscription: Subscription) -> Result<(), StoreError>;
    /// Subscriptions of `owner` (`None`: all), oldest first.
    async fn list_subscriptions(
        &self,
        owner: Option<String>,
    ) -> Result<Vec<Subscription>, StoreError>;
    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError>;
    /// Replaces the stored subscription of the same id; whether it was there. Waiting
    /// deliveries follow its target kind; turning it off fails them.
    async fn update_subscription(&self, subscription: Subscription) -> Result<bool, StoreError>;
    /// Deletes a subscription and its deliveries; whether it was there.
    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Queues a delivery for each stored event the subscription matches whose seq is at least
    /// `from_seq` and that was received in `[from, to)`, up to `MAX_REPLAY`.
    async fn replay(
        &self,
        subscription: Subscription,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        from_seq: i64,
    ) -> Result<Replayed, StoreError>;

    /// Takes up to `limit` due deliveries for one attempt each, leased until `lease_until`.
    async fn claim_deliveries(
        &self,
        claim: ClaimFor,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Records finished attempts and their integration log rows in one transaction.
    async fn finish_attempts(&self, attempts: Vec<FinishedAttempt>) -> Result<(), StoreError>;
    async fn query_deliveries(
        &self,
        query: DeliveryQuery,
    ) -> Result<Vec<StoredDelivery>, StoreError>;
    async fn get_delivery(&self, id: i64) -> Result<Option<StoredDelivery>, StoreError>;
    /// Puts a failed delivery back in the queue, due now, with its retries reset; `owner`
    /// (`None`: admin) must own it.
    async fn retry_delivery(
        &self,
        id: i64,
        owner: Option<String>,
    ) -> Result<RetryOutcome, StoreError>;

    async fn record_integration_logs(
        &self,
        logs: Vec<NewIntegrationLog>,
    ) -> Result<Vec<i64>, StoreError>;
    async fn query_integration_logs(
        &self,
        query: IntegrationLogQuery,
    ) -> Result<Vec<StoredIntegrationLog>, StoreError>;
    /// Stores an inbound integration; `false` when one of that name exists.
    async fn create_integration(&self, integration: Integration) -> Result<bool, StoreError>;
    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError>;
    async fn get_integration(&self, name: String) -> Result<Option<Integration>, StoreError>;
    async fn delete_integration(&self, name: String) -> Result<bool, StoreError>;

    /// Deletes finished deliveries (completed or failed) and integration log rows older than
    /// `before`, at most `limit` of each; how many rows went.
    async fn delete_deliveries_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError>;
}
