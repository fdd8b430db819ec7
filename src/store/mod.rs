//! The storage interface every backend implements, and the value types that cross it.
//!
//! Invariants every backend keeps:
//! - `append` answers only after the events are durably committed; a batch is all-or-nothing.
//! - Each stored event gets a `seq` one greater than the previous committed event: gapless and
//!   in commit order. Ids are server-made UUIDv7s.
//! - Idempotency is decided inside the write transaction on `(client_id, source, event_id)`,
//!   so concurrent duplicates are caught as well as sequential ones.
//! - Every read takes an explicit client scope (`None` only for admin callers).

pub mod analytics;
pub mod bus;
pub mod copy;
pub mod indexed;
pub mod integrity;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::access::{KeyPatch, KeyRecord, KeySelector, LastAdmin};
use crate::domain::audit::{AuditQuery, AuditRecord, StoredAudit};
use crate::domain::security::{NewSecurityEvent, SecurityQuery, StoredSecurityEvent};
use crate::domain::{ClientId, EventFormat, NewEvent, StoredEvent, Timestamp, TopicPattern};

use self::copy::{CopyRows, CopyTable};

/// A migration run's failure, said in terms of what the operator did: a database that a newer
/// (or different) build of Annals migrated is named as such, not as a file "missing from the
/// filesystem" — the migrations are compiled in.
pub fn migration_error(database: &str, e: refinery::Error) -> anyhow::Error {
    match e.kind() {
        refinery::error::Kind::MissingVersion(applied) => anyhow::anyhow!(
            "the {database} was migrated by a newer version of annals (it has migration {applied}, \
             which this version does not know); run that version or a later one"
        ),
        refinery::error::Kind::DivergentVersion(applied, ours) => anyhow::anyhow!(
            "the {database} was migrated by a different build of annals (its migration {applied} \
             is not this version's {ours})"
        ),
        _ => anyhow::Error::new(e).context(format!("running the {database} migrations")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write queue is full; the caller should retry after the given seconds.
    #[error("the write queue is full")]
    Overloaded { retry_after_secs: u64 },
    /// The store can't be reached or is shutting down.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A query ran past its time budget.
    #[error("query too broad")]
    QueryTooBroad,
    /// A key change under `LastAdmin::Keep` would have left no active admin key; nothing
    /// was changed.
    #[error("that would leave no active admin key")]
    LastAdminKey,
    /// A count limit (e.g. subscriptions per owner) would be passed; nothing was changed.
    #[error("{0}")]
    LimitReached(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What happened to one event of an accepted append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendedItem {
    pub id: Uuid,
    /// True when an identical event with the same idempotency key was already stored (or appeared
    /// earlier in the same batch); `id` is then the original's.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    Stored(Vec<AppendedItem>),
    /// Indexes of events whose idempotency key is taken by different content. Nothing stored.
    Conflict(Vec<usize>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Desc,
    Asc,
}

/// A filter on a field inside `data`: `path` is the key path (`["a","b"]` for `data.a.b`), and a
/// row matches when the value there is the string `value`, or a number/boolean whose JSON text
/// is `value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFilter {
    pub path: Vec<String>,
    pub value: String,
}

#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// `None` = every client (admin only).
    pub client_id: Option<ClientId>,
    pub user_id: Option<String>,
    pub event_type: Option<TopicPattern>,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub correlation_id: Option<String>,
    pub status: Option<String>,
    /// Inclusive lower bound on `occurred_at`.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound on `occurred_at`.
    pub to: Option<Timestamp>,
    pub data: Vec<DataFilter>,
    /// Only events that came in this wire format.
    pub format: Option<EventFormat>,
    pub order: Order,
    pub limit: usize,
    /// Continue after this `seq` (exclusive), in the query's order.
    pub after_seq: Option<i64>,
}

impl EventQuery {
    /// A type pattern and no other filter (a client aside): the stores list the types the
    /// pattern matches (one index seek each, at most `TYPE_SEEKS`) and merge those types' ranges
    /// of `(client_id, event_type, seq)`, each already in seq order, so a page reads about
    /// `limit` rows instead of sorting every match. More than `TYPE_RANGES` pairs of client and
    /// type, or more seeks, and the query reads the pattern's one range and sorts.
    /// With another filter the merge could read every row of every matching type through the
    /// index to find a few (`#` with a rare `amount=42` took 5 s on 2M events, against 4 ms for
    /// a walk by seq), so those queries are left to the planner.
    pub fn reads_type_ranges(&self) -> bool {
        self.event_type.as_ref().is_some_and(|p| !p.is_exact())
            && self.user_id.is_none()
            && self.source.is_none()
            && self.subject.is_none()
            && self.correlation_id.is_none()
            && self.status.is_none()
            && self.from.is_none()
            && self.to.is_none()
            && self.data.is_empty()
            && self.format.is_none()
    }
}

/// At most this many index seeks to list the types a pattern matches (`reads_type_ranges`).
pub const TYPE_SEEKS: usize = 256;
/// At most this many `(client, type)` ranges merged in one statement (`reads_type_ranges`).
pub const TYPE_RANGES: usize = 64;

/// The distinct clients of `events` in index order, one seek each, at most `$1`. Both dialects
/// read it: SQLite takes `$N` as a named parameter numbered by first appearance.
pub(crate) const CLIENTS_SQL: &str = "WITH RECURSIVE c(client_id) AS ( \
     SELECT (SELECT client_id FROM events ORDER BY client_id LIMIT 1) \
     UNION ALL \
     SELECT (SELECT e.client_id FROM events e WHERE e.client_id > c.client_id \
             ORDER BY e.client_id LIMIT 1) \
     FROM c WHERE c.client_id IS NOT NULL) \
     SELECT client_id FROM c WHERE client_id IS NOT NULL LIMIT $1";

/// The distinct event types of client `$1` in `[$2, $3)` (`TopicPattern::type_range`), one
/// seek each, at most `$4`; both dialects, as `CLIENTS_SQL`. The range needs byte order:
/// SQLite compares `BINARY`, PostgreSQL's `event_type` collates "C".
pub(crate) const TYPES_SQL: &str = "WITH RECURSIVE t(event_type) AS ( \
     SELECT (SELECT event_type FROM events WHERE client_id = $1 AND event_type >= $2 \
             AND event_type < $3 ORDER BY event_type LIMIT 1) \
     UNION ALL \
     SELECT (SELECT e.event_type FROM events e WHERE e.client_id = $1 \
             AND e.event_type > t.event_type AND e.event_type < $3 \
             ORDER BY e.event_type LIMIT 1) \
     FROM t WHERE t.event_type IS NOT NULL) \
     SELECT event_type FROM t WHERE event_type IS NOT NULL LIMIT $4";

/// Gathers the `(client, type)` pairs a pattern query merges (`EventQuery::reads_type_ranges`)
/// from each client's types as `TYPES_SQL` lists them, within `TYPE_SEEKS` seeks and
/// `TYPE_RANGES` pairs. Each store runs the listings on its own connection.
pub(crate) struct TypeRanges<'p> {
    pattern: &'p TopicPattern,
    seeks: usize,
    pairs: Vec<(String, String)>,
}

impl<'p> TypeRanges<'p> {
    /// `clients` is how many clients were listed, a seek each.
    pub fn new(pattern: &'p TopicPattern, clients: usize) -> Self {
        Self {
            pattern,
            seeks: clients,
            pairs: Vec::new(),
        }
    }

    /// `TYPES_SQL`'s `LIMIT` for the next client: one past the seeks left, so a listing that
    /// would pass them shows.
    pub fn listing_limit(&self) -> i64 {
        (TYPE_SEEKS.saturating_sub(self.seeks) + 1) as i64
    }

    /// Takes one client's listed types; false once the seeks or pairs pass their limits (then
    /// the query is not merged).
    pub fn take(&mut self, client: &str, types: impl IntoIterator<Item = String>) -> bool {
        for event_type in types {
            self.seeks += 1;
            if self.seeks > TYPE_SEEKS {
                return false;
            }
            if self.pattern.matches(&event_type) {
                if self.pairs.len() == TYPE_RANGES {
                    return false;
                }
                self.pairs.push((client.to_string(), event_type));
            }
        }
        // The seek that found no more.
        self.seeks += 1;
        true
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.pairs
    }
}

/// A page of events. `next_after` is set when there may be more rows.
#[derive(Clone, Debug, Default)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    pub next_after: Option<i64>,
}

/// A range of seqs that has just been committed (on PostgreSQL: by any node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedRange {
    pub first: i64,
    pub last: i64,
    /// Whether the commit queued webhook (push) deliveries: only then is the delivery worker
    /// woken (a claim per commit would be a write per commit).
    pub pushes: bool,
}

impl CommittedRange {
    /// The `NOTIFY annals_events` payload: `first-last`, with ` push` when it queued webhook
    /// deliveries.
    pub fn payload(&self) -> String {
        let push = if self.pushes { " push" } else { "" };
        format!("{}-{}{push}", self.first, self.last)
    }

    /// Parses a `payload`.
    pub fn parse(text: &str) -> Option<Self> {
        let (range, pushes) = match text.strip_suffix(" push") {
            Some(range) => (range, true),
            None => (text, false),
        };
        let (first, last) = range.split_once('-')?;
        let (first, last) = (first.parse().ok()?, last.parse().ok()?);
        (first <= last).then_some(Self {
            first,
            last,
            pushes,
        })
    }
}

/// How many committed ranges a slow subscriber may fall behind before it misses some (it then
/// gets `RecvError::Lagged` and should re-read from its last seq).
pub const COMMIT_CHANNEL_CAPACITY: usize = 1024;

/// Largest page a store builds in memory; a page stops early once its rows pass this size and
/// the caller follows the cursor for the rest.
pub const PAGE_BYTE_BUDGET: usize = 8 * 1024 * 1024;

/// The query whether some key can administer the service at the instant `now` (the backend's
/// current time as its `expires_at` column holds it): active, unexpired, with the `admin`
/// scope in its comma-separated list. Backs `LastAdmin::Keep`.
pub(crate) fn admin_key_remains_sql(now: &str) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE is_active \
         AND (expires_at IS NULL OR expires_at > {now}) \
         AND (',' || scopes || ',') LIKE '%,admin,%')"
    )
}

/// An idempotency key's stored content hash, as read back from either store.
pub(crate) fn stored_hash(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Internal(anyhow::anyhow!("stored content hash is not 32 bytes")))
}

#[async_trait]
pub trait Store:
    bus::BusStore + analytics::AnalyticsStore + integrity::IntegrityStore + Send + Sync + 'static
{
    /// Short name for health output and logs (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Where the store is, for the start-up log: a SQLite file's real path, or PostgreSQL's
    /// hosts and database, never its password.
    fn location(&self) -> String;

    /// Stores a batch atomically (a single event is a batch of one).
    async fn append(&self, events: Vec<NewEvent>) -> Result<AppendOutcome, StoreError>;

    async fn query_events(&self, query: EventQuery) -> Result<EventPage, StoreError>;

    async fn get_event(
        &self,
        client: Option<ClientId>,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, StoreError>;

    async fn insert_key(&self, key: KeyRecord) -> Result<(), StoreError>;
    /// Inserts `key` only if the store holds no key at all, atomically (nodes of one database
    /// starting together make one first key between them); whether it was inserted.
    async fn insert_first_key(&self, key: KeyRecord) -> Result<bool, StoreError>;
    async fn find_key(&self, key_id: String) -> Result<Option<KeyRecord>, StoreError>;
    async fn list_keys(&self, client: Option<ClientId>) -> Result<Vec<KeyRecord>, StoreError>;
    /// Deletes the selected keys; returns the ids deleted. Under `LastAdmin::Keep` a deletion
    /// that would leave no active admin key is `StoreError::LastAdminKey`, atomically (two
    /// admins removing each other's keys at once leave one).
    async fn delete_keys(
        &self,
        selector: KeySelector,
        last_admin: LastAdmin,
    ) -> Result<Vec<String>, StoreError>;
    /// Applies `patch` to one key; `None` when there is no such key. `last_admin` as for
    /// `delete_keys`.
    async fn update_key(
        &self,
        key_id: String,
        patch: KeyPatch,
        last_admin: LastAdmin,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// Flips `is_active` of each selected key; returns the updated records.
    async fn toggle_keys(&self, selector: KeySelector) -> Result<Vec<KeyRecord>, StoreError>;

    /// Stores a batch of audit records (one transaction).
    async fn append_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError>;
    /// Audit records, newest first; one more than `limit` tells the caller a next page exists.
    async fn query_audit(&self, query: AuditQuery) -> Result<Vec<StoredAudit>, StoreError>;
    /// Event retention: deletes at most `limit` of the oldest events received before `before`,
    /// with their idempotency keys; returns how many events. (PostgreSQL also drops whole
    /// monthly partitions that end before `before`; their rows are not counted.) Never an event
    /// the Merkle tree has not taken yet: the tree is gapless, so a keeper that found one gone
    /// would stop there for good.
    async fn delete_events_before(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<u64, StoreError>;
    /// Deletes at most `limit` audit records older than `before`; returns how many.
    async fn delete_audit_before(&self, before: Timestamp, limit: usize)
    -> Result<u64, StoreError>;

    /// Records security events (one with a `dedup_key` already stored adds its count to that
    /// row); returns each event's row id.
    async fn record_security(&self, events: Vec<NewSecurityEvent>) -> Result<Vec<i64>, StoreError>;
    /// Security events, newest first; one more than `limit` tells the caller a next page exists.
    async fn query_security(
        &self,
        query: SecurityQuery,
    ) -> Result<Vec<StoredSecurityEvent>, StoreError>;
    /// Marks one event reviewed by `reviewer`; `None` when there is no such event for `client`
    /// (`None` client = any).
    async fn review_security(
        &self,
        id: i64,
        client: Option<String>,
        reviewer: String,
    ) -> Result<Option<StoredSecurityEvent>, StoreError>;

    /// `annals copy`, reading: up to `limit` rows of `table` past `after` (a `seq` for events,
    /// a row id otherwise), oldest first, with all a copy keeps (see `copy`). Events come with
    /// the last seq this store assigned.
    async fn copy_out(
        &self,
        table: CopyTable,
        after: i64,
        limit: usize,
    ) -> Result<CopyRows, StoreError>;
    /// `annals copy`, writing: rows another store's `copy_out` read, in one transaction, keeping
    /// their seqs, ids and times. Events must lie above every seq this store holds; keys and
    /// security events replace the rows of the same id.
    async fn copy_in(&self, rows: CopyRows) -> Result<(), StoreError>;
    /// The newest event's `seq` (events) or the highest row id (security, audit); 0 when none.
    async fn copy_position(&self, table: CopyTable) -> Result<i64, StoreError>;
    /// How many events the store holds with a `seq` up to `through` (a copy's final check).
    async fn count_events_through(&self, through: i64) -> Result<i64, StoreError>;

    /// Committed seq ranges as they happen, for live fan-out (seed 003's notify-on-create).
    fn commits(&self) -> tokio::sync::broadcast::Receiver<CommittedRange>;

    /// A signal each time any key changes (on PostgreSQL: on any node), so key caches can drop
    /// what they hold at once.
    fn key_changes(&self) -> tokio::sync::broadcast::Receiver<()>;

    /// Checks the store answers reads and that its writer is running.
    async fn health(&self) -> Result<(), StoreError>;

    /// Stops taking writes, commits everything already queued, and waits for the writer.
    async fn shutdown(&self);
}

#[cfg(test)]
mod tests {
    use super::CommittedRange;

    #[test]
    fn commit_notices_say_whether_they_queued_webhooks() {
        for pushes in [false, true] {
            let range = CommittedRange {
                first: 3,
                last: 9,
                pushes,
            };
            assert_eq!(CommittedRange::parse(&range.payload()), Some(range));
        }
        assert_eq!(CommittedRange::parse("3-9").map(|r| r.pushes), Some(false));
        assert_eq!(CommittedRange::parse("9-3"), None);
        assert_eq!(CommittedRange::parse("3-9 pull"), None);
    }
}
