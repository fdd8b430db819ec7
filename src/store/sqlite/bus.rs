//! The event bus on SQLite: subscriptions, deliveries and the integration log (`BusStore`).
//!
//! Invariants:
//! - Every write here runs on the writer thread (`SqliteStore::write`), so a subscription change
//!   and the index swap that follows it happen between two groups: every append after the
//!   change is matched against the new set.
//! - The writer queues deliveries for a group's events in the group's own transaction
//!   (`queue_deliveries`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::multi_row::{MultiRowInsert, Prepared};
use super::query::{EVENT_COLUMNS, Filters};
use super::{SqliteStore, row_to_event};
use crate::domain::bus::{
    ClaimedDelivery, DeliveryQuery, DeliveryStatus, FinishedAttempt, GONE_REASON, INACTIVE_REASON,
    IntegrationLogQuery, MAX_SUBSCRIPTIONS_PER_OWNER, NewDelivery, NewIntegrationLog, Operation,
    SharedIndex, StoredDelivery, StoredIntegrationLog, Subscription, SubscriptionIndex,
};
use crate::domain::inbound::{Integration, Verification};
use crate::domain::{StoredEvent, Timestamp, TopicPattern};
use crate::store::StoreError;
use crate::store::bus::{BusStore, ClaimFor, MAX_REPLAY, Replayed, RetryOutcome};

const SUBSCRIPTION_COLUMNS: &str = "id, client_id, subscriber_name, topic_pattern, webhook_url, \
callback_method, is_active, subscription_config, max_retries, secret, previous_secret, \
previous_secret_until, disabled_reason, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "id, message_id, subscription_id, client_id, event_seq, event_uuid, \
topic, status, retry_count, max_retries, next_retry_at, failure_reason, last_status_code, \
created_at, processed_at";

const LOG_COLUMNS: &str = "id, client_id, integration_name, operation, external_id, request_data, \
response_data, http_status_code, success, error_message, occurred_at, delivery_id, duration_ms";

fn uuid_at(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(i)?;
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn conversion(i: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, message.into())
}

fn row_to_subscription(row: &Row<'_>) -> rusqlite::Result<Subscription> {
    let pattern: String = row.get(3)?;
    Ok(Subscription {
        id: uuid_at(row, 0)?,
        client_id: row.get(1)?,
        subscriber_name: row.get(2)?,
        topic_pattern: TopicPattern::parse(&pattern).map_err(|e| conversion(3, e))?,
        webhook_url: row.get(4)?,
        callback_method: row.get(5)?,
        is_active: row.get(6)?,
        config: row.get(7)?,
        max_retries: row.get(8)?,
        secret: row.get(9)?,
        previous_secret: row.get(10)?,
        previous_secret_until: row.get::<_, Option<i64>>(11)?.map(Timestamp::from_micros),
        disabled_reason: row.get(12)?,
        created_at: Timestamp::from_micros(row.get(13)?),
        updated_at: Timestamp::from_micros(row.get(14)?),
    })
}

fn subscription_values(s: &Subscription) -> [SqlValue; 15] {
    let text = |t: &Option<String>| t.clone().map_or(SqlValue::Null, SqlValue::Text);
    [
        SqlValue::Blob(s.id.as_bytes().to_vec()),
        text(&s.client_id),
        SqlValue::Text(s.subscriber_name.clone()),
        SqlValue::Text(s.topic_pattern.as_str().to_string()),
        text(&s.webhook_url),
        text(&s.callback_method),
        SqlValue::Integer(i64::from(s.is_active)),
        text(&s.config),
        SqlValue::Integer(i64::from(s.max_retries)),
        SqlValue::Text(s.secret.clone()),
        text(&s.previous_secret),
        s.previous_secret_until
            .map_or(SqlValue::Null, |t| SqlValue::Integer(t.as_micros())),
        text(&s.disabled_reason),
        SqlValue::Integer(s.created_at.as_micros()),
        SqlValue::Integer(s.updated_at.as_micros()),
    ]
}

const INTEGRATION_COLUMNS: &str = "name, client_id, verification, secret, event_type, created_at";

fn row_to_integration(row: &Row<'_>) -> rusqlite::Result<Integration> {
    let verification: String = row.get(2)?;
    Ok(Integration {
        name: row.get(0)?,
        client_id: row.get(1)?,
        verification: Verification::parse(&verification).map_err(|e| conversion(2, e))?,
        secret: row.get(3)?,
        event_type: row.get(4)?,
        created_at: Timestamp::from_micros(row.get(5)?),
    })
}

fn row_to_delivery(row: &Row<'_>) -> rusqlite::Result<StoredDelivery> {
    let status: String = row.get(7)?;
    Ok(StoredDelivery {
        id: row.get(0)?,
        message_id: uuid_at(row, 1)?,
        subscription_id: uuid_at(row, 2)?,
        client_id: row.get(3)?,
        event_seq: row.get(4)?,
        event_uuid: uuid_at(row, 5)?,
        topic: row.get(6)?,
        status: DeliveryStatus::parse(&status).map_err(|e| conversion(7, e))?,
        retry_count: row.get(8)?,
        max_retries: row.get(9)?,
        next_retry_at: row.get::<_, Option<i64>>(10)?.map(Timestamp::from_micros),
        failure_reason: row.get(11)?,
        last_status_code: row.get(12)?,
        created_at: Timestamp::from_micros(row.get(13)?),
        processed_at: row.get::<_, Option<i64>>(14)?.map(Timestamp::from_micros),
    })
}

fn row_to_log(row: &Row<'_>) -> rusqlite::Result<StoredIntegrationLog> {
    let operation: String = row.get(3)?;
    Ok(StoredIntegrationLog {
        id: row.get(0)?,
        log: NewIntegrationLog {
            client_id: row.get(1)?,
            integration_name: row.get(2)?,
            operation: Operation::parse(&operation).map_err(|e| conversion(3, e))?,
            external_id: row.get(4)?,
            request_data: row.get(5)?,
            response_data: row.get(6)?,
            http_status_code: row.get(7)?,
            success: row.get(8)?,
            error_message: row.get(9)?,
            occurred_at: Timestamp::from_micros(row.get(10)?),
            delivery_id: row.get(11)?,
            duration_ms: row.get(12)?,
        },
    })
}

/// Every subscription, for the index.
fn load_subscriptions(conn: &Connection) -> rusqlite::Result<Vec<Subscription>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE is_active = 1"
    ))?;
    let rows = stmt.query_map([], row_to_subscription)?;
    rows.collect()
}

/// The index of the active subscriptions, as the writer starts with it.
pub(super) fn load_index(conn: &Connection) -> anyhow::Result<SubscriptionIndex> {
    Ok(SubscriptionIndex::new(&load_subscriptions(conn)?))
}

/// Deliveries go in multi-row statements like the events they belong to (`multi_row`).
pub(super) static INSERT_DELIVERIES: std::sync::LazyLock<MultiRowInsert> = std::sync::LazyLock::new(
    || {
        MultiRowInsert::new(
            "INSERT OR ROLLBACK INTO deliveries (message_id, subscription_id, client_id, event_seq, \
             event_uuid, topic, status, pull, retry_count, max_retries, next_retry_at, created_at)",
            12,
        )
    },
);

/// Inserts the deliveries of a group's (or a replay's) events; run in that transaction, with
/// statements of `INSERT_DELIVERIES` prepared on `conn`.
pub(super) fn insert_deliveries(
    conn: &Connection,
    insert: &mut Prepared,
    deliveries: &[NewDelivery<'_>],
    created_at: Timestamp,
) -> rusqlite::Result<()> {
    let at = created_at.as_micros();
    insert.run(conn, deliveries, |row, d| {
        row.blob(d.message_id.as_bytes())
            .blob(d.target.subscription_id.as_bytes())
            .text(d.client_id)
            .int(d.event_seq)
            .blob(d.event_uuid.as_bytes())
            .text(d.topic)
            .text("PENDING")
            .int(i64::from(d.target.pull))
            .int(0)
            .int(i64::from(d.target.max_retries))
            .int(at)
            .int(at);
    })
}

/// Fails a subscription's waiting deliveries (it was turned off).
fn fail_waiting(
    conn: &Connection,
    subscription: Uuid,
    reason: &str,
    at: Timestamp,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE deliveries SET status = 'FAILED', failure_reason = ?2, processed_at = ?3, \
         next_retry_at = NULL WHERE subscription_id = ?1 AND status = 'PENDING'",
    )?
    .execute(params![
        subscription.as_bytes().as_slice(),
        reason,
        at.as_micros()
    ])
}

impl SqliteStore {
    /// `write` for subscription changes: once committed, the writer's index is rebuilt, still
    /// on the writer thread, so the next group matches against the new set.
    async fn write_subscriptions<T: Send + 'static>(
        &self,
        job: impl FnOnce(&rusqlite::Transaction<'_>) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let index = self.bus_index.clone();
        self.on_writer(move |conn| {
            let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = job(&txn)?;
            txn.commit()?;
            swap_index(conn, &index)?;
            Ok(value)
        })
        .await?
        .map_err(StoreError::Internal)
    }
}

fn swap_index(conn: &Connection, index: &SharedIndex) -> anyhow::Result<()> {
    let fresh = Arc::new(load_index(conn)?);
    *index
        .write()
        .map_err(|_| anyhow::anyhow!("subscription index lock poisoned"))? = fresh;
    Ok(())
}

/// The events of `seqs`, by seq.
fn events_by_seq(conn: &Connection, seqs: &[i64]) -> rusqlite::Result<HashMap<i64, StoredEvent>> {
    let mut events = HashMap::new();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
    ))?;
    for seq in seqs {
        if let Some(event) = stmt.query_row([seq], row_to_event).optional()? {
            events.insert(*seq, event);
        }
    }
    Ok(events)
}

fn subscription_by_id(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<Subscription>> {
    conn.prepare_cached(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"
    ))?
    .query_row([id.as_bytes().as_slice()], row_to_subscription)
    .optional()
}

#[async_trait]
impl BusStore for SqliteStore {
    async fn create_subscription(&self, subscription: Subscription) -> Result<(), StoreError> {
        let owner = subscription.client_id.clone();
        let result = self
            .write_subscriptions(move |tx| {
                let held: i64 = tx.query_row(
                    "SELECT count(*) FROM subscriptions WHERE client_id IS ?1",
                    [&owner],
                    |r| r.get(0),
                )?;
                if held >= MAX_SUBSCRIPTIONS_PER_OWNER {
                    return Ok(false);
                }
                tx.execute(
                    &format!(
                        "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES \
                         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                    ),
                    rusqlite::params_from_iter(subscription_values(&subscription)),
                )?;
                Ok(true)
            })
            .await?;
        if result {
            Ok(())
        } else {
            Err(StoreError::LimitReached(format!(
                "an owner may hold at most {MAX_SUBSCRIPTIONS_PER_OWNER} subscriptions; delete one first"
            )))
        }
    }

    async fn list_subscriptions(
        &self,
        owner: Option<String>,
    ) -> Result<Vec<Subscription>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions \
                 WHERE ?1 IS NULL OR client_id = ?1 ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([owner], row_to_subscription)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, StoreError> {
        self.read(move |conn| Ok(subscription_by_id(conn, id)?))
            .await
    }

    async fn update_subscription(&self, subscription: Subscription) -> Result<bool, StoreError> {
        self.write_subscriptions(move |tx| {
            let id = subscription.id;
            let values = subscription_values(&subscription);
            let changed = tx.execute(
                "UPDATE subscriptions SET client_id = ?2, subscriber_name = ?3, topic_pattern = ?4, \
                 webhook_url = ?5, callback_method = ?6, is_active = ?7, subscription_config = ?8, \
                 max_retries = ?9, secret = ?10, previous_secret = ?11, previous_secret_until = ?12, \
                 disabled_reason = ?13, updated_at = ?15 WHERE id = ?1",
                rusqlite::params_from_iter(values),
            )?;
            if changed == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE deliveries SET pull = ?2 WHERE subscription_id = ?1 \
                 AND status IN ('PENDING', 'PROCESSING') AND pull <> ?2",
                params![id.as_bytes().as_slice(), subscription.is_pull()],
            )?;
            if !subscription.is_active {
                fail_waiting(tx, id, INACTIVE_REASON, subscription.updated_at)?;
            }
            Ok(true)
        })
        .await
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        self.write_subscriptions(move |tx| {
            let key = id.as_bytes().as_slice();
            tx.execute("DELETE FROM deliveries WHERE subscription_id = ?1", [key])?;
            Ok(tx.execute("DELETE FROM subscriptions WHERE id = ?1", [key])? > 0)
        })
        .await
    }

    async fn replay(
        &self,
        subscription: Subscription,
        from: Option<Timestamp>,
        to: Option<Timestamp>,
        from_seq: i64,
    ) -> Result<Replayed, StoreError> {
        // The matching events are found on a read connection, so a long scan never holds up
        // the writer; only their deliveries are written there.
        let pattern = subscription.topic_pattern.clone();
        let owner = subscription.client_id.clone();
        let (found, next_seq) = self
            .read(move |conn| {
                let mut f = Filters::new(
                    "SELECT seq, id, client_id, event_type FROM events WHERE seq >= ?1",
                );
                f.args.push(SqlValue::Integer(from_seq));
                if let Some(owner) = &owner {
                    f.add(" AND client_id = ?#", SqlValue::Text(owner.clone()));
                }
                if let Some(from) = from {
                    f.add(
                        " AND received_at >= ?#",
                        SqlValue::Integer(from.as_micros()),
                    );
                }
                if let Some(to) = to {
                    f.add(" AND received_at < ?#", SqlValue::Integer(to.as_micros()));
                }
                f.sql.push_str(" ORDER BY seq");
                let mut stmt = conn.prepare(&f.sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(f.args))?;
                let mut found: Vec<(i64, Uuid, String, String)> = Vec::new();
                while let Some(row) = rows.next()? {
                    let event_type: String = row.get(3)?;
                    if !pattern.matches(&event_type) {
                        continue;
                    }
                    let seq: i64 = row.get(0)?;
                    if found.len() == MAX_REPLAY {
                        return Ok((found, Some(seq)));
                    }
                    found.push((seq, uuid_at(row, 1)?, row.get(2)?, event_type));
                }
                Ok((found, None))
            })
            .await?;
        let queued = found.len();
        let index = SubscriptionIndex::new(std::iter::once(&Subscription {
            is_active: true,
            ..subscription
        }));
        self.write(move |tx| {
            let mut deliveries = Vec::with_capacity(found.len());
            for (seq, id, client, event_type) in &found {
                index.queue(*seq, *id, client, event_type, &mut deliveries);
            }
            let mut insert = Prepared::new(&INSERT_DELIVERIES);
            insert_deliveries(tx, &mut insert, &deliveries, Timestamp::now())?;
            Ok(())
        })
        .await?;
        Ok(Replayed { queued, next_seq })
    }

    async fn claim_deliveries(
        &self,
        claim: ClaimFor,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        self.write(move |tx| {
            let (filter, subscription) = match claim {
                ClaimFor::Push => ("pull = 0", None),
                ClaimFor::Pull(id) => ("pull = 1 AND subscription_id = ?4", Some(id)),
            };
            let sql = format!(
                "UPDATE deliveries SET status = 'PROCESSING', next_retry_at = ?2 WHERE id IN \
                 (SELECT id FROM deliveries WHERE status IN ('PENDING', 'PROCESSING') AND {filter} \
                 AND next_retry_at <= ?1 ORDER BY next_retry_at LIMIT ?3) \
                 RETURNING {DELIVERY_COLUMNS}"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let claimed: Vec<StoredDelivery> = match subscription {
                None => stmt
                    .query_map(
                        params![now.as_micros(), lease_until.as_micros(), limit as i64],
                        row_to_delivery,
                    )?
                    .collect::<Result<_, _>>()?,
                Some(id) => stmt
                    .query_map(
                        params![
                            now.as_micros(),
                            lease_until.as_micros(),
                            limit as i64,
                            id.as_bytes().as_slice()
                        ],
                        row_to_delivery,
                    )?
                    .collect::<Result<_, _>>()?,
            };
            drop(stmt);
            let seqs: Vec<i64> = claimed.iter().map(|d| d.event_seq).collect();
            let events = events_by_seq(tx, &seqs)?;
            let mut subscriptions: HashMap<Uuid, Option<Subscription>> = HashMap::new();
            let mut out = Vec::with_capacity(claimed.len());
            for delivery in claimed {
                let subscription = match subscriptions.get(&delivery.subscription_id) {
                    Some(s) => s.clone(),
                    None => {
                        let s = subscription_by_id(tx, delivery.subscription_id)?;
                        subscriptions.insert(delivery.subscription_id, s.clone());
                        s
                    }
                };
                match subscription {
                    Some(subscription) if subscription.is_active => {
                        // Not `remove`: one event may go to several subscriptions in one claim.
                        let event = events.get(&delivery.event_seq).cloned();
                        out.push(ClaimedDelivery {
                            delivery,
                            subscription,
                            event,
                        });
                    }
                    // A lease that ran out after its subscription was turned off.
                    _ => {
                        tx.execute(
                            "UPDATE deliveries SET status = 'FAILED', failure_reason = ?2, \
                             processed_at = ?3, next_retry_at = NULL WHERE id = ?1",
                            params![delivery.id, INACTIVE_REASON, now.as_micros()],
                        )?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn finish_attempts(&self, attempts: Vec<FinishedAttempt>) -> Result<(), StoreError> {
        let gone: Vec<Uuid> = attempts
            .iter()
            .filter(|a| matches!(a.outcome, crate::domain::bus::AttemptOutcome::Gone))
            .map(|a| a.subscription_id)
            .collect();
        let any_gone = !gone.is_empty();
        let job = move |tx: &rusqlite::Transaction<'_>| -> anyhow::Result<()> {
            let mut update = tx.prepare_cached(
                "UPDATE deliveries SET status = ?2, retry_count = retry_count + ?3, \
                 next_retry_at = ?4, processed_at = ?5, failure_reason = ?6, last_status_code = ?7 \
                 WHERE id = ?1 AND status = 'PROCESSING'",
            )?;
            for a in &attempts {
                let u = a.update();
                update.execute(params![
                    a.delivery_id,
                    u.status.as_str(),
                    u.retried,
                    u.next_retry_at.map(Timestamp::as_micros),
                    u.processed_at.map(Timestamp::as_micros),
                    a.failure_reason,
                    a.status_code,
                ])?;
            }
            drop(update);
            insert_logs(tx, attempts.iter().filter_map(|a| a.log.as_ref()))?;
            for id in &gone {
                let now = Timestamp::now();
                tx.execute(
                    "UPDATE subscriptions SET is_active = 0, disabled_reason = ?2, updated_at = ?3 \
                     WHERE id = ?1",
                    params![id.as_bytes().as_slice(), GONE_REASON, now.as_micros()],
                )?;
                fail_waiting(tx, *id, GONE_REASON, now)?;
            }
            Ok(())
        };
        if !any_gone {
            self.write(job).await
        } else {
            self.write_subscriptions(job).await
        }
    }

    async fn query_deliveries(
        &self,
        query: DeliveryQuery,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        self.read(move |conn| {
            let mut f = Filters::new(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE 1 = 1"
            ));
            if let Some(c) = &query.client_id {
                f.add(" AND client_id = ?#", SqlValue::Text(c.clone()));
            }
            if let Some(s) = query.subscription_id {
                f.add(
                    " AND subscription_id = ?#",
                    SqlValue::Blob(s.as_bytes().to_vec()),
                );
            }
            if let Some(s) = query.status {
                f.add(" AND status = ?#", SqlValue::Text(s.as_str().into()));
            }
            let f = f.page("created_at", &query.page);
            let mut stmt = conn.prepare(&f.sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(f.args), row_to_delivery)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn get_delivery(&self, id: i64) -> Result<Option<StoredDelivery>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"
                ))?
                .query_row([id], row_to_delivery)
                .optional()?)
        })
        .await
    }

    async fn retry_delivery(
        &self,
        id: i64,
        owner: Option<String>,
    ) -> Result<RetryOutcome, StoreError> {
        self.write(move |tx| {
            let Some(delivery) = tx
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1 \
                     AND (?2 IS NULL OR client_id = ?2)"
                ))?
                .query_row(params![id, owner], row_to_delivery)
                .optional()?
            else {
                return Ok(RetryOutcome::NotFound);
            };
            if delivery.status != DeliveryStatus::Failed {
                return Ok(RetryOutcome::NotFailed(delivery));
            }
            match subscription_by_id(tx, delivery.subscription_id)? {
                Some(s) if s.is_active => {}
                _ => return Ok(RetryOutcome::SubscriptionInactive),
            }
            let now = Timestamp::now().as_micros();
            let queued = tx
                .prepare_cached(&format!(
                    "UPDATE deliveries SET status = 'PENDING', retry_count = 0, next_retry_at = ?2, \
                     failure_reason = NULL, processed_at = NULL WHERE id = ?1 RETURNING {DELIVERY_COLUMNS}"
                ))?
                .query_row(params![id, now], row_to_delivery)?;
            Ok(RetryOutcome::Queued(queued))
        })
        .await
    }

    async fn record_integration_logs(
        &self,
        logs: Vec<NewIntegrationLog>,
    ) -> Result<Vec<i64>, StoreError> {
        self.write(move |tx| Ok(insert_logs(tx, logs.iter())?))
            .await
    }

    async fn query_integration_logs(
        &self,
        query: IntegrationLogQuery,
    ) -> Result<Vec<StoredIntegrationLog>, StoreError> {
        self.read(move |conn| {
            let mut f = Filters::new(&format!(
                "SELECT {LOG_COLUMNS} FROM integration_logs WHERE 1 = 1"
            ));
            if let Some(c) = &query.client_id {
                f.add(" AND client_id = ?#", SqlValue::Text(c.clone()));
            }
            if let Some(n) = &query.integration_name {
                f.add(" AND integration_name = ?#", SqlValue::Text(n.clone()));
            }
            if let Some(o) = query.operation {
                f.add(" AND operation = ?#", SqlValue::Text(o.as_str().into()));
            }
            if let Some(s) = query.success {
                f.add(" AND success = ?#", SqlValue::Integer(i64::from(s)));
            }
            if let Some(d) = query.delivery_id {
                f.add(" AND delivery_id = ?#", SqlValue::Integer(d));
            }
            let f = f.page("occurred_at", &query.page);
            let mut stmt = conn.prepare(&f.sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(f.args), row_to_log)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn create_integration(&self, i: Integration) -> Result<bool, StoreError> {
        self.write(move |tx| {
            Ok(tx.execute(
                &format!(
                    "INSERT INTO integrations ({INTEGRATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (name) DO NOTHING"
                ),
                params![
                    i.name,
                    i.client_id,
                    i.verification.as_str(),
                    i.secret,
                    i.event_type,
                    i.created_at.as_micros()
                ],
            )? == 1)
        })
        .await
    }

    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {INTEGRATION_COLUMNS} FROM integrations ORDER BY name"
            ))?;
            let rows = stmt.query_map([], row_to_integration)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn get_integration(&self, name: String) -> Result<Option<Integration>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE name = ?1"
                ))?
                .query_row([name], row_to_integration)
                .optional()?)
        })
        .await
    }

    async fn delete_integration(&self, name: String) -> Result<bool, StoreError> {
        self.write(move |tx| {
            Ok(tx.execute("DELETE FROM integrations WHERE name = ?1", [name])? > 0)
        })
        .await
    }

    async fn delete_deliveries_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.write(move |tx| {
            let at = before.as_micros();
            let deliveries = tx.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE created_at < ?1 \
                 AND status IN ('COMPLETED', 'FAILED') LIMIT ?2)",
                params![at, limit as i64],
            )?;
            let logs = tx.execute(
                "DELETE FROM integration_logs WHERE id IN (SELECT id FROM integration_logs \
                 WHERE occurred_at < ?1 LIMIT ?2)",
                params![at, limit as i64],
            )?;
            Ok((deliveries + logs) as u64)
        })
        .await
    }
}

fn insert_logs<'a>(
    conn: &Connection,
    logs: impl Iterator<Item = &'a NewIntegrationLog>,
) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO integration_logs (client_id, integration_name, operation, external_id, \
         request_data, response_data, http_status_code, success, error_message, occurred_at, \
         delivery_id, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         RETURNING id",
    )?;
    let mut ids = Vec::new();
    for l in logs {
        ids.push(stmt.query_row(
            params![
                l.client_id,
                l.integration_name,
                l.operation.as_str(),
                l.external_id,
                l.request_data,
                l.response_data,
                l.http_status_code,
                l.success,
                l.error_message,
                l.occurred_at.as_micros(),
                l.delivery_id,
                l.duration_ms,
            ],
            |r| r.get(0),
        )?);
    }
    Ok(ids)
}
