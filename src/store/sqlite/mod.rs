//! The embedded SQLite store: a WAL database file, one group-commit writer thread
//! (`writer.rs`) and a small pool of read-only connections used from `spawn_blocking`.
//!
//! Invariants:
//! - No SQLite call runs on an async worker thread: writes go through the writer's queue,
//!   reads through `read`, which hops to the blocking pool.
//! - Read connections are `query_only`; only the writer thread writes.
//! - `synchronous=FULL` (the default) makes each group commit durable before replies are sent.

mod analytics;
pub mod backup;
mod bus;
mod checkpoint;
mod heap;
mod integrity;
mod multi_row;
mod query;
pub mod serve_lock;
mod user_index;
mod wal_batch;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use self::multi_row::{MultiRowInsert, Prepared};
use self::query::{EVENT_COLUMNS, Filters, TOPIC_MATCH_FN, page_sql};
use self::writer::WriterCommand;
use super::copy::{BATCH_BYTES, CopiedEvent, CopyRows, CopyTable};
use super::{
    AppendOutcome, COMMIT_CHANNEL_CAPACITY, CommittedRange, EventPage, EventQuery,
    PAGE_BYTE_BUDGET, Store, StoreError,
};
use crate::domain::access::{KeyPatch, KeyRecord, KeySelector, LastAdmin, Scopes};
use crate::domain::audit::{AuditQuery, AuditRecord, StoredAudit};
use crate::domain::bus::SharedIndex;
use crate::domain::security::{
    NewSecurityEvent, SecurityEventType, SecurityQuery, Severity, StoredSecurityEvent,
};
use crate::domain::{ClientId, EventFormat, NewEvent, StoredEvent, Timestamp, TopicPattern};
use crate::ingest::{QueueFull, WriteQueue};
use crate::store::indexed::IndexedField;

mod embedded {
    refinery::embed_migrations!("src/store/sqlite/migrations");
}

mod audit_embedded {
    refinery::embed_migrations!("src/store/sqlite/audit_migrations");
}

/// The file a store path names, with symbolic links resolved (of the file, or of its directory
/// when the file does not exist yet), so that every name of one store (`b.db` linking to
/// `a.db`) leads to the same serve lock and audit database. Paths that can't be resolved
/// (no such directory) are kept as given, for the open to report.
pub fn real_path(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// The audit database's path: `annals.db` → `annals.audit.db`.
pub fn audit_path(events: &Path) -> PathBuf {
    let stem = events
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    events.with_file_name(format!("{stem}.audit.db"))
}

/// Opens the audit database: WAL, `synchronous=NORMAL` (audit records are best effort: a full
/// queue drops them too), migrated.
fn open_audit(path: &Path) -> anyhow::Result<Connection> {
    let mut conn = Connection::open(path)
        .with_context(|| format!("opening the audit database {}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
    )
    .context("configuring the audit database")?;
    audit_embedded::migrations::runner()
        .run(&mut conn)
        .map_err(|e| super::migration_error("audit database", e))?;
    Ok(conn)
}

/// The audit database's writing connection and its prepared batch `INSERT`s (declared first, so
/// dropped before the connection).
struct AuditWriter {
    insert: Prepared,
    conn: Connection,
}

/// A batch of thousands of audit records goes in a few dozen statement runs (`multi_row`); a
/// failure drops the batch anyway, hence `OR ROLLBACK`.
static AUDIT_INSERT: std::sync::LazyLock<MultiRowInsert> = std::sync::LazyLock::new(|| {
    MultiRowInsert::new(
        "INSERT OR ROLLBACK INTO audit_logs (at, client_id, key_id, method, route, path, status, \
         latency_us, ip, user_agent, request_id, request_body, response_body)",
        13,
    )
});

/// How hard SQLite syncs a commit to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged event survives power loss.
    Full,
    /// WAL `NORMAL`: survives a process crash; the last commits may be lost on power loss.
    Normal,
}

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub queue_jobs: usize,
    pub queue_bytes: usize,
    pub readers: u32,
    pub query_timeout: Duration,
    /// `data` fields given an expression index (`ANNALS_INDEXED_FIELDS`).
    pub indexed_fields: Vec<IndexedField>,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            queue_jobs: 8192,
            queue_bytes: 64 * 1024 * 1024,
            readers: 4,
            query_timeout: Duration::from_secs(5),
            indexed_fields: Vec::new(),
        }
    }
}

pub struct SqliteStore {
    queue: WriteQueue<WriterCommand>,
    readers: r2d2::Pool<SqliteConnectionManager>,
    /// The audit database: one writing connection (used by the audit writer task and retention,
    /// in `spawn_blocking`) and its own readers.
    audit_writer: Arc<Mutex<AuditWriter>>,
    audit_readers: r2d2::Pool<SqliteConnectionManager>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Raised by the writer while its commits fail for want of storage (see `health`).
    write_health: writer::WriteHealth,
    checkpointer: Mutex<Option<checkpoint::Checkpointer>>,
    commits: broadcast::Sender<CommittedRange>,
    key_changes: broadcast::Sender<()>,
    query_timeout: Duration,
    indexed_fields: Arc<[IndexedField]>,
    /// The database file as opened, for `health` and the writer to notice it was removed or
    /// replaced.
    file: Arc<StoreFile>,
    /// The same for the audit database, checked by `health` and before each audit write.
    audit_file: Arc<StoreFile>,
    /// The active subscriptions' index: read by the writer at each group, replaced on the
    /// writer thread after every subscription change (`bus.rs`).
    bus_index: SharedIndex,
}

/// A database file's identity (device and inode) when the store opened it. SQLite goes on
/// writing to an open file after its name is removed (`rm annals.db`) or pointed at another
/// file (a restore copied over it), and everything acknowledged from then on would be gone at
/// the next start; `check` lets health say so, and the writers refuse to write, while there is
/// still time to act.
#[derive(Debug)]
struct StoreFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl StoreFile {
    fn of(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Fails if the path no longer names the file the store has open. Blocking: call it off
    /// the async threads.
    fn check(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let same = std::fs::metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if same {
            Ok(())
        } else {
            anyhow::bail!(
                "{} was removed or replaced while this server had it open: what is written to \
                 it now goes to a file no name leads to and would be lost at the next start; \
                 stop the server and put the database back",
                self.path.display()
            )
        }
    }
}

/// The writer thread's name (within Linux's 15 characters, so `top`, `perf` and
/// `/proc/*/task/*/comm` show it whole; the benchmark finds the writer's CPU time by it).
pub const WRITER_THREAD: &str = "annals-writer";

/// Opens (creating if needed) the database file and applies pending migrations.
pub fn open_and_migrate(path: &Path, synchronous: Synchronous) -> anyhow::Result<Connection> {
    heap::install();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // With `synchronous = FULL` a commit's WAL writes can be gathered into one (see wal_batch).
    let mut conn = match synchronous {
        Synchronous::Full => Connection::open_with_flags_and_vfs(
            path,
            rusqlite::OpenFlags::default(),
            wal_batch::register()?,
        ),
        Synchronous::Normal => Connection::open(path),
    }
    .with_context(|| format!("opening SQLite database {}", path.display()))?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // Checkpoints are the checkpoint thread's job, so commits never pay for one.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;"
    ))
    .with_context(|| format!("configuring SQLite database {}", path.display()))?;
    embedded::migrations::runner()
        .run(&mut conn)
        .map_err(|e| super::migration_error("SQLite database", e))?;
    Ok(conn)
}

/// A fresh, migrated database in a temporary directory (removed when the directory drops).
#[cfg(test)]
pub(super) fn scratch_db() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open_and_migrate(&dir.path().join("scratch.db"), Synchronous::Normal).unwrap();
    (dir, conn)
}

/// A store on a fresh database in a temporary directory (keep the directory while it is used).
#[cfg(test)]
pub fn scratch_store() -> (tempfile::TempDir, Arc<dyn crate::store::Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("scratch.db"))).unwrap();
    (dir, Arc::new(store))
}

/// Stores a minimal event row straight into `events` (seq doubles as both times), for tests.
#[cfg(test)]
pub(super) fn insert_test_event(conn: &Connection, seq: i64, client: &str, user: Option<&str>) {
    conn.prepare_cached(
        "INSERT INTO events (seq, id, client_id, event_type, user_id, occurred_at, received_at, data, headers) \
         VALUES (?1, randomblob(16), ?2, 'test.item.created', ?3, ?1, ?1, '{}', '{}')",
    )
    .unwrap()
    .execute(params![seq, client, user])
    .unwrap();
}

/// Creates the expression index of each indexed data field (existing ones are kept).
pub(super) fn create_field_indexes(
    conn: &Connection,
    fields: &[IndexedField],
) -> anyhow::Result<()> {
    for field in fields {
        conn.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON events ({}, seq)",
            field.index_name(),
            field.sqlite_expr()
        ))
        .with_context(|| format!("creating index {}", field.index_name()))?;
    }
    Ok(())
}

fn configure_reader(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = 1;")?;
    conn.create_scalar_function(
        TOPIC_MATCH_FN,
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            // The pattern is the same for every row of a query; parse it once per statement.
            let pattern = ctx.get_or_create_aux(0, |v| {
                TopicPattern::parse(v.as_str()?)
                    .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))
            })?;
            let event_type: String = ctx.get(1)?;
            Ok(pattern.matches(&event_type))
        },
    )
}

/// One key's row, inserted.
/// Inserts `key`; with `Replace`, over any key of the same id (`annals copy`).
fn insert_key_row(
    tx: &rusqlite::Transaction<'_>,
    key: &KeyRecord,
    existing: Existing,
) -> anyhow::Result<()> {
    let verb = match existing {
        Existing::Refuse => "INSERT",
        Existing::Replace => "INSERT OR REPLACE",
    };
    tx.execute(
        &format!(
            "{verb} INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            key.key_id,
            key.client_id.as_str(),
            key.name,
            key.scopes.to_list(),
            key.rate_limit,
            key.is_active,
            key.created_at.as_micros(),
            key.expires_at.map(Timestamp::as_micros),
            key.secret_hash.as_slice(),
        ],
    )?;
    Ok(())
}

/// What an insert does about a row of the same id.
#[derive(Clone, Copy)]
enum Existing {
    Refuse,
    Replace,
}

impl SqliteStore {
    pub fn open(mut options: SqliteOptions) -> anyhow::Result<Self> {
        options.path = real_path(&options.path);
        let conn = open_and_migrate(&options.path, options.synchronous)?;
        let file = Arc::new(StoreFile::of(&options.path)?);
        create_field_indexes(&conn, &options.indexed_fields)?;
        let manager = SqliteConnectionManager::file(&options.path)
            .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_init(configure_reader);
        let readers = r2d2::Pool::builder()
            .max_size(options.readers.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .context("opening SQLite read connections")?;
        let wal_restart = checkpoint::WalRestart::default();
        let checkpointer = checkpoint::Checkpointer::start(&options.path, wal_restart.clone())?;
        let audit_file = audit_path(&options.path);
        let audit_writer = Arc::new(Mutex::new(AuditWriter {
            insert: Prepared::new(&AUDIT_INSERT),
            conn: open_audit(&audit_file)?,
        }));
        let audit_store_file = Arc::new(StoreFile::of(&audit_file)?);
        let audit_readers = r2d2::Pool::builder()
            .max_size(2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_secs(10))
            .build(
                SqliteConnectionManager::file(&audit_file)
                    .with_flags(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .with_init(|c| {
                        c.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = 1;")
                    }),
            )
            .context("opening audit read connections")?;
        let (queue, rx) = WriteQueue::new(options.queue_jobs, options.queue_bytes);
        let bus_index: SharedIndex = Arc::new(std::sync::RwLock::new(Arc::new(
            bus::load_index(&conn).context("reading the subscriptions")?,
        )));
        let (commits, _) = broadcast::channel(COMMIT_CHANNEL_CAPACITY);
        let writer_commits = commits.clone();
        let write_health = writer::WriteHealth::default();
        let writer_health = write_health.clone();
        let handle = std::thread::Builder::new()
            .name(String::from(WRITER_THREAD))
            .spawn({
                let file = file.clone();
                let bus_index = bus_index.clone();
                move || {
                    writer::run(
                        conn,
                        rx,
                        writer_commits,
                        wal_restart,
                        writer_health,
                        file,
                        bus_index,
                    )
                }
            })
            .context("starting the SQLite writer thread")?;
        Ok(Self {
            queue,
            readers,
            audit_writer,
            audit_readers,
            writer: Mutex::new(Some(handle)),
            write_health,
            checkpointer: Mutex::new(Some(checkpointer)),
            commits,
            key_changes: broadcast::channel(16).0,
            query_timeout: options.query_timeout,
            indexed_fields: options.indexed_fields.into(),
            file,
            audit_file: audit_store_file,
            bus_index,
        })
    }

    fn submit(&self, command: WriterCommand, bytes: usize) -> Result<(), StoreError> {
        self.queue.try_submit(command, bytes).map_err(|e| match e {
            QueueFull::Full => StoreError::Overloaded {
                retry_after_secs: 1,
            },
            QueueFull::Closed => {
                StoreError::Unavailable(String::from("the store is shutting down"))
            }
        })
    }

    /// Runs `job` on the writer thread, between two groups, and returns what it returned.
    async fn on_writer<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let command = WriterCommand::Exec(Box::new(move |conn: &mut Connection| {
            let _ = tx.send(job(conn));
        }));
        self.submit(command, 1024)?;
        rx.await
            .map_err(|_| StoreError::Unavailable(String::from("the writer stopped")))
    }

    /// Runs `job` on the writer thread in its own transaction and returns its result.
    async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&rusqlite::Transaction<'_>) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.on_writer(move |conn| {
            let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = job(&txn)?;
            txn.commit()?;
            Ok(value)
        })
        .await?
        .map_err(StoreError::Internal)
    }

    /// Runs `job` in a transaction on the audit database's writing connection.
    async fn write_audit<T: Send + 'static>(
        &self,
        job: impl FnOnce(&rusqlite::Transaction<'_>, &mut Prepared) -> anyhow::Result<T>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let writer = self.audit_writer.clone();
        let file = self.audit_file.clone();
        tokio::task::spawn_blocking(move || {
            // Records written to a removed audit file would be gone at the next start: refused,
            // so the audit task reports them as not stored.
            file.check()
                .map_err(|e| StoreError::Unavailable(format!("{e:#}")))?;
            let mut writer = writer.lock().map_err(|_| {
                StoreError::Internal(anyhow::anyhow!("audit connection lock poisoned"))
            })?;
            let AuditWriter { insert, conn } = &mut *writer;
            let tx = conn
                .transaction()
                .map_err(|e| StoreError::Internal(e.into()))?;
            let value = job(&tx, insert).map_err(StoreError::Internal)?;
            tx.commit().map_err(|e| StoreError::Internal(e.into()))?;
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::Internal(anyhow::anyhow!("audit write task failed: {e}")))?
    }

    /// `write` for key changes: announces them once committed. A change refused by
    /// `keep_an_admin` is rolled back and becomes `StoreError::LastAdminKey`.
    async fn write_keys<T: Send + 'static>(
        &self,
        job: impl FnOnce(&rusqlite::Transaction<'_>) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let result = self.write(job).await.map_err(|e| match e {
            StoreError::Internal(e) if e.is::<NoAdminLeft>() => StoreError::LastAdminKey,
            e => e,
        });
        let _ = self.key_changes.send(());
        result
    }

    /// Runs `job` on an audit-database read connection in the blocking pool.
    async fn read_audit<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        read_on(self.audit_readers.clone(), job).await
    }

    /// Runs `job` on a read connection in the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        read_on(self.readers.clone(), job).await
    }
}

/// Runs `job` on a connection from `pool`, in the blocking pool (never on an async thread).
async fn read_on<T: Send + 'static>(
    pool: r2d2::Pool<SqliteConnectionManager>,
    job: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || {
        let conn = pool
            .get()
            .map_err(|e| StoreError::Unavailable(format!("no read connection: {e}")))?;
        job(&conn).map_err(StoreError::Internal)
    })
    .await
    .map_err(|e| StoreError::Internal(anyhow::anyhow!("read task failed: {e}")))?
}

fn row_to_event(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let id: Vec<u8> = row.get(1)?;
    Ok(StoredEvent {
        seq: row.get(0)?,
        id: Uuid::from_slice(&id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e))
        })?,
        client_id: row.get(2)?,
        event_type: row.get(3)?,
        user_id: row.get(4)?,
        data: row.get(5)?,
        event_id: row.get(6)?,
        source: row.get(7)?,
        subject: row.get(8)?,
        occurred_at: Timestamp::from_micros(row.get(9)?),
        received_at: Timestamp::from_micros(row.get(10)?),
        correlation_id: row.get(11)?,
        status: row.get(12)?,
        ip_address: row.get(13)?,
        headers: row.get(14)?,
        partition_key: row.get(15)?,
        format: EventFormat::from_code(row.get(16)?),
    })
}

const AUDIT_COLUMNS: &str = "id, at, client_id, key_id, method, route, path, status, latency_us, ip, \
user_agent, request_id, request_body, response_body";

fn row_to_audit(r: &Row<'_>) -> rusqlite::Result<StoredAudit> {
    Ok(StoredAudit {
        id: r.get(0)?,
        record: AuditRecord {
            at: Timestamp::from_micros(r.get(1)?),
            client_id: r.get(2)?,
            key_id: r.get(3)?,
            method: r.get(4)?,
            route: r.get(5)?,
            path: r.get(6)?,
            status: r.get(7)?,
            latency_us: r.get(8)?,
            ip: r.get(9)?,
            user_agent: r.get(10)?,
            request_id: r.get(11)?,
            request_body: r.get(12)?,
            response_body: r.get(13)?,
        },
    })
}

/// Up to `limit` rows of `table` with ids above `after`, oldest first (`annals copy`).
fn rows_after<T>(
    conn: &Connection,
    columns: &str,
    table: &str,
    after: i64,
    limit: i64,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {columns} FROM {table} WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map([after, limit], map)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The columns a security event is recorded with, in `security_values`' order.
const SECURITY_WRITES: &str = "client_id, event_type, severity, user_id, ip_address, user_agent, \
event_details, requires_review, occurred_at, dedup_key, count";

/// `e`'s values for `SECURITY_WRITES`.
fn security_values(e: &NewSecurityEvent) -> [rusqlite::types::Value; 11] {
    [
        e.client_id.clone().into(),
        e.event_type.as_str().to_string().into(),
        e.severity.as_str().to_string().into(),
        e.user_id.clone().into(),
        e.ip_address.clone().into(),
        e.user_agent.clone().into(),
        e.details.clone().into(),
        e.requires_review.into(),
        e.occurred_at.as_micros().into(),
        e.dedup_key.clone().into(),
        e.count.into(),
    ]
}

const SECURITY_COLUMNS: &str = "id, client_id, event_type, severity, user_id, ip_address, user_agent, \
event_details, requires_review, reviewed_by, reviewed_at, occurred_at, dedup_key, count";

fn row_to_security(row: &Row<'_>) -> rusqlite::Result<StoredSecurityEvent> {
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    let event_type: String = row.get(2)?;
    let severity: String = row.get(3)?;
    Ok(StoredSecurityEvent {
        id: row.get(0)?,
        event: NewSecurityEvent {
            client_id: row.get(1)?,
            event_type: SecurityEventType::parse(&event_type).map_err(|e| bad(2, e))?,
            severity: Severity::parse(&severity).map_err(|e| bad(3, e))?,
            user_id: row.get(4)?,
            ip_address: row.get(5)?,
            user_agent: row.get(6)?,
            details: row.get(7)?,
            requires_review: row.get(8)?,
            occurred_at: Timestamp::from_micros(row.get(11)?),
            dedup_key: row.get(12)?,
            count: row.get(13)?,
        },
        reviewed_by: row.get(9)?,
        reviewed_at: row.get::<_, Option<i64>>(10)?.map(Timestamp::from_micros),
    })
}

const KEY_COLUMNS: &str =
    "key_id, client_id, name, scopes, rate_limit, is_active, created_at, expires_at, secret_hash";

fn row_to_key(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    let client: String = row.get(1)?;
    let scopes: String = row.get(3)?;
    let hash: Vec<u8> = row.get(8)?;
    Ok(KeyRecord {
        key_id: row.get(0)?,
        client_id: ClientId::parse_owned(client).map_err(|e| bad(1, e))?,
        name: row.get(2)?,
        scopes: Scopes::parse_list(&scopes).map_err(|e| bad(3, e))?,
        rate_limit: row.get(4)?,
        is_active: row.get(5)?,
        created_at: Timestamp::from_micros(row.get(6)?),
        expires_at: row.get::<_, Option<i64>>(7)?.map(Timestamp::from_micros),
        secret_hash: hash
            .try_into()
            .map_err(|_| bad(8, String::from("secret hash is not 32 bytes")))?,
    })
}

/// A key change's own refusal under `LastAdmin::Keep`, turned into `StoreError::LastAdminKey`
/// by `write_keys` once the transaction has rolled back.
#[derive(Debug, thiserror::Error)]
#[error("that would leave no active admin key")]
struct NoAdminLeft;

/// Under `LastAdmin::Keep`, fails the key change in `tx` (which the writer then rolls back)
/// if it left no active admin key. The writer thread runs one change at a time, so the check
/// and the change are atomic.
fn keep_an_admin(tx: &rusqlite::Transaction<'_>, last_admin: LastAdmin) -> anyhow::Result<()> {
    if last_admin == LastAdmin::MayGo {
        return Ok(());
    }
    let remains: bool = tx.query_row(
        &crate::store::admin_key_remains_sql("?1"),
        [Timestamp::now().as_micros()],
        |r| r.get(0),
    )?;
    if remains {
        Ok(())
    } else {
        Err(NoAdminLeft.into())
    }
}

fn selector_sql(selector: &KeySelector) -> (&'static str, String) {
    match selector {
        KeySelector::KeyId(id) => ("key_id = ?1", id.clone()),
        KeySelector::Client(client) => ("client_id = ?1", client.as_str().to_string()),
    }
}

fn is_interrupt(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<rusqlite::Error>(),
        Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::OperationInterrupted
    )
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn location(&self) -> String {
        self.file.path.display().to_string()
    }

    async fn append(&self, events: Vec<NewEvent>) -> Result<AppendOutcome, StoreError> {
        let bytes = events.iter().map(NewEvent::approx_bytes).sum();
        let (reply, rx) = oneshot::channel();
        self.submit(WriterCommand::Append { events, reply }, bytes)?;
        rx.await
            .map_err(|_| StoreError::Unavailable(String::from("the writer stopped")))?
    }

    async fn query_events(&self, query: EventQuery) -> Result<EventPage, StoreError> {
        let deadline = Instant::now() + self.query_timeout;
        let indexed = self.indexed_fields.clone();
        let result = self
            .read(move |conn| {
                conn.progress_handler(10_000, Some(move || Instant::now() > deadline))?;
                let result = (|| -> anyhow::Result<EventPage> {
                    // The type listing and the page read one snapshot (see `query`).
                    let _snapshot = query
                        .reads_type_ranges()
                        .then(|| conn.unchecked_transaction())
                        .transpose()?;
                    let ranges = query::pattern_ranges(conn, &query)?;
                    let (sql, args) = page_sql(&query, &indexed, ranges.as_deref());
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                    let mut page = EventPage::default();
                    let mut bytes = 0usize;
                    while let Some(row) = rows.next()? {
                        if page.events.len() == query.limit || bytes >= PAGE_BYTE_BUDGET {
                            page.next_after = page.events.last().map(|e| e.seq);
                            break;
                        }
                        let event = row_to_event(row)?;
                        bytes += event.approx_bytes();
                        page.events.push(event);
                    }
                    Ok(page)
                })();
                conn.progress_handler(0, None::<fn() -> bool>)?;
                result
            })
            .await;
        match result {
            Err(StoreError::Internal(e)) if is_interrupt(&e) => Err(StoreError::QueryTooBroad),
            other => other,
        }
    }

    async fn get_event(
        &self,
        client: Option<ClientId>,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1");
            let mut stmt = conn.prepare_cached(&sql)?;
            let event = stmt
                .query_row([id.as_bytes().as_slice()], row_to_event)
                .optional()?;
            // Tenant check outside SQL keeps one cached statement; a foreign event is "not found".
            Ok(event.filter(|e| client.as_ref().is_none_or(|c| c.as_str() == e.client_id)))
        })
        .await
    }

    async fn insert_key(&self, key: KeyRecord) -> Result<(), StoreError> {
        self.write_keys(move |tx| insert_key_row(tx, &key, Existing::Refuse))
            .await
    }

    async fn insert_first_key(&self, key: KeyRecord) -> Result<bool, StoreError> {
        // On the writer thread, in one `BEGIN IMMEDIATE`: nothing can insert in between.
        self.write_keys(move |tx| {
            let any: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM api_keys)", [], |r| r.get(0))?;
            if any {
                return Ok(false);
            }
            insert_key_row(tx, &key, Existing::Refuse)?;
            Ok(true)
        })
        .await
    }

    async fn find_key(&self, key_id: String) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?1");
            Ok(conn
                .prepare_cached(&sql)?
                .query_row([key_id], row_to_key)
                .optional()?)
        })
        .await
    }

    async fn list_keys(&self, client: Option<ClientId>) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR client_id = ?1 ORDER BY created_at, key_id"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([client.as_ref().map(ClientId::as_str)], row_to_key)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete_keys(
        &self,
        selector: KeySelector,
        last_admin: LastAdmin,
    ) -> Result<Vec<String>, StoreError> {
        self.write_keys(move |tx| {
            let (cond, arg) = selector_sql(&selector);
            let mut stmt = tx.prepare(&format!(
                "DELETE FROM api_keys WHERE {cond} RETURNING key_id"
            ))?;
            let ids = stmt.query_map([arg], |r| r.get(0))?;
            let ids = ids.collect::<Result<Vec<String>, _>>()?;
            keep_an_admin(tx, last_admin)?;
            Ok(ids)
        })
        .await
    }

    async fn update_key(
        &self,
        key_id: String,
        patch: KeyPatch,
        last_admin: LastAdmin,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.write_keys(move |tx| {
            let sql = format!(
                "UPDATE api_keys SET name = COALESCE(?2, name), scopes = COALESCE(?3, scopes), \
                 rate_limit = CASE WHEN ?4 THEN ?5 ELSE rate_limit END, is_active = COALESCE(?6, is_active), \
                 expires_at = CASE WHEN ?7 THEN ?8 ELSE expires_at END \
                 WHERE key_id = ?1 RETURNING {KEY_COLUMNS}"
            );
            let updated = tx
                .prepare(&sql)?
                .query_row(
                    params![
                        key_id,
                        patch.name,
                        patch.scopes.map(|s| s.to_list()),
                        patch.rate_limit.is_some(),
                        patch.rate_limit.flatten(),
                        patch.is_active,
                        patch.expires_at.is_some(),
                        patch.expires_at.flatten().map(Timestamp::as_micros),
                    ],
                    row_to_key,
                )
                .optional()?;
            keep_an_admin(tx, last_admin)?;
            Ok(updated)
        })
        .await
    }

    async fn toggle_keys(&self, selector: KeySelector) -> Result<Vec<KeyRecord>, StoreError> {
        self.write_keys(move |tx| {
            let (cond, arg) = selector_sql(&selector);
            let mut stmt = tx.prepare(&format!(
                "UPDATE api_keys SET is_active = NOT is_active WHERE {cond} RETURNING {KEY_COLUMNS}"
            ))?;
            let keys = stmt.query_map([arg], row_to_key)?;
            Ok(keys.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn append_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write_audit(move |tx, insert| {
            insert.run(tx, &records, |row, r| {
                row.int(r.at.as_micros())
                    .opt_text(r.client_id.as_deref())
                    .opt_text(r.key_id.as_deref())
                    .text(&r.method)
                    .opt_text(r.route.as_deref())
                    .text(&r.path)
                    .int(r.status.into())
                    .int(r.latency_us)
                    .opt_text(r.ip.as_deref())
                    .opt_text(r.user_agent.as_deref())
                    .opt_text(r.request_id.as_deref())
                    .opt_text(r.request_body.as_deref())
                    .opt_text(r.response_body.as_deref());
            })?;
            Ok(())
        })
        .await
    }

    async fn query_audit(&self, query: AuditQuery) -> Result<Vec<StoredAudit>, StoreError> {
        self.read_audit(move |conn| {
            use rusqlite::types::Value as V;
            let mut f = Filters::new(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_logs WHERE 1 = 1"
            ));
            if let Some(c) = &query.client_id {
                f.add(" AND client_id = ?#", V::Text(c.as_str().to_string()));
            }
            if let Some(e) = &query.endpoint {
                f.add(
                    " AND (route = ?# OR substr(path, 1, length(?#)) = ?#)",
                    V::Text(e.clone()),
                );
            }
            if let Some(m) = &query.method {
                f.add(" AND method = ?#", V::Text(m.clone()));
            }
            if let Some(st) = query.status {
                f.add(" AND status = ?#", V::Integer(i64::from(st)));
            }
            if query.failed {
                f.add(" AND status >= ?#", V::Integer(400));
            }
            let f = f.page("at", &query.page);
            let mut stmt = conn.prepare(&f.sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(f.args), row_to_audit)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete_events_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.write(move |tx| {
            // The oldest rows by seq, up to the first one that is not old enough or not yet in
            // the Merkle tree: seq follows the time of receipt, so this is a prefix walk of the
            // primary key, never a scan.
            let last: Option<i64> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, received_at FROM events \
                     WHERE seq <= (SELECT base_seq + size FROM merkle_state WHERE id = 1) \
                     ORDER BY seq LIMIT ?1",
                )?;
                let mut rows = stmt.query([limit as i64])?;
                let mut last = None;
                while let Some(row) = rows.next()? {
                    if row.get::<_, i64>(1)? >= before.as_micros() {
                        break;
                    }
                    last = Some(row.get(0)?);
                }
                last
            };
            let Some(last) = last else {
                return Ok(0);
            };
            // Commits don't record the last seq; a delete that may take the newest events
            // must, or their seqs would be handed out again (see `writer`'s invariants).
            tx.prepare_cached("UPDATE event_sequence SET last_seq = max(last_seq, ?1) WHERE id = 1")?
                .execute([last])?;
            tx.execute("DELETE FROM idempotency_keys WHERE event_seq <= ?1", [last])?;
            // Each entry by its key, from the events going (the index has no seq order).
            tx.execute(
                "DELETE FROM user_index WHERE (u_client, u_user, u_seq) IN \
                 (SELECT client_id, user_id, seq FROM events WHERE seq <= ?1 AND user_id IS NOT NULL)",
                [last],
            )?;
            let n = tx.execute("DELETE FROM events WHERE seq <= ?1", [last])?;
            Ok(n as u64)
        })
        .await
    }

    async fn delete_audit_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.write_audit(move |tx, _| {
            let n = tx.execute(
                "DELETE FROM audit_logs WHERE id IN (SELECT id FROM audit_logs WHERE at < ?1 ORDER BY id LIMIT ?2)",
                params![before.as_micros(), limit as i64],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_security(&self, events: Vec<NewSecurityEvent>) -> Result<Vec<i64>, StoreError> {
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO security_events ({SECURITY_WRITES}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (dedup_key) DO UPDATE SET count = count + excluded.count RETURNING id"
            ))?;
            let mut ids = Vec::with_capacity(events.len());
            for e in &events {
                ids.push(
                    stmt.query_row(rusqlite::params_from_iter(security_values(e)), |r| r.get(0))?,
                );
            }
            Ok(ids)
        })
        .await
    }

    async fn query_security(
        &self,
        query: SecurityQuery,
    ) -> Result<Vec<StoredSecurityEvent>, StoreError> {
        self.read(move |conn| {
            use rusqlite::types::Value as V;
            let mut f = Filters::new(&format!(
                "SELECT {SECURITY_COLUMNS} FROM security_events WHERE 1 = 1"
            ));
            if let Some(c) = &query.client_id {
                f.add(" AND client_id = ?#", V::Text(c.clone()));
            }
            if let Some(t) = query.event_type {
                f.add(" AND event_type = ?#", V::Text(t.as_str().into()));
            }
            if let Some(s) = query.severity {
                f.add(" AND severity = ?#", V::Text(s.as_str().into()));
            }
            if let Some(r) = query.requires_review {
                f.add(" AND requires_review = ?#", V::Integer(i64::from(r)));
            }
            let f = f.page("occurred_at", &query.page);
            let mut stmt = conn.prepare(&f.sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(f.args), row_to_security)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn review_security(
        &self,
        id: i64,
        client: Option<String>,
        reviewer: String,
    ) -> Result<Option<StoredSecurityEvent>, StoreError> {
        self.write(move |tx| {
            let sql = format!(
                "UPDATE security_events SET reviewed_by = ?3, reviewed_at = ?4, requires_review = 0 \
                 WHERE id = ?1 AND (?2 IS NULL OR client_id = ?2) RETURNING {SECURITY_COLUMNS}"
            );
            Ok(tx
                .prepare(&sql)?
                .query_row(params![id, client, reviewer, Timestamp::now().as_micros()], row_to_security)
                .optional()?)
        })
        .await
    }

    async fn copy_out(
        &self,
        table: CopyTable,
        after: i64,
        limit: usize,
    ) -> Result<CopyRows, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match table {
            CopyTable::Events => {
                self.read(move |conn| {
                    // One snapshot: the events, their keys and the sequence agree.
                    let tx = conn.unchecked_transaction()?;
                    let mut keys = tx.prepare_cached(
                        "SELECT content_hash FROM idempotency_keys \
                         WHERE client_id = ?1 AND source = ?2 AND event_id = ?3 AND event_seq = ?4",
                    )?;
                    let mut stmt = tx.prepare_cached(&format!(
                        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                    ))?;
                    let mut events = Vec::new();
                    let mut bytes = 0;
                    for event in stmt.query_map([after, limit], row_to_event)? {
                        if bytes > BATCH_BYTES {
                            break;
                        }
                        let event = event?;
                        bytes += event.data.len() + event.headers.len();
                        let content_hash = match &event.event_id {
                            Some(event_id) => keys
                                .query_row(
                                    params![
                                        event.client_id,
                                        event.source.as_deref().unwrap_or(""),
                                        event_id,
                                        event.seq
                                    ],
                                    |r| r.get::<_, Vec<u8>>(0),
                                )
                                .optional()?
                                .map(super::stored_hash)
                                .transpose()?,
                            None => None,
                        };
                        events.push(CopiedEvent {
                            event,
                            content_hash,
                        });
                    }
                    let last_assigned = writer::load_last_seq(&tx)?;
                    Ok(CopyRows::Events {
                        events,
                        last_assigned,
                    })
                })
                .await
            }
            CopyTable::Security => Ok(CopyRows::Security(
                self.read(move |conn| {
                    rows_after(
                        conn,
                        SECURITY_COLUMNS,
                        "security_events",
                        after,
                        limit,
                        row_to_security,
                    )
                })
                .await?,
            )),
            CopyTable::Audit => Ok(CopyRows::Audit(
                self.read_audit(move |conn| {
                    rows_after(
                        conn,
                        AUDIT_COLUMNS,
                        "audit_logs",
                        after,
                        limit,
                        row_to_audit,
                    )
                })
                .await?,
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
                let bytes = imported.iter().map(|e| e.event.approx_bytes()).sum();
                let (reply, answer) = oneshot::channel();
                self.submit(
                    WriterCommand::Import {
                        events: imported,
                        last_assigned,
                        reply,
                    },
                    bytes,
                )?;
                answer
                    .await
                    .map_err(|_| StoreError::Unavailable(String::from("the writer stopped")))?
            }
            CopyRows::Keys(keys) => {
                self.write_keys(move |tx| {
                    for key in &keys {
                        insert_key_row(tx, key, Existing::Replace)?;
                    }
                    Ok(())
                })
                .await
            }
            CopyRows::Security(events) => {
                self.write(move |tx| {
                    let mut stmt = tx.prepare_cached(&format!(
                        "INSERT OR REPLACE INTO security_events (id, reviewed_by, reviewed_at, \
                         {SECURITY_WRITES}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                    ))?;
                    for s in &events {
                        let review = [
                            s.id.into(),
                            s.reviewed_by.clone().into(),
                            s.reviewed_at.map(Timestamp::as_micros).into(),
                        ];
                        stmt.execute(rusqlite::params_from_iter(
                            review.into_iter().chain(security_values(&s.event)),
                        ))?;
                    }
                    Ok(())
                })
                .await
            }
            CopyRows::Audit(records) => {
                self.write_audit(move |tx, _| {
                    let mut stmt = tx.prepare_cached(&format!(
                        "INSERT INTO audit_logs ({AUDIT_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                    ))?;
                    for a in &records {
                        let r = &a.record;
                        stmt.execute(params![
                            a.id,
                            r.at.as_micros(),
                            r.client_id,
                            r.key_id,
                            r.method,
                            r.route,
                            r.path,
                            r.status,
                            r.latency_us,
                            r.ip,
                            r.user_agent,
                            r.request_id,
                            r.request_body,
                            r.response_body,
                        ])?;
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    async fn copy_position(&self, table: CopyTable) -> Result<i64, StoreError> {
        let sql = match table {
            CopyTable::Events => "SELECT coalesce(max(seq), 0) FROM events",
            CopyTable::Security => "SELECT coalesce(max(id), 0) FROM security_events",
            CopyTable::Audit => "SELECT coalesce(max(id), 0) FROM audit_logs",
        };
        let read = move |conn: &Connection| Ok(conn.query_row(sql, [], |r| r.get(0))?);
        match table {
            CopyTable::Audit => self.read_audit(read).await,
            _ => self.read(read).await,
        }
    }

    async fn count_events_through(&self, through: i64) -> Result<i64, StoreError> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM events WHERE seq <= ?1",
                [through],
                |r| r.get(0),
            )?)
        })
        .await
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
        if self.write_health.failing() {
            let health = self.write_health.clone();
            self.on_writer(move |conn| writer::probe(conn, &health))
                .await??;
        }
        let (file, audit_file) = (self.file.clone(), self.audit_file.clone());
        self.read(move |conn| {
            file.check()?;
            audit_file.check()?;
            Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)
        })
        .await
        .map(|_| ())
    }

    async fn shutdown(&self) {
        // Shutdown is queued behind every job already accepted, so they are committed first.
        loop {
            match self.queue.try_submit(WriterCommand::Shutdown, 1) {
                Ok(()) | Err(QueueFull::Closed) => break,
                Err(QueueFull::Full) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        let checkpointer = self.checkpointer.lock().ok().and_then(|mut c| c.take());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(handle) = handle {
                let _ = handle.join();
            }
            if let Some(checkpointer) = checkpointer {
                checkpointer.stop();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::envelope::test_event;

    #[test]
    fn a_database_migrated_by_a_newer_version_is_named_as_such() {
        let (dir, conn) = scratch_db();
        let applied_on: String = conn
            .query_row(
                "SELECT applied_on FROM refinery_schema_history ORDER BY version DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "INSERT INTO refinery_schema_history VALUES (999, 'from_the_future', ?1, '1')",
            [applied_on],
        )
        .unwrap();
        drop(conn);
        let e = open_and_migrate(&dir.path().join("scratch.db"), Synchronous::Full).unwrap_err();
        let message = format!("{e:#}");
        assert!(
            message.contains("migrated by a newer version of annals"),
            "{message}"
        );
        assert!(message.contains("V999__from_the_future"), "{message}");
    }

    /// Makes the writer connection refuse every write (`PRAGMA query_only`: each write fails as
    /// on a file system remounted read-only), or lets it write again.
    async fn refuse_writes(store: &SqliteStore, refuse: bool) {
        store
            .on_writer(move |conn| conn.execute_batch(&format!("PRAGMA query_only = {refuse}")))
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_location_is_the_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions::new(dir.path().join("a.db"))).unwrap();
        let location = store.location();
        assert!(
            location.starts_with('/') && location.ends_with("a.db"),
            "{location}"
        );
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_and_health_fail_while_the_database_file_is_removed_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.db");
        let store = SqliteStore::open(SqliteOptions::new(path.clone())).unwrap();
        let event = || test_event(serde_json::json!({"event_type": "a.b.created"}));
        store.append(vec![event()]).await.unwrap();
        assert!(store.health().await.is_ok());
        let aside = dir.path().join("aside.db");
        std::fs::rename(&path, &aside).unwrap();
        let e = store.health().await.unwrap_err().to_string();
        assert!(e.contains("removed or replaced"), "{e}");
        // Nothing is acknowledged into a file no name leads to.
        let refused = store.append(vec![event()]).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        std::fs::rename(&aside, &path).unwrap();
        assert!(store.health().await.is_ok(), "the file is back");
        store.append(vec![event()]).await.unwrap();
        let page = store
            .query_events(EventQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.events.len(), 2, "the refused event was not stored");
        // The audit log's file is watched the same way; its records are refused meanwhile.
        let audit = dir.path().join("live.audit.db");
        std::fs::rename(&audit, &aside).unwrap();
        assert!(store.health().await.is_err());
        let record = crate::domain::audit::AuditRecord::sample(1);
        assert!(matches!(
            store.append_audit(vec![record.clone()]).await,
            Err(StoreError::Unavailable(_))
        ));
        std::fs::rename(&aside, &audit).unwrap();
        store.append_audit(vec![record]).await.unwrap();
        assert!(store.health().await.is_ok());
        // A copy over the name is another file: what the server writes goes elsewhere.
        std::fs::copy(&path, &aside).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        assert!(store.health().await.is_err());
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_fails_while_writes_fail_and_recovers_without_waiting_for_an_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteOptions::new(dir.path().join("full.db"))).unwrap();
        let event = || test_event(serde_json::json!({"event_type": "a.b.created"}));
        store.append(vec![event()]).await.unwrap();
        assert!(store.health().await.is_ok());

        refuse_writes(&store, true).await;
        let refused = store.append(vec![event()]).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        for _ in 0..2 {
            let health = store.health().await;
            assert!(
                matches!(&health, Err(StoreError::Unavailable(reason)) if reason.contains("test write")),
                "a store that can't write is not healthy, and its test write says so: {health:?}"
            );
        }

        // Writable again: the health check's own test write sees it, with no append to help
        // (a load balancer sends none to a node that reports itself unhealthy).
        refuse_writes(&store, false).await;
        assert!(store.health().await.is_ok(), "healthy again at once");
        assert!(store.health().await.is_ok());
        store.append(vec![event()]).await.unwrap();
        let probed: i64 = store
            .read(|conn| Ok(conn.query_row("SELECT count(*) FROM write_probe", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(probed, 1, "the probe keeps one row");
        store.shutdown().await;
    }
}
