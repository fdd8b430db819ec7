//! Configuration: command-line flags with `ANNALS_*` environment fallbacks (clap), checked once
//! at start-up into the values the rest of the program uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::domain::ClientId;
use crate::domain::type_policy::EventTypePolicy;
use crate::integrity::checkpoint::Signer;
use crate::listener::TrustedProxies;
use crate::store::indexed::IndexedField;
use crate::store::postgres::PostgresOptions;
use crate::store::sqlite::{SqliteOptions, Synchronous};

const MIB: usize = 1024 * 1024;

/// Requests per minute for a key without its own limit (DESIGN.md; seed 002's 60 is a demo value).
pub const DEFAULT_RATE_LIMIT: u32 = 6000;
/// Seconds a client has to send a request's head, and again its body.
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 30;
/// Seconds a stop waits for requests in flight.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 20;
/// Longest request URI (path and query), as most servers and proxies allow: longer ones get a
/// JSON `414`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of request headers (names and values) a request may carry: more get a JSON `431`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper's read buffer per connection: a request head that has not ended when the buffer is this
/// full (it may fill up to twice this in one read) is refused by hyper itself with a bare `431`.
pub const HEAD_BUFFER_BYTES: usize = 64 * 1024;
/// Request bodies held in memory at once, across all requests, by default.
pub const DEFAULT_BODY_MEMORY_BYTES: usize = 256 * MIB;
/// Client connections served at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Where events live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseLocation {
    /// `postgres://…` / `postgresql://…` → PostgreSQL; `sqlite://path`, `sqlite:path` or a plain
    /// path → a SQLite file. Any other `scheme://` is refused: read as a path, `mysql://db/x`
    /// would quietly become a SQLite file under a directory named `mysql:`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_string()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if let Some((scheme, _)) = path.split_once("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(format!(
                "'{scheme}://' is not a supported database; use a SQLite file path \
                 (sqlite://path) or postgres://…"
            ));
        }
        if path.is_empty() {
            return Err(String::from("the SQLite file path is empty"));
        }
        // SQLite reads these itself (connections are opened with URI names allowed): an
        // in-memory store would acknowledge events it loses on exit, each read connection
        // would see a database of its own, and the audit and lock files are named after a path.
        if path == ":memory:" {
            return Err(String::from(
                "':memory:' would keep events only in memory, lost on exit; give a SQLite file path",
            ));
        }
        if path.starts_with("file:") {
            return Err(String::from(
                "SQLite 'file:' URIs are not supported; give a plain file path (or sqlite://path)",
            ));
        }
        // Said here, before anything is created next to it (SQLite's own error comes later and
        // names no cause).
        let file = PathBuf::from(path);
        if path.ends_with('/') || file.is_dir() {
            return Err(format!(
                "names a directory ({path}): a SQLite store is a file, such as {}",
                file.join("annals.db").display()
            ));
        }
        Ok(Self::Sqlite(file))
    }
}

/// The shortest static admin key accepted: it is compared as given, not generated, so a short
/// one would be guessable.
pub const MIN_STATIC_KEY_CHARS: usize = 16;

fn parse_static_key(text: &str) -> Result<String, String> {
    if text.chars().count() < MIN_STATIC_KEY_CHARS || text.trim() != text {
        return Err(format!(
            "must be at least {MIN_STATIC_KEY_CHARS} characters, without surrounding spaces \
             (e.g. openssl rand -hex 24)"
        ));
    }
    Ok(text.to_string())
}

/// Checks `ANNALS_DATABASE_URL` when the configuration is read, so a bad one stops `annals`
/// with the other configuration errors.
pub(crate) fn parse_database_url(text: &str) -> Result<String, String> {
    DatabaseLocation::parse(text).map(|_| text.to_string())
}

/// Refuses a setting outside its range, naming it.
fn check_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> anyhow::Result<()> {
    if !range.contains(&value) {
        bail!(
            "{name} must be between {} and {}",
            range.start(),
            range.end()
        );
    }
    Ok(())
}

/// Options that say which store to open and how.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Database: a SQLite file path (default `./annals.db`) or `postgres://…`.
    #[arg(long, env = "ANNALS_DATABASE_URL", default_value = "annals.db", value_parser = parse_database_url)]
    pub database_url: String,

    /// SQLite durability: `full` syncs every group commit; `normal` trades the last commits on
    /// power loss for speed.
    #[arg(
        long,
        env = "ANNALS_SQLITE_SYNCHRONOUS",
        value_enum,
        ignore_case = true,
        default_value = "full"
    )]
    pub sqlite_synchronous: Synchronous,

    /// Bytes of accepted, not yet written events held in memory before ingest answers 503
    /// (64 KiB to 4 GiB).
    #[arg(
        long,
        env = "ANNALS_WRITE_QUEUE_BYTES",
        default_value_t = 64 * MIB,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64 * 1024..=u32::MAX as u64)
    )]
    pub write_queue_bytes: usize,

    /// Requests waiting for the writer before ingest answers 503 (1 to 1000000).
    #[arg(
        long,
        env = "ANNALS_WRITE_QUEUE_JOBS",
        default_value_t = 8192,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000)
    )]
    pub write_queue_jobs: usize,

    /// A query running longer than this is stopped with 422 "query too broad" (1 to 3600000).
    #[arg(
        long,
        env = "ANNALS_QUERY_TIMEOUT_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000)
    )]
    pub query_timeout_ms: u64,

    /// `data` fields to give an expression index at start (comma-separated, `a.b` for nested),
    /// so filters on them stay fast on large stores.
    #[arg(long, env = "ANNALS_INDEXED_FIELDS", default_value = "", value_parser = parse_indexed_fields)]
    pub indexed_fields: IndexedFields,
}

/// The parsed `ANNALS_INDEXED_FIELDS` list.
#[derive(Clone, Debug, Default)]
pub struct IndexedFields(pub Vec<IndexedField>);

fn parse_indexed_fields(text: &str) -> Result<IndexedFields, String> {
    crate::store::indexed::parse_indexed_fields(text).map(IndexedFields)
}

impl StoreArgs {
    pub fn location(&self) -> anyhow::Result<DatabaseLocation> {
        DatabaseLocation::parse(&self.database_url)
            .map_err(|e| anyhow::anyhow!("ANNALS_DATABASE_URL: {e}"))
    }

    pub fn postgres_options(&self, url: String) -> PostgresOptions {
        PostgresOptions {
            url,
            queue_jobs: self.write_queue_jobs,
            queue_bytes: self.write_queue_bytes,
            pool_size: 16,
            query_timeout: Duration::from_millis(self.query_timeout_ms),
            indexed_fields: self.indexed_fields.0.clone(),
        }
    }

    pub fn sqlite_options(&self, path: PathBuf) -> SqliteOptions {
        SqliteOptions {
            synchronous: self.sqlite_synchronous,
            queue_jobs: self.write_queue_jobs,
            queue_bytes: self.write_queue_bytes,
            query_timeout: Duration::from_millis(self.query_timeout_ms),
            indexed_fields: self.indexed_fields.0.clone(),
            ..SqliteOptions::new(path)
        }
    }
}

/// Options of `annals serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Address to listen on.
    #[arg(long, env = "ANNALS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A static admin key (the AUDITOR "key specified in the server"), at least 16 characters
    /// long.
    #[arg(long, env = "ANNALS_API_KEY", hide_env_values = true, value_parser = parse_static_key)]
    pub api_key: Option<String>,

    /// Client that events sent with the static key belong to, and owner of the first admin key.
    #[arg(long, env = "ANNALS_DEFAULT_CLIENT_ID", default_value = "default")]
    pub default_client_id: String,

    /// Largest `data` + `headers` of one event, in bytes (at most 64 MiB).
    #[arg(long, env = "ANNALS_MAX_EVENT_BYTES", default_value_t = MIB)]
    pub max_event_bytes: usize,

    /// Largest request body, in bytes.
    #[arg(long, env = "ANNALS_MAX_BODY_BYTES", default_value_t = 16 * MIB)]
    pub max_body_bytes: usize,

    /// Most events in one batch request.
    #[arg(long, env = "ANNALS_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// Request bodies held in memory at once, in bytes, across all requests (at least
    /// `ANNALS_MAX_BODY_BYTES`); a body that would go over it gets `503` + `Retry-After`.
    #[arg(long, env = "ANNALS_BODY_MEMORY_BYTES", default_value_t = DEFAULT_BODY_MEMORY_BYTES)]
    pub body_memory_bytes: usize,

    /// Seconds a client has to send a request's head (from connecting, or from the previous
    /// answer on a kept-alive connection), and again to send its body.
    #[arg(long, env = "ANNALS_READ_TIMEOUT_SECS", default_value_t = DEFAULT_READ_TIMEOUT_SECS)]
    pub read_timeout_secs: u64,

    /// Seconds a stop (SIGTERM/SIGINT) waits for requests in flight before it stops without
    /// them and drains the write queue; keep it below the supervisor's kill timeout.
    #[arg(long, env = "ANNALS_SHUTDOWN_TIMEOUT_SECS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECS)]
    pub shutdown_timeout_secs: u64,

    /// Client connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "ANNALS_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Load balancers and reverse proxies (addresses and CIDR ranges, comma-separated) whose
    /// `X-Forwarded-For` names the caller; nobody's by default.
    #[arg(long, env = "ANNALS_TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,

    /// Requests per minute per key unless the key sets its own (default 6000). Setting it also
    /// limits the static `ANNALS_API_KEY`.
    #[arg(long, env = "ANNALS_RATE_LIMIT_PER_MINUTE")]
    pub rate_limit_per_minute: Option<u32>,

    /// Share rate limits across nodes through this Redis (`redis://…`); in memory when unset.
    #[arg(long, env = "ANNALS_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Keys whose values are replaced by "***" at any depth of `data` and `headers`
    /// (comma-separated, case-insensitive; empty to mask nothing).
    #[arg(long, env = "ANNALS_MASK_FIELDS", default_value = crate::domain::masking::DEFAULT_MASK_FIELDS)]
    pub mask_fields: String,

    /// `open` accepts any event type (a type that breaks `<service>.<resource>.<verb_past_tense>`
    /// gets a `Warning` header); `convention` refuses such types with 422.
    #[arg(long, env = "ANNALS_EVENT_TYPE_POLICY", default_value = "open", value_parser = EventTypePolicy::parse)]
    pub event_type_policy: EventTypePolicy,

    /// Zero the last IPv4 octet / last 80 IPv6 bits of `ip_address` before storage.
    #[arg(long, env = "ANNALS_ANONYMIZE_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub anonymize_ip: bool,

    /// Record every API call in the audit log.
    #[arg(long, env = "ANNALS_AUDIT_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_log: bool,

    /// Keep masked request/response bodies (JSON, up to 4 KiB each) in the audit log.
    #[arg(long, env = "ANNALS_AUDIT_BODIES", default_value_t = false, action = clap::ArgAction::Set)]
    pub audit_bodies: bool,

    /// Days events are kept (0 = forever, the default). Only this deletes events.
    #[arg(long, env = "ANNALS_EVENT_RETENTION_DAYS", default_value_t = 0)]
    pub event_retention_days: u32,

    /// Days audit records are kept (0 = forever).
    #[arg(long, env = "ANNALS_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u32,

    /// Seconds between runs of the retention job.
    #[arg(long, env = "ANNALS_RETENTION_INTERVAL_SECS", default_value_t = 3600)]
    pub retention_interval_secs: u64,

    /// Days finished webhook deliveries and integration log rows are kept (0 = forever).
    #[arg(long, env = "ANNALS_DELIVERY_RETENTION_DAYS", default_value_t = 30)]
    pub delivery_retention_days: u32,

    /// Let webhooks reach loopback, private, link-local and other internal addresses.
    #[arg(long, env = "ANNALS_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Seconds a webhook call may take, connection included, before it counts as failed.
    #[arg(long, env = "ANNALS_WEBHOOK_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout_secs: u64,

    /// Delay before a failed delivery's first retry, in milliseconds; each further retry waits
    /// twice as long (with jitter), at most six hours.
    #[arg(long, env = "ANNALS_WEBHOOK_RETRY_BASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_retry_base_ms: u64,

    /// Webhook calls in flight at once, per node.
    #[arg(long, env = "ANNALS_WEBHOOK_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,

    /// Failed authentications per minute from one address before it gets 429.
    #[arg(long, env = "ANNALS_FAILED_AUTH_PER_MINUTE", default_value_t = 60)]
    pub failed_auth_per_minute: u32,

    #[command(flatten)]
    pub integrity: IntegrityArgs,
}

/// The Merkle tree's checkpoints: who signs them, under what name, how often.
#[derive(Args, Clone, Debug)]
pub struct IntegrityArgs {
    /// The checkpoint signing key: 32 bytes (an Ed25519 seed) in hex or base64. Unset, the key
    /// file is used.
    #[arg(long, env = "ANNALS_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,

    /// The checkpoint signing key's file, made on first start if missing (default: beside a
    /// SQLite store, `<store>.signing-key`; on PostgreSQL `./annals.signing-key`).
    #[arg(long, env = "ANNALS_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// The log's name, the first line of every signed checkpoint.
    #[arg(long, env = "ANNALS_LOG_ORIGIN", default_value = "annals")]
    pub log_origin: String,

    /// Seconds between signed checkpoints while events arrive (1 to 86400).
    #[arg(long, env = "ANNALS_CHECKPOINT_INTERVAL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub checkpoint_interval_secs: u64,

    /// How often the keeper hashes new events into the tree. Not a setting (a second keeps
    /// proofs of new events close at hand for little work); tests lengthen it to hold the tree
    /// back.
    #[arg(skip = IntegrityArgs::TREE_INTERVAL)]
    pub tree_interval: std::time::Duration,
}

impl IntegrityArgs {
    const TREE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// A fresh random key held in memory, no file (tests and the benchmark, whose PostgreSQL
    /// servers would otherwise share `./annals.signing-key`).
    fn for_tests() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("randomness");
        Self {
            signing_key: Some(hex::encode(seed)),
            signing_key_file: None,
            log_origin: String::from("annals"),
            checkpoint_interval_secs: 60,
            tree_interval: Self::TREE_INTERVAL,
        }
    }

    /// Where the key file is: the setting, or the default for this store.
    pub fn key_file(&self, location: &DatabaseLocation) -> PathBuf {
        match (&self.signing_key_file, location) {
            (Some(file), _) => file.clone(),
            (None, DatabaseLocation::Sqlite(path)) => {
                crate::integrity::checkpoint::default_key_file(Some(path))
            }
            (None, DatabaseLocation::Postgres(_)) => {
                crate::integrity::checkpoint::default_key_file(None)
            }
        }
    }

    /// The node's signer: the key given, or the key file's (made if missing).
    pub fn signer(&self, location: &DatabaseLocation) -> anyhow::Result<Signer> {
        crate::integrity::checkpoint::check_origin(&self.log_origin)?;
        match &self.signing_key {
            Some(text) => Signer::from_text(text, self.log_origin.clone()),
            None => Signer::from_file(&self.key_file(location), self.log_origin.clone()),
        }
    }

    /// The public key of the configured signer, without making a key file: `annals verify`
    /// trusts checkpoints signed by it only. `None` when no key is configured or on file.
    pub fn trusted_key(&self, location: &DatabaseLocation) -> anyhow::Result<Option<[u8; 32]>> {
        if let Some(text) = &self.signing_key {
            return Ok(Some(Signer::from_text(text, "")?.public_key()));
        }
        let file = self.key_file(location);
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(Some(Signer::from_text(&text, "")?.public_key())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", file.display())),
        }
    }
}

/// Request limits, checked at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Request bodies in memory at once (`ANNALS_BODY_MEMORY_BYTES`).
    pub body_memory_bytes: usize,
    /// Time to send a request's head, and again its body (`ANNALS_READ_TIMEOUT_SECS`).
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: MIB,
            max_body_bytes: 16 * MIB,
            max_batch: 1000,
            body_memory_bytes: DEFAULT_BODY_MEMORY_BYTES,
            read_timeout: Duration::from_secs(DEFAULT_READ_TIMEOUT_SECS),
        }
    }
}

impl ServeArgs {
    /// Defaults for every option, with the database at `database_url` (used by tests and the
    /// benchmark).
    pub fn with_database(database_url: impl Into<String>) -> Self {
        Self {
            store: StoreArgs {
                database_url: database_url.into(),
                sqlite_synchronous: Synchronous::Full,
                write_queue_bytes: 64 * MIB,
                write_queue_jobs: 8192,
                query_timeout_ms: 5000,
                indexed_fields: IndexedFields::default(),
            },
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_key: None,
            default_client_id: String::from("default"),
            max_event_bytes: MIB,
            max_body_bytes: 16 * MIB,
            max_batch: 1000,
            body_memory_bytes: DEFAULT_BODY_MEMORY_BYTES,
            read_timeout_secs: DEFAULT_READ_TIMEOUT_SECS,
            shutdown_timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: TrustedProxies::default(),
            rate_limit_per_minute: None,
            redis_url: None,
            audit_log: true,
            mask_fields: String::from(crate::domain::masking::DEFAULT_MASK_FIELDS),
            anonymize_ip: false,
            event_type_policy: EventTypePolicy::Open,
            audit_bodies: false,
            audit_retention_days: 90,
            event_retention_days: 0,
            retention_interval_secs: 3600,
            delivery_retention_days: 30,
            webhook_allow_private: false,
            webhook_timeout_secs: 10,
            webhook_retry_base_ms: 5000,
            webhook_concurrency: 32,
            failed_auth_per_minute: 60,
            integrity: IntegrityArgs::for_tests(),
        }
    }

    pub fn limits(&self) -> anyhow::Result<Limits> {
        if self.max_event_bytes == 0 || self.max_event_bytes > 64 * MIB {
            bail!(
                "ANNALS_MAX_EVENT_BYTES must be between 1 and {} (64 MiB)",
                64 * MIB
            );
        }
        if self.max_body_bytes < 1024 {
            bail!("ANNALS_MAX_BODY_BYTES must be at least 1024");
        }
        if self.body_memory_bytes < self.max_body_bytes {
            bail!(
                "ANNALS_BODY_MEMORY_BYTES ({}) must be at least ANNALS_MAX_BODY_BYTES ({}), or the largest body allowed could never be read",
                self.body_memory_bytes,
                self.max_body_bytes
            );
        }
        if self.rate_limit_per_minute == Some(0) || self.failed_auth_per_minute == 0 {
            bail!(
                "ANNALS_RATE_LIMIT_PER_MINUTE and ANNALS_FAILED_AUTH_PER_MINUTE must be at least 1"
            );
        }
        check_range("ANNALS_MAX_BATCH", self.max_batch, 1..=100_000)?;
        check_range("ANNALS_READ_TIMEOUT_SECS", self.read_timeout_secs, 1..=3600)?;
        check_range(
            "ANNALS_SHUTDOWN_TIMEOUT_SECS",
            self.shutdown_timeout_secs,
            1..=3600,
        )?;
        check_range(
            "ANNALS_MAX_CONNECTIONS",
            self.max_connections,
            1..=1_000_000,
        )?;
        Ok(Limits {
            max_event_bytes: self.max_event_bytes,
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
            body_memory_bytes: self.body_memory_bytes,
            read_timeout: Duration::from_secs(self.read_timeout_secs),
        })
    }

    pub fn default_client(&self) -> anyhow::Result<ClientId> {
        ClientId::parse(&self.default_client_id)
            .map_err(|e| anyhow::anyhow!("ANNALS_DEFAULT_CLIENT_ID {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_key_help_states_the_shortest_length() {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let help = <Serve as clap::CommandFactory>::command()
            .get_arguments()
            .find(|a| a.get_id() == "api_key")
            .and_then(|a| a.get_help().map(ToString::to_string))
            .expect("api_key has help");
        assert!(
            help.contains(&format!("at least {MIN_STATIC_KEY_CHARS} characters")),
            "{help}"
        );
    }

    #[test]
    fn database_locations() {
        let sqlite = |p: &str| Ok(DatabaseLocation::Sqlite(p.into()));
        assert_eq!(DatabaseLocation::parse("annals.db"), sqlite("annals.db"));
        assert_eq!(
            DatabaseLocation::parse("sqlite:///tmp/a.db"),
            sqlite("/tmp/a.db")
        );
        assert_eq!(DatabaseLocation::parse("sqlite:a.db"), sqlite("a.db"));
        assert_eq!(
            DatabaseLocation::parse("./data:2026/a.db"),
            sqlite("./data:2026/a.db")
        );
        assert!(matches!(
            DatabaseLocation::parse("postgres://u@h/db"),
            Ok(DatabaseLocation::Postgres(_))
        ));
        for bad in [
            "mysql://u@h/db",
            "sqlite://",
            "",
            "redis://h",
            "sqlite://file://x",
            ":memory:",
            "sqlite::memory:",
            "file::memory:",
            "file:a.db?mode=memory",
            "sqlite:file:a.db",
        ] {
            assert!(DatabaseLocation::parse(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for path in [
            dir.path().display().to_string(),
            format!("{}/missing/", dir.path().display()),
        ] {
            let refused = DatabaseLocation::parse(&path).unwrap_err();
            assert!(refused.contains("names a directory"), "{refused}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let mut args = ServeArgs::with_database("x.db");
        assert!(args.limits().is_ok());
        args.max_event_bytes = 65 * MIB;
        assert!(args.limits().is_err());
    }
}

/// The optional configuration file (DESIGN.md "Configuration"): `ANNALS_CONFIG`, else
/// `./annals.toml` when it exists. Its keys are the environment variables' names without the
/// `ANNALS_` prefix, in lower case (`max_body_bytes = 1048576`). Precedence: flags, then the
/// environment, then the file, then the defaults.
pub mod file {
    use std::collections::BTreeSet;

    use anyhow::{Context, bail};

    pub const DEFAULT_PATH: &str = "annals.toml";

    /// The environment settings the file supplies: `(ANNALS_NAME, value)` for each key whose
    /// variable is not already set. `known` are the variables the command line reads. Errors
    /// don't name the file: the caller adds its path.
    pub fn settings(
        text: &str,
        known: &BTreeSet<String>,
        is_set: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let table: toml::Table = toml::from_str(text).context("not valid TOML")?;
        let mut out = Vec::new();
        for (key, value) in table {
            let name = format!("ANNALS_{}", key.to_ascii_uppercase());
            if !known.contains(&name) {
                let names: Vec<String> = known
                    .iter()
                    .map(|n| n.trim_start_matches("ANNALS_").to_ascii_lowercase())
                    .collect();
                bail!("unknown setting '{key}'; settings are {}", names.join(", "));
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!(
                    "'{key}' must be a string, number or boolean, not {}",
                    other.type_str()
                ),
            };
            if !is_set(&name) {
                out.push((name, text));
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn known() -> BTreeSet<String> {
            ["ANNALS_LISTEN", "ANNALS_MAX_BATCH", "ANNALS_ANONYMIZE_IP"]
                .into_iter()
                .map(String::from)
                .collect()
        }

        #[test]
        fn keys_become_unset_variables() {
            let text = "listen = \"0.0.0.0:9000\"\nmax_batch = 50\nanonymize_ip = true\n";
            let got = settings(text, &known(), |n| n == "ANNALS_LISTEN").unwrap();
            assert_eq!(
                got,
                [
                    ("ANNALS_ANONYMIZE_IP".to_string(), "true".to_string()),
                    ("ANNALS_MAX_BATCH".to_string(), "50".to_string())
                ]
            );
        }

        #[test]
        fn unknown_keys_and_bad_values_are_refused() {
            let e = settings("colour = 1", &known(), |_| false).unwrap_err();
            assert!(e.to_string().contains("unknown setting 'colour'"), "{e}");
            assert!(e.to_string().contains("max_batch"), "{e}");
            assert!(settings("max_batch = [1]", &known(), |_| false).is_err());
            assert!(settings("not toml", &known(), |_| false).is_err());
        }
    }
}
