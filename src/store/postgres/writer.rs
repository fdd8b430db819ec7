//! The PostgreSQL group-commit writer: one task per node that drains the write queue and commits
//! each group in one transaction.
//!
//! Invariants:
//! - Every group takes the `event_sequence` row lock first (`SELECT … FOR UPDATE`). That lock
//!   serializes writers across all nodes, so seq ranges are handed out in commit order and a
//!   rolled-back group gives its range back: `seq` is gapless across nodes.
//! - Idempotency keys are checked under that lock, so the same `event_id` sent to two nodes at
//!   once is stored once.
//! - Event rows go in with one binary `COPY` per group, idempotency keys with one
//!   `INSERT … SELECT FROM UNNEST(…)`: never row by row.
//! - `NOTIFY annals_events, '<first>-<last>[ push]'` is sent in the same transaction (` push`
//!   when the group queued webhook deliveries, which wakes every node's delivery worker): listeners hear of
//!   a seq range only once it is committed.
//! - A failing group is retried one append per transaction, so a failure stays with its request.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, Utc};
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use super::query::to_datetime;
use super::unavailable;
use crate::domain::analytics::EventCounts;
use crate::domain::bus::SubscriptionIndex;
use crate::domain::{NewEvent, Timestamp};
use crate::ingest::Queued;
use crate::ingest::idempotency::{self, StoredKey};
use crate::ingest::queue::next_group;
use crate::store::copy::{Imported, check_ascending};
use crate::store::{AppendOutcome, AppendedItem, CommittedRange, StoreError};

pub(super) type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriterCommand {
    Append {
        events: Vec<NewEvent>,
        reply: Reply<AppendOutcome>,
    },
    Shutdown,
}

struct PendingAppend {
    events: Vec<NewEvent>,
    reply: Reply<AppendOutcome>,
}

const MAX_GROUP_JOBS: usize = 512;

/// The subscription index a writer matches against, and the `subscriptions_version` it was
/// read at (`None` before the first group).
#[derive(Default)]
struct BusIndex {
    version: Option<i64>,
    index: Arc<SubscriptionIndex>,
}

pub(super) async fn run(pool: Pool, mut rx: mpsc::Receiver<Queued<WriterCommand>>) {
    let mut bus = BusIndex::default();
    while let Some(group) = next_group(&mut rx, MAX_GROUP_JOBS).await {
        let mut appends = Vec::with_capacity(group.len());
        let mut reservations = Vec::with_capacity(group.len());
        for queued in group {
            let (job, reservation) = queued.into_parts();
            reservations.push(reservation);
            match job {
                WriterCommand::Append { events, reply } => {
                    appends.push(PendingAppend { events, reply })
                }
                WriterCommand::Shutdown => rx.close(),
            }
        }
        commit_group(&pool, appends, &mut bus).await;
        drop(reservations);
    }
    tracing::info!("postgres writer stopped");
}

async fn commit_group(pool: &Pool, appends: Vec<PendingAppend>, bus: &mut BusIndex) {
    if appends.is_empty() {
        return;
    }
    match write_group(pool, &appends, bus).await {
        Ok(outcomes) => {
            for (append, outcome) in appends.into_iter().zip(outcomes) {
                let _ = append.reply.send(Ok(outcome));
            }
        }
        Err(e) if appends.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
            tracing::warn!(error = %e, jobs = appends.len(), "group commit failed; retrying its appends one by one");
            for append in appends {
                Box::pin(commit_group(pool, vec![append], bus)).await;
            }
        }
        Err(e) => {
            let is_unavailable = matches!(e, StoreError::Unavailable(_));
            let message = format!("{e:#}");
            if !is_unavailable {
                tracing::error!(error = %message, "append failed and was rolled back");
            }
            for append in appends {
                let error = if is_unavailable {
                    StoreError::Unavailable(message.clone())
                } else {
                    StoreError::Internal(anyhow::anyhow!("{message}"))
                };
                let _ = append.reply.send(Err(error));
            }
        }
    }
}

/// One event row for the binary `COPY`.
struct EventRow<'a> {
    seq: i64,
    id: Uuid,
    occurred_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    event: &'a NewEvent,
}

/// JSON text sent as `jsonb` without parsing it here (binary format: version 1, then the text).
#[derive(Debug)]
struct JsonText<'a>(&'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

const COPY_EVENTS: &str = "COPY events (seq, id, client_id, event_type, user_id, event_id, source, subject, \
correlation_id, status, ip_address, partition_key, occurred_at, received_at, data, headers, format) FROM STDIN BINARY";

const COPY_TYPES: [Type; 17] = [
    Type::INT8,
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::JSONB,
    Type::INT2,
];

/// Writes the group's rows with one binary `COPY` inside the transaction.
async fn copy_events(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[EventRow<'_>],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(COPY_EVENTS).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    for row in rows {
        let e = row.event;
        let ip = e.ip_address.map(|ip| ip.to_string());
        let format = e.format.code();
        let values: [&(dyn ToSql + Sync); 17] = [
            &row.seq,
            &row.id,
            &e.client_id.as_str(),
            &e.event_type.as_str(),
            &e.user_id,
            &e.event_id,
            &e.source,
            &e.subject,
            &e.correlation_id,
            &e.status,
            &ip,
            &e.partition_key,
            &row.occurred_at,
            &row.received_at,
            &JsonText(&e.data),
            &JsonText(&e.headers),
            &format,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

#[derive(Default)]
struct KeyColumns {
    client_id: Vec<String>,
    source: Vec<String>,
    event_id: Vec<String>,
    event_uuid: Vec<Uuid>,
    event_seq: Vec<i64>,
    content_hash: Vec<Vec<u8>>,
    received_at: Vec<DateTime<Utc>>,
}

impl KeyColumns {
    /// Adds the idempotency key of `event` (stored as `seq`, `id`), if it has one; returns it.
    fn push<'e>(
        &mut self,
        event: &'e NewEvent,
        seq: i64,
        id: Uuid,
        received_at: DateTime<Utc>,
    ) -> Option<(&'e str, &'e str, &'e str)> {
        let (c, s, e) = idempotency::key_of(event)?;
        self.client_id.push(c.to_string());
        self.source.push(s.to_string());
        self.event_id.push(e.to_string());
        self.event_uuid.push(id);
        self.event_seq.push(seq);
        self.content_hash.push(event.content_hash.to_vec());
        self.received_at.push(received_at);
        Some((c, s, e))
    }

    /// Inserts the keys with one `INSERT … SELECT FROM UNNEST(…)`.
    async fn insert(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
        if self.event_seq.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO idempotency_keys (client_id, source, event_id, event_uuid, event_seq, content_hash, received_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::bigint[], $6::bytea[], \
             $7::timestamptz[])",
            &[&self.client_id, &self.source, &self.event_id, &self.event_uuid, &self.event_seq, &self.content_hash, &self.received_at],
        )
        .await
        .map_err(internal_or_unavailable)?;
        Ok(())
    }
}

async fn write_group(
    pool: &Pool,
    appends: &[PendingAppend],
    bus: &mut BusIndex,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut client = pool.get().await.map_err(unavailable)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    let row = tx
        .query_one(
            "SELECT last_seq, subscriptions_version FROM event_sequence WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let first_seq: i64 = row.get(0);
    let version: i64 = row.get(1);
    if bus.version != Some(version) {
        // Read under the lock every subscription change takes: the set as of this group.
        bus.index = Arc::new(super::bus::load_index(&tx).await?);
        bus.version = Some(version);
    }
    let mut seq = first_seq;
    let received_at = Timestamp::now();
    let received = to_datetime(received_at.as_micros());
    let mut rows: Vec<EventRow<'_>> = Vec::new();
    let mut keys = KeyColumns::default();
    let mut outcomes = Vec::with_capacity(appends.len());

    let lookup = tx
        .prepare_cached(
            "SELECT k.client_id, k.source, k.event_id, k.event_uuid, k.content_hash \
             FROM idempotency_keys k \
             JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS q(client_id, source, event_id) \
               ON k.client_id = q.client_id AND k.source = q.source AND k.event_id = q.event_id",
        )
        .await
        .map_err(unavailable)?;
    // Keys written earlier in this group are not in the table yet; remember them here.
    let mut group_keys: HashMap<(String, String, String), StoredKey> = HashMap::new();

    for append in appends {
        let events = &append.events;
        let wanted: Vec<(&str, &str, &str)> =
            events.iter().filter_map(idempotency::key_of).collect();
        let mut stored: HashMap<(&str, &str, &str), StoredKey> = HashMap::new();
        if !wanted.is_empty() {
            let c: Vec<&str> = wanted.iter().map(|k| k.0).collect();
            let s: Vec<&str> = wanted.iter().map(|k| k.1).collect();
            let e: Vec<&str> = wanted.iter().map(|k| k.2).collect();
            for r in tx
                .query(&lookup, &[&c, &s, &e])
                .await
                .map_err(unavailable)?
            {
                let (rc, rs, re): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                let hash: Vec<u8> = r.get(4);
                let key = wanted
                    .iter()
                    .find(|k| k.0 == rc && k.1 == rs && k.2 == re)
                    .copied()
                    .expect("the row answers one of the keys asked for");
                stored.insert(
                    key,
                    StoredKey {
                        event_id: r.get(3),
                        content_hash: crate::store::stored_hash(hash)?,
                    },
                );
            }
            for key in &wanted {
                if let Some(k) =
                    group_keys.get(&(key.0.to_string(), key.1.to_string(), key.2.to_string()))
                {
                    stored.insert(*key, *k);
                }
            }
        }
        let plans = match idempotency::plan(events, &stored) {
            Ok(plans) => plans,
            Err(conflicts) => {
                outcomes.push(AppendOutcome::Conflict(conflicts));
                continue;
            }
        };
        let mut items: Vec<AppendedItem> = Vec::with_capacity(events.len());
        for (event, plan) in events.iter().zip(plans) {
            let item = match plan.resolved(&items) {
                Some(item) => item,
                None => {
                    seq += 1;
                    let id = Uuid::now_v7();
                    rows.push(EventRow {
                        seq,
                        id,
                        occurred_at: to_datetime(
                            event.occurred_at.unwrap_or(received_at).as_micros(),
                        ),
                        received_at: received,
                        event,
                    });
                    if let Some((c, s, e)) = keys.push(event, seq, id, received) {
                        group_keys.insert(
                            (c.to_string(), s.to_string(), e.to_string()),
                            StoredKey {
                                event_id: id,
                                content_hash: event.content_hash,
                            },
                        );
                    }
                    AppendedItem {
                        id,
                        duplicate: false,
                    }
                }
            };
            items.push(item);
        }
        outcomes.push(AppendOutcome::Stored(items));
    }

    if !rows.is_empty() {
        copy_events(&tx, &rows)
            .await
            .map_err(internal_or_unavailable)?;
    }
    keys.insert(&tx).await?;
    add_counts(&tx, rows.iter().map(|r| (r.event, received_at))).await?;
    let mut pushes = false;
    if !bus.index.is_empty() {
        let mut deliveries = Vec::new();
        for row in &rows {
            let e = row.event;
            bus.index.queue(
                row.seq,
                row.id,
                e.client_id.as_str(),
                e.event_type.as_str(),
                &mut deliveries,
            );
        }
        pushes = deliveries.iter().any(|d| !d.target.pull);
        super::bus::insert_deliveries(&tx, &deliveries, received_at).await?;
    }
    if seq > first_seq {
        let advance = tx
            .prepare_cached(
                "WITH advanced AS (UPDATE event_sequence SET last_seq = $1 WHERE id = 1) \
                 SELECT pg_notify('annals_events', $2)",
            )
            .await
            .map_err(unavailable)?;
        let range = CommittedRange {
            first: first_seq + 1,
            last: seq,
            pushes,
        };
        tx.query(&advance, &[&seq, &range.payload()])
            .await
            .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(outcomes)
}

/// Writes copied events in one transaction, keeping their seqs, ids and times, with their
/// idempotency keys, under the sequence row's lock like any group; raises the sequence to
/// `last_assigned`. Refuses seqs at or below the last assigned one, or out of order, so a seq
/// is never handed out twice. The months they were received in get their partitions first.
pub(super) async fn import(
    pool: &Pool,
    events: &[Imported],
    last_assigned: i64,
) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(unavailable)?;
    let mut months: Vec<(i32, u32)> = events
        .iter()
        .map(|e| {
            let at = to_datetime(e.received_at.as_micros());
            (at.year(), at.month())
        })
        .collect();
    months.sort_unstable();
    months.dedup();
    super::create_partitions(&client, &months)
        .await
        .map_err(StoreError::Internal)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    let last: i64 = tx
        .query_one(
            "SELECT last_seq FROM event_sequence WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(unavailable)?
        .get(0);
    let newest = check_ascending(events, last)
        .map_err(StoreError::Internal)?
        .max(last_assigned);
    let mut rows = Vec::with_capacity(events.len());
    let mut keys = KeyColumns::default();
    for e in events {
        let received_at = to_datetime(e.received_at.as_micros());
        rows.push(EventRow {
            seq: e.seq,
            id: e.id,
            occurred_at: to_datetime(e.event.occurred_at.unwrap_or(e.received_at).as_micros()),
            received_at,
            event: &e.event,
        });
        keys.push(&e.event, e.seq, e.id, received_at);
    }
    if !rows.is_empty() {
        copy_events(&tx, &rows)
            .await
            .map_err(internal_or_unavailable)?;
    }
    keys.insert(&tx).await?;
    add_counts(&tx, events.iter().map(|e| (&e.event, e.received_at))).await?;
    if newest > last {
        tx.execute(
            "UPDATE event_sequence SET last_seq = $1 WHERE id = 1",
            &[&newest],
        )
        .await
        .map_err(unavailable)?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(())
}

/// Adds events (each with when it was received) to the analytics rollups.
async fn add_counts<'e>(
    tx: &deadpool_postgres::Transaction<'_>,
    events: impl Iterator<Item = (&'e NewEvent, Timestamp)>,
) -> Result<(), StoreError> {
    let mut counts = EventCounts::default();
    for (event, received_at) in events {
        counts.add_event(event, received_at);
    }
    super::analytics::add_counts(tx, &counts).await
}

/// A database error from a statement (bad data, constraint) is internal; a lost connection is
/// unavailability.
pub(super) fn internal_or_unavailable(e: tokio_postgres::Error) -> StoreError {
    if e.as_db_error().is_some() {
        StoreError::Internal(anyhow::Error::new(e))
    } else {
        unavailable(e)
    }
}
