//! The event bus on PostgreSQL: subscriptions, deliveries and the integration log (`BusStore`).
//!
//! Invariants:
//! - Every subscription change first bumps `event_sequence.subscriptions_version`, taking the
//!   row lock every writer group takes first; a writer whose index is of another version
//!   reloads it inside its transaction, so no node matches an append against a stale set.
//! - Deliveries are claimed with `FOR UPDATE SKIP LOCKED`, so nodes sharing the database never
//!   take the same due delivery at once.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::query::{EVENT_COLUMNS, Filters, to_datetime};
use super::{PostgresStore, row_to_event, unavailable};
use crate::domain::bus::{
    AttemptOutcome, ClaimedDelivery, DeliveryQuery, DeliveryStatus, FinishedAttempt, GONE_REASON,
    INACTIVE_REASON, IntegrationLogQuery, MAX_SUBSCRIPTIONS_PER_OWNER, NewDelivery,
    NewIntegrationLog, Operation, StoredDelivery, StoredIntegrationLog, Subscription,
    SubscriptionIndex,
};
use crate::domain::inbound::{Integration, Verification};
use crate::domain::{StoredEvent, Timestamp, TopicPattern};
use crate::store::StoreError;
use crate::store::bus::{BusStore, ClaimFor, MAX_REPLAY, Replayed, RetryOutcome};

const SUBSCRIPTION_COLUMNS: &str = "id, client_id, subscriber_name, topic_pattern, webhook_url, \
callback_method, is_active, subscription_config::text, max_retries, secret, previous_secret, \
previous_secret_until, disabled_reason, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, message_id, subscription_id, client_id, event_seq, event_uuid, \
topic, status, retry_count, max_retries, next_retry_at, failure_reason, last_status_code, \
created_at, processed_at";

const LOG_COLUMNS: &str = "id, client_id, integration_name, operation, external_id, \
request_data::text, response_data::text, http_status_code, success, error_message, occurred_at, \
delivery_id, duration_ms";

fn time(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp::from_micros(t.timestamp_micros())
}

fn stored(what: &str, e: String) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("stored {what}: {e}"))
}

fn row_to_subscription(row: &Row) -> Result<Subscription, StoreError> {
    let pattern: String = row.get(3);
    Ok(Subscription {
        id: row.get(0),
        client_id: row.get(1),
        subscriber_name: row.get(2),
        topic_pattern: TopicPattern::parse(&pattern).map_err(|e| stored("subscription", e))?,
        webhook_url: row.get(4),
        callback_method: row.get(5),
        is_active: row.get(6),
        config: row.get(7),
        max_retries: row.get(8),
        secret: row.get(9),
        previous_secret: row.get(10),
        previous_secret_until: row
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(11)
            .map(time),
        disabled_reason: row.get(12),
        created_at: time(row.get(13)),
        updated_at: time(row.get(14)),
    })
}

const INTEGRATION_COLUMNS: &str = "name, client_id, verification, secret, event_type, created_at";

fn row_to_integration(row: &Row) -> Result<Integration, StoreError> {
    let verification: String = row.get(2);
    Ok(Integration {
        name: row.get(0),
        client_id: row.get(1),
        verification: Verification::parse(&verification).map_err(|e| stored("integration", e))?,
        secret: row.get(3),
        event_type: row.get(4),
        created_at: time(row.get(5)),
    })
}

fn row_to_delivery(row: &Row) -> Result<StoredDelivery, StoreError> {
    let status: String = row.get(7);
    Ok(StoredDelivery {
        id: row.get(0),
        message_id: row.get(1),
        subscription_id: row.get(2),
        client_id: row.get(3),
        event_seq: row.get(4),
        event_uuid: row.get(5),
        topic: row.get(6),
        status: DeliveryStatus::parse(&status).map_err(|e| stored("delivery", e))?,
        retry_count: row.get(8),
        max_retries: row.get(9),
        next_retry_at: row
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(10)
            .map(time),
        failure_reason: row.get(11),
        last_status_code: row.get(12),
        created_at: time(row.get(13)),
        processed_at: row
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(14)
            .map(time),
    })
}

fn row_to_log(row: &Row) -> Result<StoredIntegrationLog, StoreError> {
    let operation: String = row.get(3);
    Ok(StoredIntegrationLog {
        id: row.get(0),
        log: NewIntegrationLog {
            client_id: row.get(1),
            integration_name: row.get(2),
            operation: Operation::parse(&operation).map_err(|e| stored("integration log", e))?,
            external_id: row.get(4),
            request_data: row.get(5),
            response_data: row.get(6),
            http_status_code: row.get(7),
            success: row.get(8),
            error_message: row.get(9),
            occurred_at: time(row.get(10)),
            delivery_id: row.get(11),
            duration_ms: row.get(12),
        },
    })
}

/// The index of the active subscriptions, read in the writer's transaction.
pub(super) async fn load_index(
    tx: &impl deadpool_postgres::GenericClient,
) -> Result<SubscriptionIndex, StoreError> {
    let rows = tx
        .query(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE is_active"),
            &[],
        )
        .await
        .map_err(unavailable)?;
    let subscriptions = rows
        .iter()
        .map(row_to_subscription)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SubscriptionIndex::new(&subscriptions))
}

/// Inserts deliveries with one `INSERT … SELECT FROM UNNEST(…)`, in the caller's transaction.
pub(super) async fn insert_deliveries(
    tx: &impl deadpool_postgres::GenericClient,
    deliveries: &[NewDelivery<'_>],
    created_at: Timestamp,
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let message: Vec<Uuid> = deliveries.iter().map(|d| d.message_id).collect();
    let subscription: Vec<Uuid> = deliveries
        .iter()
        .map(|d| d.target.subscription_id)
        .collect();
    let client: Vec<&str> = deliveries.iter().map(|d| d.client_id).collect();
    let seq: Vec<i64> = deliveries.iter().map(|d| d.event_seq).collect();
    let event: Vec<Uuid> = deliveries.iter().map(|d| d.event_uuid).collect();
    let topic: Vec<&str> = deliveries.iter().map(|d| d.topic).collect();
    let pull: Vec<bool> = deliveries.iter().map(|d| d.target.pull).collect();
    let retries: Vec<i32> = deliveries.iter().map(|d| d.target.max_retries).collect();
    let at = to_datetime(created_at.as_micros());
    tx.execute(
        "INSERT INTO deliveries (message_id, subscription_id, client_id, event_seq, event_uuid, \
         topic, status, pull, retry_count, max_retries, next_retry_at, created_at) \
         SELECT m, s, c, q, e, t, 'PENDING', p, 0, r, $9, $9 FROM UNNEST($1::uuid[], $2::uuid[], \
         $3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::bool[], $8::int[]) \
         AS u(m, s, c, q, e, t, p, r)",
        &[
            &message,
            &subscription,
            &client,
            &seq,
            &event,
            &topic,
            &pull,
            &retries,
            &at,
        ],
    )
    .await
    .map_err(super::writer::internal_or_unavailable)?;
    Ok(())
}

/// Fails a subscription's waiting deliveries (it was turned off).
async fn fail_waiting(
    tx: &impl deadpool_postgres::GenericClient,
    subscription: Uuid,
    reason: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE deliveries SET status = 'FAILED', failure_reason = $2, processed_at = now(), \
         next_retry_at = NULL WHERE subscription_id = $1 AND status = 'PENDING'",
        &[&subscription, &reason],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Opens a subscription change's transaction: bumps the version every writer checks, which
/// takes the sequence row's lock, so the change commits between two groups.
async fn begin_subscription_change(
    db: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    let tx = db.transaction().await.map_err(unavailable)?;
    tx.execute(
        "UPDATE event_sequence SET subscriptions_version = subscriptions_version + 1 WHERE id = 1",
        &[],
    )
    .await
    .map_err(unavailable)?;
    Ok(tx)
}

async fn subscription_by_id(
    db: &impl deadpool_postgres::GenericClient,
    id: Uuid,
) -> Result<Option<Subscription>, StoreError> {
    db.query_opt(
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"),
        &[&id],
    )
    .await
    .map_err(unavailable)?
    .map(|r| row_to_subscription(&r))
    .transpose()
}

fn opt_time(t: Option<Timestamp>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.map(|t| to_datetime(t.as_micros()))
}

#[async_trait]
impl BusStore for PostgresStore {
    async fn create_subscription(&self, s: Subscription) -> Result<(), StoreError> {
        let mut db = self.client().await?;
        let tx = begin_subscription_change(&mut db).await?;
        let held: i64 = tx
            .query_one(
                "SELECT count(*) FROM subscriptions WHERE client_id IS NOT DISTINCT FROM $1",
                &[&s.client_id],
            )
            .await
            .map_err(unavailable)?
            .get(0);
        if held >= MAX_SUBSCRIPTIONS_PER_OWNER {
            return Err(StoreError::LimitReached(format!(
                "an owner may hold at most {MAX_SUBSCRIPTIONS_PER_OWNER} subscriptions; delete one first"
            )));
        }
        tx.execute(
            &format!(
                "INSERT INTO subscriptions ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, \
                 $9, $10, $11, $12, $13, $14, $15)",
                SUBSCRIPTION_COLUMNS.replace("::text", "")
            ),
            &SubscriptionParams::of(&s).params(),
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn list_subscriptions(
        &self,
        owner: Option<String>,
    ) -> Result<Vec<Subscription>, StoreError> {
        let db = self.client().await?;
        db.query(
            &format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
                 WHERE $1::text IS NULL OR client_id = $1 ORDER BY created_at, id"
            ),
            &[&owner],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(row_to_subscription)
        .collect()
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        let db = self.client().await?;
        subscription_by_id(&db, id).await
    }

    async fn update_subscription(&self, s: Subscription) -> Result<bool, StoreError> {
        let mut db = self.client().await?;
        let tx = begin_subscription_change(&mut db).await?;
        let changed = tx
            .execute(
                "UPDATE subscriptions SET client_id = $2, subscriber_name = $3, topic_pattern = $4, \
                 webhook_url = $5, callback_method = $6, is_active = $7, \
                 subscription_config = $8::text::jsonb, max_retries = $9, secret = $10, \
                 previous_secret = $11, previous_secret_until = $12, disabled_reason = $13, \
                 updated_at = $15 WHERE id = $1 AND $14::timestamptz IS NOT NULL",
                &SubscriptionParams::of(&s).params(),
            )
            .await
            .map_err(unavailable)?;
        if changed == 0 {
            return Ok(false);
        }
        tx.execute(
            "UPDATE deliveries SET pull = $2 WHERE subscription_id = $1 \
             AND status IN ('PENDING', 'PROCESSING') AND pull <> $2",
            &[&s.id, &s.is_pull()],
        )
        .await
        .map_err(unavailable)?;
        if !s.is_active {
            fail_waiting(&tx, s.id, INACTIVE_REASON).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut db = self.client().await?;
        let tx = begin_subscription_change(&mut db).await?;
        tx.execute("DELETE FROM deliveries WHERE subscription_id = $1", &[&id])
            .await
            .map_err(unavailable)?;
        let deleted = tx
            .execute("DELETE FROM subscriptions WHERE id = $1", &[&id])
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(deleted > 0)
    }

    async fn replay(
        &self,
        subscription: Subscription,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        from_seq: i64,
    ) -> Result<Replayed, StoreError> {
        let mut db = self.client().await?;
        let (low, high) = subscription.topic_pattern.type_range();
        let mut f = Filters::new(
            "SELECT seq, id, client_id, event_type FROM events WHERE seq >= $1 \
             AND event_type >= $2 AND event_type < $3",
        );
        f.args.push(Box::new(from_seq));
        f.args.push(Box::new(low));
        f.args.push(Box::new(high));
        if let Some(owner) = &subscription.client_id {
            f.add(" AND client_id = $#", Box::new(owner.clone()));
        }
        if let Some(from) = from {
            f.add(
                " AND received_at >= $#",
                Box::new(to_datetime(from.as_micros())),
            );
        }
        if let Some(to) = to {
            f.add(
                " AND received_at < $#",
                Box::new(to_datetime(to.as_micros())),
            );
        }
        f.sql.push_str(" ORDER BY seq");
        let tx = db.transaction().await.map_err(unavailable)?;
        let portal = tx.bind(&f.sql, &f.params()).await.map_err(unavailable)?;
        let mut found: Vec<(i64, Uuid, String, String)> = Vec::new();
        let mut next_seq = None;
        'read: loop {
            let rows = tx
                .query_portal(&portal, 10_000)
                .await
                .map_err(unavailable)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let event_type: String = row.get(3);
                if !subscription.topic_pattern.matches(&event_type) {
                    continue;
                }
                if found.len() == MAX_REPLAY {
                    next_seq = Some(row.get(0));
                    break 'read;
                }
                found.push((row.get(0), row.get(1), row.get(2), event_type));
            }
        }
        drop(portal);
        let index = SubscriptionIndex::new(std::iter::once(&Subscription {
            is_active: true,
            ..subscription
        }));
        let mut deliveries = Vec::with_capacity(found.len());
        for (seq, id, client, event_type) in &found {
            index.queue(*seq, *id, client, event_type, &mut deliveries);
        }
        insert_deliveries(&tx, &deliveries, Timestamp::now()).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Replayed {
            queued: found.len(),
            next_seq,
        })
    }

    async fn claim_deliveries(
        &self,
        claim: ClaimFor,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(unavailable)?;
        let (filter, subscription) = match claim {
            ClaimFor::Push => ("pull = false", None),
            ClaimFor::Pull(id) => ("pull = true AND subscription_id = $4", Some(id)),
        };
        let sql = format!(
            "UPDATE deliveries SET status = 'PROCESSING', next_retry_at = $2 WHERE id IN \
             (SELECT id FROM deliveries WHERE status IN ('PENDING', 'PROCESSING') AND {filter} \
             AND next_retry_at <= $1 ORDER BY next_retry_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING {DELIVERY_COLUMNS}"
        );
        let now_at = to_datetime(now.as_micros());
        let lease = to_datetime(lease_until.as_micros());
        let limit = limit as i64;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now_at, &lease, &limit];
        if let Some(id) = &subscription {
            params.push(id);
        }
        let claimed = tx
            .query(&sql, &params)
            .await
            .map_err(unavailable)?
            .iter()
            .map(row_to_delivery)
            .collect::<Result<Vec<_>, _>>()?;
        let seqs: Vec<i64> = claimed.iter().map(|d| d.event_seq).collect();
        let mut events: HashMap<i64, StoredEvent> = HashMap::new();
        if !seqs.is_empty() {
            for row in tx
                .query(
                    &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq = ANY($1)"),
                    &[&seqs],
                )
                .await
                .map_err(unavailable)?
            {
                let event = row_to_event(&row);
                events.insert(event.seq, event);
            }
        }
        let ids: Vec<Uuid> = claimed.iter().map(|d| d.subscription_id).collect();
        let mut subscriptions: HashMap<Uuid, Subscription> = HashMap::new();
        if !ids.is_empty() {
            for row in tx
                .query(
                    &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ANY($1)"),
                    &[&ids],
                )
                .await
                .map_err(unavailable)?
            {
                let s = row_to_subscription(&row)?;
                subscriptions.insert(s.id, s);
            }
        }
        let mut out = Vec::with_capacity(claimed.len());
        let mut orphans: Vec<i64> = Vec::new();
        for delivery in claimed {
            match subscriptions.get(&delivery.subscription_id) {
                Some(s) if s.is_active => {
                    // Not `remove`: one event may go to several subscriptions in one claim.
                    let event = events.get(&delivery.event_seq).cloned();
                    out.push(ClaimedDelivery {
                        subscription: s.clone(),
                        delivery,
                        event,
                    });
                }
                // A lease that ran out after its subscription was turned off.
                _ => orphans.push(delivery.id),
            }
        }
        if !orphans.is_empty() {
            tx.execute(
                "UPDATE deliveries SET status = 'FAILED', failure_reason = $2, processed_at = now(), \
                 next_retry_at = NULL WHERE id = ANY($1)",
                &[&orphans, &INACTIVE_REASON],
            )
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(out)
    }

    async fn finish_attempts(&self, attempts: Vec<FinishedAttempt>) -> Result<(), StoreError> {
        let gone: Vec<Uuid> = attempts
            .iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Gone))
            .map(|a| a.subscription_id)
            .collect();
        let mut db = self.client().await?;
        let tx = if gone.is_empty() {
            db.transaction().await.map_err(unavailable)?
        } else {
            begin_subscription_change(&mut db).await?
        };
        let update = tx
            .prepare_cached(
                "UPDATE deliveries SET status = $2, retry_count = retry_count + $3, \
                 next_retry_at = $4, processed_at = $5, failure_reason = $6, last_status_code = $7 \
                 WHERE id = $1 AND status = 'PROCESSING'",
            )
            .await
            .map_err(unavailable)?;
        for a in &attempts {
            let u = a.update();
            tx.execute(
                &update,
                &[
                    &a.delivery_id,
                    &u.status.as_str(),
                    &u.retried,
                    &opt_time(u.next_retry_at),
                    &opt_time(u.processed_at),
                    &a.failure_reason,
                    &a.status_code,
                ],
            )
            .await
            .map_err(unavailable)?;
        }
        insert_logs(&tx, attempts.iter().filter_map(|a| a.log.as_ref())).await?;
        for id in &gone {
            tx.execute(
                "UPDATE subscriptions SET is_active = false, disabled_reason = $2, updated_at = now() \
                 WHERE id = $1",
                &[id, &GONE_REASON],
            )
            .await
            .map_err(unavailable)?;
            fail_waiting(&tx, *id, GONE_REASON).await?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn query_deliveries(
        &self,
        query: DeliveryQuery,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let db = self.client().await?;
        let mut f = Filters::new(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE TRUE"
        ));
        if let Some(c) = &query.client_id {
            f.add(" AND client_id = $#", Box::new(c.clone()));
        }
        if let Some(s) = query.subscription_id {
            f.add(" AND subscription_id = $#", Box::new(s));
        }
        if let Some(s) = query.status {
            f.add(" AND status = $#", Box::new(s.as_str()));
        }
        let f = f.page("created_at", &query.page);
        db.query(&f.sql, &f.params())
            .await
            .map_err(unavailable)?
            .iter()
            .map(row_to_delivery)
            .collect()
    }

    async fn get_delivery(&self, id: i64) -> Result<Option<StoredDelivery>, StoreError> {
        let db = self.client().await?;
        db.query_opt(
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(unavailable)?
        .map(|r| row_to_delivery(&r))
        .transpose()
    }

    async fn retry_delivery(
        &self,
        id: i64,
        owner: Option<String>,
    ) -> Result<RetryOutcome, StoreError> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(unavailable)?;
        let Some(row) = tx
            .query_opt(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1 \
                     AND ($2::text IS NULL OR client_id = $2) FOR UPDATE"
                ),
                &[&id, &owner],
            )
            .await
            .map_err(unavailable)?
        else {
            return Ok(RetryOutcome::NotFound);
        };
        let delivery = row_to_delivery(&row)?;
        if delivery.status != DeliveryStatus::Failed {
            return Ok(RetryOutcome::NotFailed(delivery));
        }
        match subscription_by_id(&tx, delivery.subscription_id).await? {
            Some(s) if s.is_active => {}
            _ => return Ok(RetryOutcome::SubscriptionInactive),
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE deliveries SET status = 'PENDING', retry_count = 0, next_retry_at = now(), \
                     failure_reason = NULL, processed_at = NULL WHERE id = $1 RETURNING {DELIVERY_COLUMNS}"
                ),
                &[&id],
            )
            .await
            .map_err(unavailable)?;
        let queued = row_to_delivery(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(RetryOutcome::Queued(queued))
    }

    async fn record_integration_logs(
        &self,
        logs: Vec<NewIntegrationLog>,
    ) -> Result<Vec<i64>, StoreError> {
        let db = self.client().await?;
        insert_logs(&db, logs.iter()).await
    }

    async fn query_integration_logs(
        &self,
        query: IntegrationLogQuery,
    ) -> Result<Vec<StoredIntegrationLog>, StoreError> {
        let db = self.client().await?;
        let mut f = Filters::new(&format!(
            "SELECT {LOG_COLUMNS} FROM integration_logs WHERE TRUE"
        ));
        if let Some(c) = &query.client_id {
            f.add(" AND client_id = $#", Box::new(c.clone()));
        }
        if let Some(n) = &query.integration_name {
            f.add(" AND integration_name = $#", Box::new(n.clone()));
        }
        if let Some(o) = query.operation {
            f.add(" AND operation = $#", Box::new(o.as_str()));
        }
        if let Some(s) = query.success {
            f.add(" AND success = $#", Box::new(s));
        }
        if let Some(d) = query.delivery_id {
            f.add(" AND delivery_id = $#", Box::new(d));
        }
        let f = f.page("occurred_at", &query.page);
        db.query(&f.sql, &f.params())
            .await
            .map_err(unavailable)?
            .iter()
            .map(row_to_log)
            .collect()
    }

    async fn create_integration(&self, i: Integration) -> Result<bool, StoreError> {
        let db = self.client().await?;
        let created = db
            .execute(
                &format!(
                    "INSERT INTO integrations ({INTEGRATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (name) DO NOTHING"
                ),
                &[
                    &i.name,
                    &i.client_id,
                    &i.verification.as_str(),
                    &i.secret,
                    &i.event_type,
                    &to_datetime(i.created_at.as_micros()),
                ],
            )
            .await
            .map_err(unavailable)?;
        Ok(created == 1)
    }

    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        let db = self.client().await?;
        db.query(
            &format!("SELECT {INTEGRATION_COLUMNS} FROM integrations ORDER BY name"),
            &[],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(row_to_integration)
        .collect()
    }

    async fn get_integration(&self, name: String) -> Result<Option<Integration>, StoreError> {
        let db = self.client().await?;
        db.query_opt(
            &format!("SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE name = $1"),
            &[&name],
        )
        .await
        .map_err(unavailable)?
        .map(|r| row_to_integration(&r))
        .transpose()
    }

    async fn delete_integration(&self, name: String) -> Result<bool, StoreError> {
        let db = self.client().await?;
        Ok(db
            .execute("DELETE FROM integrations WHERE name = $1", &[&name])
            .await
            .map_err(unavailable)?
            > 0)
    }

    async fn delete_deliveries_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let db = self.client().await?;
        let at = to_datetime(before.as_micros());
        let limit = limit as i64;
        let deliveries = db
            .execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE created_at < $1 \
                 AND status IN ('COMPLETED', 'FAILED') LIMIT $2)",
                &[&at, &limit],
            )
            .await
            .map_err(unavailable)?;
        let logs = db
            .execute(
                "DELETE FROM integration_logs WHERE id IN (SELECT id FROM integration_logs \
                 WHERE occurred_at < $1 LIMIT $2)",
                &[&at, &limit],
            )
            .await
            .map_err(unavailable)?;
        Ok(deliveries + logs)
    }
}

/// A subscription's columns as statement parameters, in `SUBSCRIPTION_COLUMNS` order.
struct SubscriptionParams<'s> {
    s: &'s Subscription,
    previous_until: Option<chrono::DateTime<chrono::Utc>>,
    created: chrono::DateTime<chrono::Utc>,
    updated: chrono::DateTime<chrono::Utc>,
}

impl<'s> SubscriptionParams<'s> {
    fn of(s: &'s Subscription) -> Self {
        Self {
            s,
            previous_until: opt_time(s.previous_secret_until),
            created: to_datetime(s.created_at.as_micros()),
            updated: to_datetime(s.updated_at.as_micros()),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 15] {
        let s = self.s;
        [
            &s.id,
            &s.client_id,
            &s.subscriber_name,
            s.topic_pattern.as_str_ref(),
            &s.webhook_url,
            &s.callback_method,
            &s.is_active,
            &s.config,
            &s.max_retries,
            &s.secret,
            &s.previous_secret,
            &self.previous_until,
            &s.disabled_reason,
            &self.created,
            &self.updated,
        ]
    }
}

async fn insert_logs<'a>(
    db: &impl deadpool_postgres::GenericClient,
    logs: impl Iterator<Item = &'a NewIntegrationLog>,
) -> Result<Vec<i64>, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO integration_logs (client_id, integration_name, operation, external_id, \
             request_data, response_data, http_status_code, success, error_message, occurred_at, \
             delivery_id, duration_ms) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb, \
             $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .await
        .map_err(unavailable)?;
    let mut ids = Vec::new();
    for l in logs {
        let row = db
            .query_one(
                &stmt,
                &[
                    &l.client_id,
                    &l.integration_name,
                    &l.operation.as_str(),
                    &l.external_id,
                    &l.request_data,
                    &l.response_data,
                    &l.http_status_code,
                    &l.success,
                    &l.error_message,
                    &to_datetime(l.occurred_at.as_micros()),
                    &l.delivery_id,
                    &l.duration_ms,
                ],
            )
            .await
            .map_err(super::writer::internal_or_unavailable)?;
        ids.push(row.get(0));
    }
    Ok(ids)
}
