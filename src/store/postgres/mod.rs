//! The PostgreSQL store (`ANNALS_DATABASE_URL=postgres://…`): any number of `annals serve`
//! processes share one database. A writer task per node (`writer.rs`) group-commits through the
//! pool; reads use the pool directly.
//!
//! Invariants:
//! - Migrations and partition creation run under an advisory lock, so nodes starting together
//!   don't race.
//! - `events` is partitioned by month of `received_at`; partitions for this month and the next
//!   two exist before any write (made at start and re-checked every hour).
//! - A lost connection is `StoreError::Unavailable` (→ 503); the pool reconnects by itself.

mod analytics;
mod bus;
mod integrity;
mod query;
mod writer;

use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{Datelike, TimeZone, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use self::query::{EVENT_COLUMNS, Filters, Part, page_sql, to_datetime};
use self::writer::WriterCommand;
use super::copy::{BATCH_BYTES, CopiedEvent, CopyRows, CopyTable};
use super::{
    AppendOutcome, CLIENTS_SQL, COMMIT_CHANNEL_CAPACITY, CommittedRange, EventPage, EventQuery,
    PAGE_BYTE_BUDGET, Store, StoreError, TYPE_RANGES, TYPES_SQL, TypeRanges,
};
use crate::domain::access::{KeyPatch, KeyRecord, KeySelector, LastAdmin, Scopes};
use crate::domain::audit::{AuditQuery, AuditRecord, StoredAudit};
use crate::domain::security::{
    NewSecurityEvent, SecurityEventType, SecurityQuery, Severity, StoredSecurityEvent,
};
use crate::domain::{ClientId, EventFormat, NewEvent, StoredEvent, Timestamp};
use crate::ingest::{QueueFull, WriteQueue};
use crate::store::indexed::IndexedField;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// Channel on which key changes are announced to every node.
const KEYS_CHANNEL: &str = "annals_keys";

/// Advisory lock key for schema changes (migrations, partitions): "annals" in ASCII.
const SCHEMA_LOCK: i64 = 0x616e_6e61_6c73;
/// Advisory lock key held by the node running event retention.
const RETENTION_LOCK: i64 = 0x616e_6e61_6c73_7265;

#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pub url: String,
    pub queue_jobs: usize,
    pub queue_bytes: usize,
    pub pool_size: usize,
    pub query_timeout: Duration,
    /// `data` fields given an expression index (`ANNALS_INDEXED_FIELDS`).
    pub indexed_fields: Vec<IndexedField>,
}

pub struct PostgresStore {
    pool: Pool,
    commits: broadcast::Sender<CommittedRange>,
    key_changes: broadcast::Sender<()>,
    listener: JoinHandle<()>,
    queue: WriteQueue<WriterCommand>,
    writer: Mutex<Option<JoinHandle<()>>>,
    partitions: JoinHandle<()>,
    query_timeout: Duration,
    indexed_fields: Vec<IndexedField>,
    /// `describe` of the connection settings, for `Store::location`.
    location: String,
}

/// The database a connection config reaches, without its user or password:
/// `postgres://host:port[,host:port…]/dbname`.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// Runs pending migrations, then creates the indexed fields' expression indexes, under the
/// schema lock.
async fn migrate(
    config: &tokio_postgres::Config,
    indexed_fields: &[IndexedField],
) -> anyhow::Result<()> {
    let (mut client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let conn_task = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    let mut result = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map(drop)
        .map_err(|e| super::migration_error("PostgreSQL database", e));
    for field in indexed_fields {
        if result.is_ok() {
            // On the partitioned parent: every partition, present and future, gets it.
            result = client
                .batch_execute(&format!(
                    "CREATE INDEX IF NOT EXISTS {} ON events ({})",
                    field.index_name(),
                    field.postgres_expr()
                ))
                .await
                .with_context(|| format!("creating index {}", field.index_name()));
        }
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
        .await?;
    result?;
    ensure_partitions(&client).await?;
    drop(client);
    let _ = conn_task.await;
    Ok(())
}

/// Creates the monthly partitions for this month and the next two, if missing.
async fn ensure_partitions(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let now = Utc::now();
    let months: Vec<(i32, u32)> = (0..3)
        .map(|ahead| {
            let month0 = now.month0() + ahead;
            (now.year() + (month0 / 12) as i32, month0 % 12 + 1)
        })
        .collect();
    create_partitions(client, &months).await
}

/// Creates the partitions of the given `(year, month)`s, if missing, under the schema lock.
async fn create_partitions(
    client: &tokio_postgres::Client,
    months: &[(i32, u32)],
) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    let mut result = Ok(());
    for &(year, month) in months {
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let from = Utc
            .with_ymd_and_hms(year, month, 1, 0, 0, 0)
            .single()
            .context("month start")?;
        let to = Utc
            .with_ymd_and_hms(next_year, next_month, 1, 0, 0, 0)
            .single()
            .context("month end")?;
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS events_{year:04}_{month:02} PARTITION OF events \
             FOR VALUES FROM ('{}') TO ('{}')",
            from.to_rfc3339(),
            to.to_rfc3339()
        );
        if let Err(e) = client.batch_execute(&sql).await {
            result = Err(anyhow::Error::new(e).context("creating an events partition"));
            break;
        }
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
        .await?;
    result
}

impl PostgresStore {
    pub async fn open(options: PostgresOptions) -> anyhow::Result<Self> {
        let config = tokio_postgres::Config::from_str(&options.url)
            .context("parsing ANNALS_DATABASE_URL")?;
        migrate(&config, &options.indexed_fields).await?;
        let location = describe(&config);
        let (commits, _) = broadcast::channel(COMMIT_CHANNEL_CAPACITY);
        let (key_changes, _) = broadcast::channel(16);
        let (listening, heard) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listen(
            config.clone(),
            commits.clone(),
            key_changes.clone(),
            listening,
        ));
        // Commits made before this node listens are not heard by its subscribers; wait for the
        // `LISTEN` (bounded: a slow database only delays what the listener reports anyway).
        if tokio::time::timeout(LISTEN_WAIT, heard).await.is_err() {
            tracing::warn!("not yet listening for commits; starting anyway");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .context("building the PostgreSQL pool")?;
        let (queue, rx) = WriteQueue::new(options.queue_jobs, options.queue_bytes);
        let writer = tokio::spawn(writer::run(pool.clone(), rx));
        let partitions = tokio::spawn(keep_partitions(pool.clone()));
        Ok(Self {
            pool,
            commits,
            key_changes,
            listener,
            queue,
            writer: Mutex::new(Some(writer)),
            partitions,
            query_timeout: options.query_timeout,
            indexed_fields: options.indexed_fields,
            location,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Tells every node (this one included, through its `LISTEN`) that keys changed.
    async fn announce_key_change(&self, db: &deadpool_postgres::Object) -> Result<(), StoreError> {
        db.execute("SELECT pg_notify($1, '')", &[&KEYS_CHANNEL])
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Opens a key change's transaction. Under `LastAdmin::Keep` it first takes the table's
/// `EXCLUSIVE` lock (reads, and so authentication, go on), so two admins removing each other's
/// keys at once are serialized and the second's `keep_an_admin` sees the first's change.
async fn begin_key_change(
    db: &mut deadpool_postgres::Object,
    last_admin: LastAdmin,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    let tx = db.transaction().await.map_err(unavailable)?;
    if last_admin == LastAdmin::Keep {
        tx.batch_execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
            .await
            .map_err(unavailable)?;
    }
    Ok(tx)
}

/// Under `LastAdmin::Keep`, fails the key change in `tx` (dropped, so rolled back) if it left
/// no active admin key.
async fn keep_an_admin(
    tx: &deadpool_postgres::Transaction<'_>,
    last_admin: LastAdmin,
) -> Result<(), StoreError> {
    if last_admin == LastAdmin::MayGo {
        return Ok(());
    }
    let remains: bool = tx
        .query_one(&crate::store::admin_key_remains_sql("now()"), &[])
        .await
        .map_err(unavailable)?
        .get(0);
    if remains {
        Ok(())
    } else {
        Err(StoreError::LastAdminKey)
    }
}

/// One key's row, inserted (by a pooled connection or inside a transaction).
async fn insert_key_row(
    db: &impl deadpool_postgres::GenericClient,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    db.execute(
        &format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ),
        &[
            &key.key_id,
            &key.client_id.as_str(),
            &key.name,
            &key.scopes.to_list(),
            &key.rate_limit.map(|r| r.min(i32::MAX as u32) as i32),
            &key.is_active,
            &to_datetime(key.created_at.as_micros()),
            &key.expires_at.map(|t| to_datetime(t.as_micros())),
            &key.secret_hash.as_slice(),
        ],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// A failed event query: past `statement_timeout` it was too broad; a database's refusal is
/// ours to fix; anything else means the database is unavailable.
fn query_error(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
        StoreError::QueryTooBroad
    } else if e.as_db_error().is_some() {
        StoreError::Internal(anyhow::Error::new(e))
    } else {
        unavailable(e)
    }
}

/// The parts a query is split into, listed with loose index scans in the page's snapshot: a
/// pattern query's `(client, type)` pairs (`EventQuery::reads_type_ranges`), or an admin
/// query's clients (`splits_by_client`). `None` when the query is not split, or the clients,
/// seeks or parts are more than a merge takes.
async fn merge_parts(
    tx: &deadpool_postgres::Transaction<'_>,
    q: &EventQuery,
) -> Result<Option<Vec<Part>>, tokio_postgres::Error> {
    let by_type = q.reads_type_ranges();
    if !by_type && !query::splits_by_client(q) {
        return Ok(None);
    }
    let clients: Vec<String> = match &q.client_id {
        Some(client) => vec![client.as_str().to_string()],
        None => {
            let most = TYPE_RANGES as i64 + 1;
            let rows = tx.query(CLIENTS_SQL, &[&most]).await?;
            if rows.len() > TYPE_RANGES {
                return Ok(None);
            }
            rows.iter().map(|r| r.get(0)).collect()
        }
    };
    let Some(pattern) = q.event_type.as_ref().filter(|_| by_type) else {
        return Ok(Some(clients.into_iter().map(|c| (c, None)).collect()));
    };
    let (low, high) = pattern.type_range();
    let mut ranges = TypeRanges::new(pattern, clients.len());
    for client in &clients {
        let rows = tx
            .query(TYPES_SQL, &[client, &low, &high, &ranges.listing_limit()])
            .await?;
        if !ranges.take(client, rows.iter().map(|r| r.get(0))) {
            return Ok(None);
        }
    }
    Ok(Some(
        ranges
            .into_pairs()
            .into_iter()
            .map(|(client, event_type)| (client, Some(event_type)))
            .collect(),
    ))
}

/// How long opening the store waits for its first `LISTEN`.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// Listens on `annals_events` (every node's commits, this one's included) and republishes the
/// ranges; `listening` is told once the first `LISTEN` is in place. Reconnects after a second
/// when the connection drops; ranges committed meanwhile are not heard, so subscribers re-read
/// from their last seq after a gap.
async fn listen(
    config: tokio_postgres::Config,
    commits: broadcast::Sender<CommittedRange>,
    key_changes: broadcast::Sender<()>,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    use futures_util::StreamExt;
    let mut listening = Some(listening);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let forward = commits.clone();
                let keys = key_changes.clone();
                let driver = tokio::spawn(async move {
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n))
                                if n.channel() == KEYS_CHANNEL =>
                            {
                                let _ = keys.send(());
                            }
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if let Some(range) = CommittedRange::parse(n.payload()) {
                                    let _ = forward.send(range);
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                });
                if let Err(e) = client
                    .batch_execute("LISTEN annals_events; LISTEN annals_keys")
                    .await
                {
                    tracing::warn!(error = %e, "LISTEN failed");
                    driver.abort();
                } else {
                    if let Some(listening) = listening.take() {
                        let _ = listening.send(());
                    }
                    // Changes made while not listening were missed: drop every cached key.
                    let _ = key_changes.send(());
                    let _ = driver.await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Re-checks partitions every hour so a long-running node always has next month's.
async fn keep_partitions(pool: Pool) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = ensure_partitions(&client).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not create event partitions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not create event partitions"),
        }
    }
}

/// Monthly partitions of `events` (named `events_YYYY_MM`) that end at or before `cutoff`.
async fn expired_partitions(
    tx: &deadpool_postgres::Transaction<'_>,
    cutoff: chrono::DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let rows = tx
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass",
            &[],
        )
        .await
        .map_err(unavailable)?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|name| partition_end(name).is_some_and(|end| end <= cutoff))
        .collect())
}

/// The first instant after the month a partition named `events_YYYY_MM` holds.
fn partition_end(name: &str) -> Option<chrono::DateTime<Utc>> {
    let (year, month) = name.strip_prefix("events_")?.split_once('_')?;
    let (year, month): (i32, u32) = (year.parse().ok()?, month.parse().ok()?);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()
}

fn row_to_event(row: &Row) -> StoredEvent {
    let occurred: chrono::DateTime<Utc> = row.get(9);
    let received: chrono::DateTime<Utc> = row.get(10);
    StoredEvent {
        seq: row.get(0),
        id: row.get(1),
        client_id: row.get(2),
        event_type: row.get(3),
        user_id: row.get(4),
        data: row.get(5),
        event_id: row.get(6),
        source: row.get(7),
        subject: row.get(8),
        occurred_at: Timestamp::from_micros(occurred.timestamp_micros()),
        received_at: Timestamp::from_micros(received.timestamp_micros()),
        correlation_id: row.get(11),
        status: row.get(12),
        ip_address: row.get(13),
        headers: row.get(14),
        partition_key: row.get(15),
        format: EventFormat::from_code(row.get::<_, i16>(16).into()),
    }
}

const AUDIT_COLUMNS: &str = "id, at, client_id, key_id, method, route, path, status, latency_us, ip, \
user_agent, request_id, request_body, response_body";

fn row_to_audit(r: &Row) -> StoredAudit {
    let at: chrono::DateTime<Utc> = r.get(1);
    let status: i16 = r.get(7);
    StoredAudit {
        id: r.get(0),
        record: AuditRecord {
            at: Timestamp::from_micros(at.timestamp_micros()),
            client_id: r.get(2),
            key_id: r.get(3),
            method: r.get(4),
            route: r.get(5),
            path: r.get(6),
            status: status as u16,
            latency_us: r.get(8),
            ip: r.get(9),
            user_agent: r.get(10),
            request_id: r.get(11),
            request_body: r.get(12),
            response_body: r.get(13),
        },
    }
}

/// Inserts audit records with one `INSERT … SELECT FROM UNNEST(…)`; with `ids`, under those row
/// ids (`annals copy`, which then moves the id sequence past them in the same transaction),
/// else under new ones.
async fn insert_audit<'r>(
    db: &impl deadpool_postgres::GenericClient,
    records: impl Iterator<Item = &'r AuditRecord> + Clone,
    ids: Option<Vec<i64>>,
) -> Result<(), StoreError> {
    fn column<'r, T>(
        records: impl Iterator<Item = &'r AuditRecord>,
        f: impl Fn(&'r AuditRecord) -> T,
    ) -> Vec<T> {
        records.map(f).collect()
    }
    let at = column(records.clone(), |r| to_datetime(r.at.as_micros()));
    if at.is_empty() {
        return Ok(());
    }
    let client = column(records.clone(), |r| r.client_id.as_deref());
    let key = column(records.clone(), |r| r.key_id.as_deref());
    let method = column(records.clone(), |r| r.method.as_str());
    let route = column(records.clone(), |r| r.route.as_deref());
    let path = column(records.clone(), |r| r.path.as_str());
    let status = column(records.clone(), |r| r.status as i16);
    let latency = column(records.clone(), |r| r.latency_us);
    let ip = column(records.clone(), |r| r.ip.as_deref());
    let agent = column(records.clone(), |r| r.user_agent.as_deref());
    let request = column(records.clone(), |r| r.request_id.as_deref());
    let request_body = column(records.clone(), |r| r.request_body.as_deref());
    let response_body = column(records, |r| r.response_body.as_deref());
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &at,
        &client,
        &key,
        &method,
        &route,
        &path,
        &status,
        &latency,
        &ip,
        &agent,
        &request,
        &request_body,
        &response_body,
    ];
    let (id_column, id_array) = match &ids {
        Some(ids) => {
            params.push(ids);
            ("id, ", "$14::bigint[], ")
        }
        None => ("", ""),
    };
    db.execute(
        &format!(
            "INSERT INTO audit_logs ({id_column}at, client_id, key_id, method, route, path, status, \
             latency_us, ip, user_agent, request_id, request_body, response_body) SELECT * FROM \
             UNNEST({id_array}$1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::smallint[], $8::bigint[], $9::text[], $10::text[], $11::text[], \
             $12::text[], $13::text[])"
        ),
        &params,
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Up to `limit` rows of `table` with ids above `after`, oldest first (`annals copy`).
async fn rows_after(
    db: &deadpool_postgres::Object,
    columns: &str,
    table: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Row>, StoreError> {
    db.query(
        &format!("SELECT {columns} FROM {table} WHERE id > $1 ORDER BY id LIMIT $2"),
        &[&after, &limit],
    )
    .await
    .map_err(unavailable)
}

/// After rows went in under ids of their own, moves `table`'s id sequence past them, so new
/// rows never take one of those ids.
async fn move_id_sequence(
    db: &impl deadpool_postgres::GenericClient,
    table: &str,
) -> Result<(), StoreError> {
    db.execute(
        &format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             greatest((SELECT max(id) FROM {table}), 1))"
        ),
        &[],
    )
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// The columns a security event is recorded with, in `SecurityValues::params`' order.
const SECURITY_WRITES: &str = "client_id, event_type, severity, user_id, ip_address, user_agent, \
event_details, requires_review, occurred_at, dedup_key, count";

/// A security event's values for `SECURITY_WRITES` (`event_details` goes in as text, to be
/// cast to `jsonb`).
struct SecurityValues<'e> {
    event: &'e NewSecurityEvent,
    event_type: &'static str,
    severity: &'static str,
    occurred_at: chrono::DateTime<Utc>,
}

impl<'e> SecurityValues<'e> {
    fn of(event: &'e NewSecurityEvent) -> Self {
        Self {
            event,
            event_type: event.event_type.as_str(),
            severity: event.severity.as_str(),
            occurred_at: to_datetime(event.occurred_at.as_micros()),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 11] {
        let e = self.event;
        [
            &e.client_id,
            &self.event_type,
            &self.severity,
            &e.user_id,
            &e.ip_address,
            &e.user_agent,
            &e.details,
            &e.requires_review,
            &self.occurred_at,
            &e.dedup_key,
            &e.count,
        ]
    }
}

const SECURITY_COLUMNS: &str = "id, client_id, event_type, severity, user_id, ip_address, user_agent, \
event_details::text, requires_review, reviewed_by, reviewed_at, occurred_at, dedup_key, count";

fn row_to_security(row: &Row) -> Result<StoredSecurityEvent, StoreError> {
    let bad = |e: String| StoreError::Internal(anyhow::anyhow!("stored security event: {e}"));
    let event_type: String = row.get(2);
    let severity: String = row.get(3);
    let occurred: chrono::DateTime<Utc> = row.get(11);
    let reviewed: Option<chrono::DateTime<Utc>> = row.get(10);
    Ok(StoredSecurityEvent {
        id: row.get(0),
        event: NewSecurityEvent {
            client_id: row.get(1),
            event_type: SecurityEventType::parse(&event_type).map_err(bad)?,
            severity: Severity::parse(&severity).map_err(bad)?,
            user_id: row.get(4),
            ip_address: row.get(5),
            user_agent: row.get(6),
            details: row.get(7),
            requires_review: row.get(8),
            occurred_at: Timestamp::from_micros(occurred.timestamp_micros()),
            dedup_key: row.get(12),
            count: row.get(13),
        },
        reviewed_by: row.get(9),
        reviewed_at: reviewed.map(|t| Timestamp::from_micros(t.timestamp_micros())),
    })
}

const KEY_COLUMNS: &str =
    "key_id, client_id, name, scopes, rate_limit, is_active, created_at, expires_at, secret_hash";

fn row_to_key(row: &Row) -> Result<KeyRecord, StoreError> {
    let bad = |what: &str| StoreError::Internal(anyhow::anyhow!("stored key has a bad {what}"));
    let client: String = row.get(1);
    let scopes: String = row.get(3);
    let rate_limit: Option<i32> = row.get(4);
    let created: chrono::DateTime<Utc> = row.get(6);
    let expires: Option<chrono::DateTime<Utc>> = row.get(7);
    let hash: Vec<u8> = row.get(8);
    Ok(KeyRecord {
        key_id: row.get(0),
        client_id: ClientId::parse_owned(client).map_err(|_| bad("client id"))?,
        name: row.get(2),
        scopes: Scopes::parse_list(&scopes).map_err(|_| bad("scope list"))?,
        rate_limit: rate_limit.map(|r| r.max(0) as u32),
        is_active: row.get(5),
        created_at: Timestamp::from_micros(created.timestamp_micros()),
        expires_at: expires.map(|t| Timestamp::from_micros(t.timestamp_micros())),
        secret_hash: hash.try_into().map_err(|_| bad("secret hash"))?,
    })
}

fn selector_sql(selector: &KeySelector) -> (&'static str, String) {
    match selector {
        KeySelector::KeyId(id) => ("key_id = $1", id.clone()),
        KeySelector::Client(client) => ("client_id = $1", client.as_str().to_string()),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    async fn append(&self, events: Vec<NewEvent>) -> Result<AppendOutcome, StoreError> {
        let bytes = events.iter().map(NewEvent::approx_bytes).sum();
        let (reply, rx) = oneshot::channel();
        self.queue
            .try_submit(WriterCommand::Append { events, reply }, bytes)
            .map_err(|e| match e {
                QueueFull::Full => StoreError::Overloaded {
                    retry_after_secs: 1,
                },
                QueueFull::Closed => {
                    StoreError::Unavailable(String::from("the store is shutting down"))
                }
            })?;
        rx.await
            .map_err(|_| StoreError::Unavailable(String::from("the writer stopped")))?
    }

    async fn query_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let mut client = self.client().await?;
        let mut tx = client.build_transaction().read_only(true);
        if query.reads_type_ranges() || query::splits_by_client(&query) {
            // The listing of parts and the page read one snapshot: a type or client committed
            // between them can't leave newer events out of the page.
            tx = tx.isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        }
        let tx = tx.start().await.map_err(unavailable)?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            self.query_timeout.as_millis()
        ))
        .await
        .map_err(unavailable)?;
        let parts = merge_parts(&tx, &query).await.map_err(query_error)?;
        let (sql, args) = page_sql(&query, &self.indexed_fields, parts.as_deref());
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = tx.query(&sql, &params).await.map_err(query_error)?;
        let _ = tx.commit().await;
        let mut page = EventPage::default();
        let mut bytes = 0usize;
        for row in &rows {
            if page.events.len() == query.limit || bytes >= PAGE_BYTE_BUDGET {
                page.next_after = page.events.last().map(|e| e.seq);
                break;
            }
            let event = row_to_event(row);
            bytes += event.approx_bytes();
            page.events.push(event);
        }
        Ok(page)
    }

    async fn get_event(
        &self,
        client: Option<ClientId>,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let db = self.client().await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
        let row = db.query_opt(&sql, &[&id]).await.map_err(unavailable)?;
        Ok(row
            .map(|r| row_to_event(&r))
            .filter(|e| client.as_ref().is_none_or(|c| c.as_str() == e.client_id)))
    }

    async fn insert_key(&self, key: KeyRecord) -> Result<(), StoreError> {
        let db = self.client().await?;
        insert_key_row(&db, &key).await?;
        self.announce_key_change(&db).await?;
        Ok(())
    }

    async fn insert_first_key(&self, key: KeyRecord) -> Result<bool, StoreError> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(unavailable)?;
        // Held to the commit: a node starting at the same time waits here, then finds this
        // node's key. Reads of the table go on meanwhile.
        tx.batch_execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
            .await
            .map_err(unavailable)?;
        let any: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM api_keys)", &[])
            .await
            .map_err(unavailable)?
            .get(0);
        if !any {
            insert_key_row(&tx, &key).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        if !any {
            self.announce_key_change(&db).await?;
        }
        Ok(!any)
    }

    async fn find_key(&self, key_id: String) -> Result<Option<KeyRecord>, StoreError> {
        let db = self.client().await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1");
        db.query_opt(&sql, &[&key_id])
            .await
            .map_err(unavailable)?
            .map(|r| row_to_key(&r))
            .transpose()
    }

    async fn list_keys(&self, client: Option<ClientId>) -> Result<Vec<KeyRecord>, StoreError> {
        let db = self.client().await?;
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR client_id = $1 ORDER BY created_at, key_id"
        );
        let client = client.as_ref().map(ClientId::as_str);
        db.query(&sql, &[&client])
            .await
            .map_err(unavailable)?
            .iter()
            .map(row_to_key)
            .collect()
    }

    async fn delete_keys(
        &self,
        selector: KeySelector,
        last_admin: LastAdmin,
    ) -> Result<Vec<String>, StoreError> {
        let mut db = self.client().await?;
        let tx = begin_key_change(&mut db, last_admin).await?;
        let (cond, arg) = selector_sql(&selector);
        let rows = tx
            .query(
                &format!("DELETE FROM api_keys WHERE {cond} RETURNING key_id"),
                &[&arg],
            )
            .await
            .map_err(unavailable)?;
        keep_an_admin(&tx, last_admin).await?;
        tx.commit().await.map_err(unavailable)?;
        self.announce_key_change(&db).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn update_key(
        &self,
        key_id: String,
        patch: KeyPatch,
        last_admin: LastAdmin,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut db = self.client().await?;
        let tx = begin_key_change(&mut db, last_admin).await?;
        let sql = format!(
            "UPDATE api_keys SET name = COALESCE($2, name), scopes = COALESCE($3, scopes), \
             rate_limit = CASE WHEN $4 THEN $5 ELSE rate_limit END, is_active = COALESCE($6, is_active), \
             expires_at = CASE WHEN $7 THEN $8 ELSE expires_at END \
             WHERE key_id = $1 RETURNING {KEY_COLUMNS}"
        );
        let row = tx
            .query_opt(
                &sql,
                &[
                    &key_id,
                    &patch.name,
                    &patch.scopes.map(|s| s.to_list()),
                    &patch.rate_limit.is_some(),
                    &patch
                        .rate_limit
                        .flatten()
                        .map(|r| r.min(i32::MAX as u32) as i32),
                    &patch.is_active,
                    &patch.expires_at.is_some(),
                    &patch
                        .expires_at
                        .flatten()
                        .map(|t| to_datetime(t.as_micros())),
                ],
            )
            .await
            .map_err(unavailable)?;
        keep_an_admin(&tx, last_admin).await?;
        tx.commit().await.map_err(unavailable)?;
        self.announce_key_change(&db).await?;
        row.map(|r| row_to_key(&r)).transpose()
    }

    async fn toggle_keys(&self, selector: KeySelector) -> Result<Vec<KeyRecord>, StoreError> {
        let db = self.client().await?;
        let (cond, arg) = selector_sql(&selector);
        let rows = db
            .query(
                &format!("UPDATE api_keys SET is_active = NOT is_active WHERE {cond} RETURNING {KEY_COLUMNS}"),
                &[&arg],
            )
            .await
            .map_err(unavailable)?;
        self.announce_key_change(&db).await?;
        rows.iter().map(row_to_key).collect()
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        let db = self.client().await?;
        insert_audit(&db, records.iter(), None).await
    }

    async fn query_audit(&self, query: AuditQuery) -> Result<Vec<StoredAudit>, StoreError> {
        let db = self.client().await?;
        let mut f = Filters::new(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_logs WHERE TRUE"
        ));
        if let Some(c) = &query.client_id {
            f.add(" AND client_id = $#", Box::new(c.as_str().to_string()));
        }
        if let Some(e) = &query.endpoint {
            f.add(
                " AND (route = $# OR substr(path, 1, length($#)) = $#)",
                Box::new(e.clone()),
            );
        }
        if let Some(m) = &query.method {
            f.add(" AND method = $#", Box::new(m.clone()));
        }
        if let Some(st) = query.status {
            f.add(" AND status = $#", Box::new(st as i16));
        }
        if query.failed {
            f.add(" AND status >= $#", Box::new(400_i16));
        }
        let f = f.page("at", &query.page);
        let rows = db.query(&f.sql, &f.params()).await.map_err(unavailable)?;
        Ok(rows.iter().map(row_to_audit).collect())
    }

    async fn delete_events_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut db = self.client().await?;
        let cutoff = to_datetime(before.as_micros());
        let tx = db.transaction().await.map_err(unavailable)?;
        // One node at a time; the others find the lock taken and skip this round.
        let leader: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
            .await
            .map_err(unavailable)?
            .get(0);
        if !leader {
            return Ok(0);
        }
        // The last seq in the Merkle tree: no event after it goes (see the trait).
        let hashed: i64 = tx
            .query_one("SELECT base_seq + size FROM merkle_state WHERE id = 1", &[])
            .await
            .map_err(unavailable)?
            .get(0);
        for partition in expired_partitions(&tx, cutoff).await? {
            let unhashed: bool = tx
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM {partition} WHERE seq > $1)"),
                    &[&hashed],
                )
                .await
                .map_err(unavailable)?
                .get(0);
            if unhashed {
                tracing::warn!(
                    partition,
                    "event retention keeps an expired partition until the Merkle tree has taken its events"
                );
                continue;
            }
            tx.batch_execute(&format!("DROP TABLE {partition}"))
                .await
                .map_err(unavailable)?;
            tracing::info!(partition, "event retention dropped a partition");
        }
        let keys = tx
            .execute(
                "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
                 WHERE received_at < $1 AND event_seq <= $3 LIMIT $2)",
                &[&cutoff, &(limit as i64), &hashed],
            )
            .await
            .map_err(unavailable)?;
        let events = tx
            .execute(
                "DELETE FROM events WHERE received_at < $1 AND seq IN (SELECT seq FROM events \
                 WHERE received_at < $1 AND seq <= $3 ORDER BY seq LIMIT $2)",
                &[&cutoff, &(limit as i64), &hashed],
            )
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        // Keep the caller looping while either table still has a full batch to go.
        Ok(events.max(keys))
    }

    async fn delete_audit_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let db = self.client().await?;
        db.execute(
            "DELETE FROM audit_logs WHERE id IN (SELECT id FROM audit_logs WHERE at < $1 ORDER BY id LIMIT $2)",
            &[&to_datetime(before.as_micros()), &(limit as i64)],
        )
        .await
        .map_err(unavailable)
    }

    async fn record_security(&self, events: Vec<NewSecurityEvent>) -> Result<Vec<i64>, StoreError> {
        let db = self.client().await?;
        let stmt = db
            .prepare_cached(&format!(
                "INSERT INTO security_events ({SECURITY_WRITES}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10, $11) \
                 ON CONFLICT (dedup_key) DO UPDATE SET count = security_events.count + excluded.count \
                 RETURNING id"
            ))
            .await
            .map_err(unavailable)?;
        let mut ids = Vec::with_capacity(events.len());
        for e in &events {
            let values = SecurityValues::of(e);
            let row = db
                .query_one(&stmt, &values.params())
                .await
                .map_err(unavailable)?;
            ids.push(row.get(0));
        }
        Ok(ids)
    }

    async fn query_security(
        &self,
        query: SecurityQuery,
    ) -> Result<Vec<StoredSecurityEvent>, StoreError> {
        let db = self.client().await?;
        let mut f = Filters::new(&format!(
            "SELECT {SECURITY_COLUMNS} FROM security_events WHERE TRUE"
        ));
        if let Some(c) = &query.client_id {
            f.add(" AND client_id = $#", Box::new(c.clone()));
        }
        if let Some(t) = query.event_type {
            f.add(" AND event_type = $#", Box::new(t.as_str()));
        }
        if let Some(s) = query.severity {
            f.add(" AND severity = $#", Box::new(s.as_str()));
        }
        if let Some(r) = query.requires_review {
            f.add(" AND requires_review = $#", Box::new(r));
        }
        let f = f.page("occurred_at", &query.page);
        let rows = db.query(&f.sql, &f.params()).await.map_err(unavailable)?;
        rows.iter().map(row_to_security).collect()
    }

    async fn review_security(
        &self,
        id: i64,
        client: Option<String>,
        reviewer: String,
    ) -> Result<Option<StoredSecurityEvent>, StoreError> {
        let db = self.client().await?;
        let sql = format!(
            "UPDATE security_events SET reviewed_by = $3, reviewed_at = now(), requires_review = FALSE \
             WHERE id = $1 AND ($2::text IS NULL OR client_id = $2) RETURNING {SECURITY_COLUMNS}"
        );
        let row = db
            .query_opt(&sql, &[&id, &client, &reviewer])
            .await
            .map_err(unavailable)?;
        row.map(|r| row_to_security(&r)).transpose()
    }

    async fn copy_out(
        &self,
        table: CopyTable,
        after: i64,
        limit: usize,
    ) -> Result<CopyRows, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut db = self.client().await?;
        match table {
            CopyTable::Events => {
                // One snapshot: the events, their keys and the sequence agree.
                let tx = db
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(unavailable)?;
                // The snapshot is taken here, so the rows below agree with it.
                let last_assigned: i64 = tx
                    .query_one("SELECT last_seq FROM event_sequence WHERE id = 1", &[])
                    .await
                    .map_err(unavailable)?
                    .get(0);
                let stream = tx
                    .query_raw(
                        &format!(
                            "SELECT {EVENT_COLUMNS}, (SELECT k.content_hash FROM idempotency_keys k \
                             WHERE k.client_id = e.client_id AND k.source = coalesce(e.source, '') \
                             AND k.event_id = e.event_id AND k.event_seq = e.seq) \
                             FROM events e WHERE e.seq > $1 ORDER BY e.seq LIMIT $2"
                        ),
                        [&after as &(dyn tokio_postgres::types::ToSql + Sync), &limit],
                    )
                    .await
                    .map_err(unavailable)?;
                let mut rows = Vec::new();
                {
                    use futures_util::TryStreamExt;
                    // Dropped before the commit: rows past the byte budget are discarded.
                    let mut stream = std::pin::pin!(stream);
                    let mut bytes = 0;
                    while bytes <= BATCH_BYTES
                        && let Some(row) = stream.try_next().await.map_err(unavailable)?
                    {
                        let event = row_to_event(&row);
                        bytes += event.data.len() + event.headers.len();
                        rows.push((event, row));
                    }
                }
                tx.commit().await.map_err(unavailable)?;
                let mut events = Vec::with_capacity(rows.len());
                for (event, row) in rows {
                    let hash: Option<Vec<u8>> = row.get(17);
                    let content_hash = hash.map(super::stored_hash).transpose()?;
                    events.push(CopiedEvent {
                        event,
                        content_hash,
                    });
                }
                Ok(CopyRows::Events {
                    events,
                    last_assigned,
                })
            }
            CopyTable::Security => Ok(CopyRows::Security(
                rows_after(&db, SECURITY_COLUMNS, "security_events", after, limit)
                    .await?
                    .iter()
                    .map(row_to_security)
                    .collect::<Result<_, _>>()?,
            )),
            CopyTable::Audit => Ok(CopyRows::Audit(
                rows_after(&db, AUDIT_COLUMNS, "audit_logs", after, limit)
                    .await?
                    .iter()
                    .map(row_to_audit)
                    .collect(),
            )),
        }
    }

    async fn copy_in(&self, rows: CopyRows) -> Result<(), StoreError> {
        match rows {
            CopyRows::Events {
                events,
                last_assigned,
            } => {
                let imported = CopiedEvent::into_imported_all(events)?;
                writer::import(&self.pool, &imported, last_assigned).await
            }
            CopyRows::Keys(keys) => {
                let mut db = self.client().await?;
                let tx = db.transaction().await.map_err(unavailable)?;
                for key in &keys {
                    tx.execute("DELETE FROM api_keys WHERE key_id = $1", &[&key.key_id])
                        .await
                        .map_err(unavailable)?;
                    insert_key_row(&tx, key).await?;
                }
                tx.commit().await.map_err(unavailable)?;
                self.announce_key_change(&db).await
            }
            CopyRows::Security(events) => {
                let mut db = self.client().await?;
                let tx = db.transaction().await.map_err(unavailable)?;
                let stmt = tx
                    .prepare(&format!(
                        "INSERT INTO security_events (id, reviewed_by, reviewed_at, {SECURITY_WRITES}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, $11, $12, $13, $14) \
                         ON CONFLICT (id) DO UPDATE SET client_id = excluded.client_id, \
                         event_type = excluded.event_type, severity = excluded.severity, \
                         user_id = excluded.user_id, ip_address = excluded.ip_address, \
                         user_agent = excluded.user_agent, event_details = excluded.event_details, \
                         requires_review = excluded.requires_review, reviewed_by = excluded.reviewed_by, \
                         reviewed_at = excluded.reviewed_at, occurred_at = excluded.occurred_at, \
                         dedup_key = excluded.dedup_key, count = excluded.count"
                    ))
                    .await
                    .map_err(unavailable)?;
                for s in &events {
                    let values = SecurityValues::of(&s.event);
                    let reviewed_at = s.reviewed_at.map(|t| to_datetime(t.as_micros()));
                    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        vec![&s.id, &s.reviewed_by, &reviewed_at];
                    params.extend(values.params());
                    tx.execute(&stmt, &params)
                        .await
                        .map_err(writer::internal_or_unavailable)?;
                }
                move_id_sequence(&tx, "security_events").await?;
                tx.commit().await.map_err(unavailable)
            }
            CopyRows::Audit(records) => {
                let mut db = self.client().await?;
                let tx = db.transaction().await.map_err(unavailable)?;
                let ids = records.iter().map(|r| r.id).collect();
                insert_audit(&tx, records.iter().map(|r| &r.record), Some(ids)).await?;
                move_id_sequence(&tx, "audit_logs").await?;
                tx.commit().await.map_err(unavailable)
            }
        }
    }

    async fn copy_position(&self, table: CopyTable) -> Result<i64, StoreError> {
        let sql = match table {
            CopyTable::Events => "SELECT coalesce(max(seq), 0) FROM events",
            CopyTable::Security => "SELECT coalesce(max(id), 0) FROM security_events",
            CopyTable::Audit => "SELECT coalesce(max(id), 0) FROM audit_logs",
        };
        let db = self.client().await?;
        Ok(db.query_one(sql, &[]).await.map_err(unavailable)?.get(0))
    }

    async fn count_events_through(&self, through: i64) -> Result<i64, StoreError> {
        let db = self.client().await?;
        Ok(db
            .query_one("SELECT count(*) FROM events WHERE seq <= $1", &[&through])
            .await
            .map_err(unavailable)?
            .get(0))
    }

    fn commits(&self) -> broadcast::Receiver<CommittedRange> {
        self.commits.subscribe()
    }

    fn key_changes(&self) -> broadcast::Receiver<()> {
        self.key_changes.subscribe()
    }

    async fn health(&self) -> Result<(), StoreError> {
        if self
            .writer
            .lock()
            .map(|w| w.as_ref().is_none_or(|h| h.is_finished()))
            .unwrap_or(true)
        {
            return Err(StoreError::Unavailable(String::from(
                "the writer is not running",
            )));
        }
        let db = self.client().await?;
        db.query_one("SELECT 1", &[]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn shutdown(&self) {
        loop {
            match self.queue.try_submit(WriterCommand::Shutdown, 1) {
                Ok(()) | Err(QueueFull::Closed) => break,
                Err(QueueFull::Full) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.partitions.abort();
        self.listener.abort();
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_names_the_database_but_never_a_password() {
        let pg = |url: &str| describe(&tokio_postgres::Config::from_str(url).unwrap());
        assert_eq!(
            pg("postgres://annals:s3cret@db.internal:6432/events"),
            "postgres://db.internal:6432/events"
        );
        assert_eq!(
            pg("postgresql://u:pw@a,b:5433/x?sslmode=disable"),
            "postgres://a:5432,b:5433/x"
        );
    }
}
