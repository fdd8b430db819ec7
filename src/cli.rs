//! The command line: `annals [serve]`, `annals migrate`, `annals keys …`, `annals backup`,
//! `annals bench`. Key commands call the same `KeyService` as the HTTP admin API.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use tokio::io::AsyncWriteExt;

use crate::auth::{KeyService, NewKeyRequest};
use crate::bench::BenchArgs;
use crate::config::{DatabaseLocation, ServeArgs, StoreArgs};
use crate::domain::access::{
    KeyRecord, KeySelector, LastAdmin, Scopes, parse_key_name, parse_rate_limit,
};
use crate::domain::{ClientId, Timestamp};
use crate::server;
use crate::store::copy::{CopyProgress, copy_store};
use crate::store::sqlite::backup;

#[derive(Parser, Debug)]
#[command(
    name = "annals",
    version,
    about = "Records events for auditability, answers questions about them, delivers them to subscribers."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// With no subcommand, `annals` serves with these options.
    #[command(flatten)]
    serve: ServeArgs,
}

/// Reads the optional configuration file into the environment, before anything else runs.
///
/// Must be called while the process has a single thread (it sets environment variables).
pub fn load_config_file() -> anyhow::Result<()> {
    let (path, required) = match std::env::var_os("ANNALS_CONFIG") {
        Some(path) => (std::path::PathBuf::from(path), true),
        None => (
            std::path::PathBuf::from(crate::config::file::DEFAULT_PATH),
            false,
        ),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    };
    let known = setting_variables();
    let settings = crate::config::file::settings(&text, &known, |n| std::env::var_os(n).is_some())
        .map_err(|e| e.context(path.display().to_string()))?;
    for (name, value) in settings {
        // SAFETY: called from `main` before the runtime or any other thread starts.
        unsafe { std::env::set_var(name, value) };
    }
    Ok(())
}

/// The `ANNALS_*` variables the command line reads (every flag's fallback).
fn setting_variables() -> BTreeSet<String> {
    use clap::CommandFactory;
    let mut known = BTreeSet::new();
    let mut stack = vec![Cli::command()];
    while let Some(command) = stack.pop() {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|n| n.to_str()) {
                known.insert(name.to_string());
            }
        }
        stack.extend(command.get_subcommands().cloned());
    }
    known
}

/// Variables named `ANNALS_*` that are read outside clap (`ANNALS_TEST_*` belong to the tests).
const OTHER_VARIABLES: [&str; 3] = ["ANNALS_CONFIG", "ANNALS_LOG", "ANNALS_LOG_FORMAT"];

/// What to say of each `ANNALS_*` variable in `names` that nothing reads, most likely a typo
/// (`ANNALS_MAX_BATH`) that would otherwise leave its setting at the default in silence; with
/// the closest setting's name when one is near.
fn unknown_variables(names: impl Iterator<Item = String>) -> Vec<String> {
    let known = setting_variables();
    names
        .filter(|n| n.starts_with("ANNALS_") && !n.starts_with("ANNALS_TEST_"))
        .filter(|n| !known.contains(n) && !OTHER_VARIABLES.contains(&n.as_str()))
        .map(|name| {
            let nearest = known
                .iter()
                .chain(OTHER_VARIABLES.map(String::from).iter())
                .map(|k| (strsim::levenshtein(&name, k), k.clone()))
                .min();
            match nearest {
                Some((distance, k)) if distance <= 3 => {
                    format!("{name} is not a setting and is ignored; did you mean {k}?")
                }
                _ => format!("{name} is not a setting and is ignored"),
            }
        })
        .collect()
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP service (the default).
    Serve(Box<ServeArgs>),
    /// Create or upgrade the database schema, then exit.
    Migrate(StoreArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy a SQLite store and its audit log to new files, while a server keeps serving it.
    Backup(BackupArgs),
    /// Copy everything a store holds into another (SQLite to PostgreSQL, or back), keeping
    /// seqs, ids, keys and the audit trail; run again, it carries on where it stopped.
    Copy(CopyArgs),
    /// Recompute the Merkle tree from the events and check every stored hash and signed
    /// checkpoint against it; names the first changed or missing event. Exits 1 if anything
    /// differs.
    Verify(VerifyArgs),
    /// Write every event matching the filters, oldest first, as NDJSON (or CSV with
    /// `format=csv`): the filters and formats of `GET /v1/events/export`, as `name=value`
    /// arguments, read straight from the store (beside a running server too).
    Export(ExportArgs),
    /// Send the events of an NDJSON file (one `POST /v1/events` body per line) to a running
    /// server in batches, through its own ingest path; names any refused line.
    Import(crate::import::ImportArgs),
    /// Measure ingest throughput against its ceilings (see README).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Filters as `name=value` (`event_type=billing.#`, `client_id=acme`, `from=2024-01-01`,
    /// `data.plan=pro`, `format=csv`), unencoded; none exports every event of every client.
    filters: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The signing key to trust (as for `serve`); checkpoints signed by another key count as
    /// bad. Without one configured or on file, any valid signature counts.
    #[command(flatten)]
    integrity: crate::config::IntegrityArgs,
    /// Trust only checkpoints signed by this Ed25519 public key (32 bytes, base64 as each
    /// checkpoint shows it, or hex): how an auditor without the signing key pins it. Overrides
    /// the signing key above.
    #[arg(long, value_parser = crate::integrity::checkpoint::parse_public_key)]
    public_key: Option<[u8; 32]>,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key; the key text is printed once.
    Create(CreateKey),
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this client's keys.
        #[arg(long)]
        client_id: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete one key, or all of a client's keys.
    Delete(SelectKeys),
    /// Enable a disabled key or disable an enabled one (each selected key flips).
    Toggle(SelectKeys),
}

#[derive(Args, Debug)]
struct BackupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The copy to make (a new file, e.g. `backup-2026-12-02.db`); the audit log goes beside
    /// it (`backup-2026-12-02.audit.db`), so the copy can be served as it is.
    destination: PathBuf,
}

#[derive(Args, Debug)]
struct CopyArgs {
    /// The store to copy from (`--database-url`, as for `serve`); it may keep serving.
    #[command(flatten)]
    store: StoreArgs,
    /// The store to copy into: a SQLite file path or `postgres://…`. It must be empty or an
    /// earlier copy of the source, and no server may serve it until the copy is done.
    #[arg(long, value_parser = crate::config::parse_database_url)]
    to: String,
    /// Rows written per transaction (1 to 100000).
    #[arg(long, default_value_t = 5000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    batch: usize,
}

#[derive(Args, Debug)]
struct CreateKey {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    name: String,
    /// Requests per minute (default: the server's ANNALS_RATE_LIMIT_PER_MINUTE).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Comma-separated: events:write, events:read, admin.
    #[arg(long, default_value = "events:write,events:read")]
    scopes: String,
    /// Days until the key stops working (1 to 36500).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    expires_in_days: Option<u32>,
    /// Print the new key as JSON (its listing fields plus `key`), for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["client_id", "key_id"])))]
struct SelectKeys {
    #[command(flatten)]
    store: StoreArgs,
    /// Every key of this client.
    #[arg(long)]
    client_id: Option<String>,
    /// One key, by its id.
    #[arg(long)]
    key_id: Option<String>,
}

impl SelectKeys {
    fn selector(&self) -> anyhow::Result<KeySelector> {
        match (&self.client_id, &self.key_id) {
            (Some(c), None) => Ok(KeySelector::Client(
                ClientId::parse(c).map_err(|e| anyhow::anyhow!("--client-id {e}"))?,
            )),
            (None, Some(k)) => Ok(KeySelector::KeyId(k.clone())),
            _ => anyhow::bail!("give exactly one of --client-id or --key-id"),
        }
    }
}

/// Logs to stderr, filtered by `ANNALS_LOG` (else `RUST_LOG`, else `default_filter`), as JSON
/// when `ANNALS_LOG_FORMAT=json`.
pub fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ANNALS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("ANNALS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    // Colour only on a terminal: log files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // A closed stderr must not take the service down (the default reports via eprintln!,
        // which panics on a broken pipe).
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The key functions on the configured store. A SQLite file that isn't there yet is created
/// (a first key may come before the first start), with a note on stderr: a mistyped path
/// would otherwise put the key in a new database that no server reads.
async fn key_service(
    args: &StoreArgs,
) -> anyhow::Result<(KeyService, std::sync::Arc<dyn crate::store::Store>)> {
    let new_file = match args.location()? {
        crate::config::DatabaseLocation::Sqlite(path) => Some(path).filter(|p| !p.exists()),
        crate::config::DatabaseLocation::Postgres(_) => None,
    };
    let store = server::open_store(args).await?;
    if let Some(path) = new_file {
        eprintln!(
            "note: there was no database at {}; a new, empty one was created there",
            path.display()
        );
    }
    Ok((KeyService::new(store.clone(), None), store))
}

fn print_keys(keys: &[KeyRecord]) {
    let rows = keys.iter().map(|k| {
        [
            k.key_id.clone(),
            k.client_id.to_string(),
            // Names are refused with control characters, but one stored before that rule must
            // not forge a row or drive the terminal either.
            k.name
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_unicode().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
            k.scopes.to_list(),
            k.rate_limit
                .map_or_else(|| String::from("default"), |r| r.to_string()),
            String::from(if k.is_active { "yes" } else { "no" }),
            expiry_cell(k.expires_at, Timestamp::now()),
        ]
    });
    print!("{}", key_table(rows));
}

/// When a key stops working, to the minute (UTC), marked once it has: `ACTIVE` says only
/// whether it was switched off.
fn expiry_cell(expires_at: Option<Timestamp>, now: Timestamp) -> String {
    match expires_at {
        None => String::from("never"),
        Some(at) => {
            let text = at.to_rfc3339();
            let minute = format!("{}Z", &text[..16]);
            if at <= now {
                format!("{minute} (expired)")
            } else {
                minute
            }
        }
    }
}

/// The key listing as a text table whose columns are as wide as their widest cell (a client
/// id or name of any length keeps the columns lined up), without trailing spaces.
fn key_table(rows: impl Iterator<Item = [String; 7]>) -> String {
    let header = [
        "KEY ID", "CLIENT", "NAME", "SCOPES", "RATE/MIN", "ACTIVE", "EXPIRES",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = std::iter::once(header).chain(rows).collect();
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            // RATE/MIN is a number: right-aligned.
            if i == 4 {
                line.push_str(&format!("{cell:>width$}"));
            } else {
                line.push_str(&format!("{cell:<width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl Cli {
    /// The log filter when `ANNALS_LOG` (or `RUST_LOG`) sets none: the service and `migrate`
    /// log at `info` (what they start, apply and stop); `keys` and `bench` print their own
    /// answers on stdout, so only warnings and errors join them (no migration chatter).
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            None | Some(Command::Serve(_) | Command::Migrate(_)) => "info",
            Some(
                Command::Keys(_)
                | Command::Bench(_)
                | Command::Backup(_)
                | Command::Copy(_)
                | Command::Verify(_)
                | Command::Import(_)
                | Command::Export(_),
            ) => "warn",
        }
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
        for warning in unknown_variables(names) {
            tracing::warn!("{warning}");
        }
        match self.command {
            None => server::serve(self.serve).await,
            Some(Command::Serve(args)) => server::serve(*args).await,
            Some(Command::Migrate(store)) => {
                let store = server::open_store(&store).await?;
                store.shutdown().await;
                println!("database is migrated to the current schema");
                Ok(())
            }
            Some(Command::Bench(args)) => crate::bench::run(args).await,
            Some(Command::Keys(command)) => run_keys(command).await,
            Some(Command::Backup(args)) => run_backup(args).await,
            Some(Command::Copy(args)) => run_copy(args).await,
            Some(Command::Verify(args)) => run_verify(args).await,
            Some(Command::Import(args)) => crate::import::run(args).await,
            Some(Command::Export(args)) => run_export(args).await,
        }
    }
}

async fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    use crate::api::export;
    let mut pairs = Vec::with_capacity(args.filters.len());
    for filter in &args.filters {
        let Some((name, value)) = filter.split_once('=') else {
            bail!("the filter '{filter}' is not name=value");
        };
        pairs.push((name.to_string(), value.to_string()));
    }
    let export::Plan {
        format,
        mut query,
        requested_client,
    } = export::plan(pairs).map_err(|e| anyhow::Error::msg(e.summary()))?;
    query.client_id = requested_client;
    let out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &args.output {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut out = tokio::io::BufWriter::new(out);
    let store = server::open_store(&args.store).await?;
    let outcome = async {
        out.write_all(&export::head(format)).await?;
        let mut events = 0u64;
        loop {
            let page = store.query_events(query.clone()).await?;
            out.write_all(&export::render(format, &page.events)?)
                .await?;
            events += page.events.len() as u64;
            match page.next_after {
                Some(after) => query.after_seq = Some(after),
                None => break,
            }
        }
        out.flush().await?;
        anyhow::Ok(events)
    }
    .await;
    store.shutdown().await;
    match outcome {
        Ok(events) => {
            eprintln!(
                "Exported {events} event{}.",
                if events == 1 { "" } else { "s" }
            );
            Ok(())
        }
        // `annals export | head`: the reader has what it wanted.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn run_verify(args: VerifyArgs) -> anyhow::Result<()> {
    let trusted = match args.public_key {
        Some(key) => Some(key),
        None => args.integrity.trusted_key(&args.store.location()?)?,
    };
    let store = server::open_store(&args.store).await?;
    let outcome = crate::integrity::verify::verify(store.as_ref(), trusted).await;
    store.shutdown().await;
    let report = outcome?;
    println!(
        "Merkle tree: {} leaves; {} events checked against their leaves, {} removed by \
         retention (their leaves kept), {} newer than the tree.",
        report.tree_size,
        report.events_checked,
        report.removed_by_retention,
        report.not_yet_in_tree
    );
    let signers: Vec<String> = report
        .signers
        .iter()
        .map(|(key, n)| format!("{n} by key {key}"))
        .collect();
    println!(
        "Checkpoints: {}{}{}.",
        report.checkpoints,
        if signers.is_empty() { "" } else { ", signed " },
        signers.join(", ")
    );
    match trusted {
        Some(key) => println!(
            "Trusted signing key: {}.",
            crate::integrity::checkpoint::key_id(&key)
        ),
        None => println!("No signing key configured: any valid signature was accepted."),
    }
    if report.findings.is_empty() {
        println!("OK: every event, tree node and checkpoint matches.");
        return Ok(());
    }
    for finding in &report.findings {
        println!("TAMPERED: {finding}");
    }
    if report.more_findings > 0 {
        println!("... and {} more findings.", report.more_findings);
    }
    anyhow::bail!(
        "verification failed: {} findings; the first: {}",
        report.findings.len() as u64 + report.more_findings,
        report.findings[0]
    )
}

async fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let store = match args.store.location()? {
        DatabaseLocation::Sqlite(path) => path,
        DatabaseLocation::Postgres(_) => anyhow::bail!(
            "annals backup copies a SQLite store; back up PostgreSQL with its own tools \
             (pg_dump -Fc, or a base backup with WAL archiving)"
        ),
    };
    let destination = args.destination;
    let report = tokio::task::spawn_blocking(move || backup::backup(&store, &destination))
        .await
        .context("the backup task failed")??;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let events = &report.events;
    // "1 event", "2 events".
    let counted = |n: i64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    println!(
        "Copied {} (last seq {}) to {} ({:.1} MiB)",
        counted(events.rows, "event"),
        events.last,
        events.path.display(),
        mib(events.bytes)
    );
    if let Some(audit) = &report.audit {
        println!(
            "Copied {} to {} ({:.1} MiB)",
            counted(audit.rows, "audit record"),
            audit.path.display(),
            mib(audit.bytes)
        );
    }
    let copies = if report.audit.is_some() {
        "Both copies"
    } else {
        "The copy"
    };
    println!(
        "{copies} passed an integrity check. Serve with --database-url {}, or move the files \
         in place of the store's while no server runs.",
        events.path.display()
    );
    Ok(())
}

async fn run_copy(args: CopyArgs) -> anyhow::Result<()> {
    let source_args = args.store;
    let destination_args = StoreArgs {
        database_url: args.to,
        ..source_args.clone()
    };
    // No server may take events into a SQLite destination while the copy writes it, nor start
    // on it half-copied.
    let _lock = match destination_args.location()? {
        DatabaseLocation::Sqlite(path) => Some(
            crate::store::sqlite::serve_lock::claim(&path)
                .context("the destination is being served")?,
        ),
        DatabaseLocation::Postgres(_) => None,
    };
    let source = server::open_store(&source_args).await?;
    let destination = server::open_store(&destination_args).await?;
    let outcome = if source.location() == destination.location() {
        Err(anyhow::anyhow!(
            "--to names the store being copied ({}); give another database",
            source.location()
        ))
    } else {
        eprintln!(
            "Copying {} ({}) into {} ({})",
            source.location(),
            source.backend(),
            destination.location(),
            destination.backend()
        );
        copy_store(
            &*source,
            &*destination,
            args.batch,
            &mut ProgressBars::default(),
        )
        .await
    };
    // Stopped either way, so a SQLite destination is left checkpointed and unlocked.
    source.shutdown().await;
    destination.shutdown().await;
    let report = outcome?;
    let counted = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    println!(
        "Copied {} (the destination's newest event is seq {}), {}, {}, {}, {}, {}, and {} \
         (Merkle tree of {} leaves).",
        counted(report.events, "event"),
        report.last_seq,
        counted(report.keys, "API key"),
        counted(report.security_events, "security event"),
        counted(report.audit_records, "audit record"),
        counted(report.subscriptions, "subscription"),
        counted(report.integrations, "integration"),
        counted(report.checkpoints, "signed checkpoint"),
        report.tree_size
    );
    println!(
        "Both stores hold {} up to seq {}.",
        counted(report.verified_events, "event"),
        report.last_seq
    );
    println!(
        "Run the same command again to take what arrived at the source meanwhile; once the \
         source no longer takes events, a last run makes the copy complete."
    );
    Ok(())
}

/// A progress bar per table on stderr (indicatif draws nothing when stderr is no terminal).
#[derive(Default)]
struct ProgressBars {
    bar: Option<indicatif::ProgressBar>,
}

impl CopyProgress for ProgressBars {
    fn start(&mut self, what: &'static str, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        self.bar = Some(bar);
    }

    fn advance(&mut self, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(rows);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

async fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create(c) => {
            let client_id =
                ClientId::parse(&c.client_id).map_err(|e| anyhow::anyhow!("--client-id {e}"))?;
            let scopes =
                Scopes::parse_list(&c.scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let name = parse_key_name(&c.name).map_err(|e| anyhow::anyhow!("--name {e}"))?;
            let rate_limit = c
                .rate_limit
                .map(|r| {
                    parse_rate_limit(u64::from(r)).map_err(|e| anyhow::anyhow!("--rate-limit {e}"))
                })
                .transpose()?;
            let expires_at = c
                .expires_in_days
                .map(|d| Timestamp::now().plus_days(i64::from(d)));
            let (keys, store) = key_service(&c.store).await?;
            let issued = keys
                .create(NewKeyRequest {
                    client_id,
                    name,
                    scopes,
                    rate_limit,
                    expires_at,
                })
                .await?;
            store.shutdown().await;
            if c.json {
                println!("{}", serde_json::to_string_pretty(&issued.view())?);
                return Ok(());
            }
            println!(
                "Created key {} for client '{}' ({}).",
                issued.record.key_id,
                issued.record.client_id,
                issued.record.scopes.to_list()
            );
            println!(
                "This is the only time the key is shown; store it now:\n\n    {}\n",
                issued.key
            );
            Ok(())
        }
        KeysCommand::List {
            store,
            client_id,
            json,
        } => {
            let client = client_id
                .map(|c| ClientId::parse(&c).map_err(|e| anyhow::anyhow!("--client-id {e}")))
                .transpose()?;
            let (keys, store) = key_service(&store).await?;
            let list = keys.list(client).await?;
            store.shutdown().await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &list.iter().map(KeyRecord::view).collect::<Vec<_>>()
                    )?
                );
            } else {
                print_keys(&list);
            }
            Ok(())
        }
        KeysCommand::Delete(select) => {
            let selector = select.selector()?;
            let (keys, store) = key_service(&select.store).await?;
            let deleted = keys.delete(selector, LastAdmin::MayGo).await?;
            store.shutdown().await;
            if deleted.is_empty() {
                anyhow::bail!("no key matched");
            }
            println!("Deleted {} key(s): {}", deleted.len(), deleted.join(", "));
            Ok(())
        }
        KeysCommand::Toggle(select) => {
            let selector = select.selector()?;
            let (keys, store) = key_service(&select.store).await?;
            let toggled = keys.toggle(selector).await?;
            store.shutdown().await;
            if toggled.is_empty() {
                anyhow::bail!("no key matched");
            }
            print_keys(&toggled);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_table_columns_fit_their_widest_cell() {
        let row = |id: &str, client: &str, name: &str, rate: &str| {
            [id, client, name, "events:read", rate, "yes", "never"].map(String::from)
        };
        let table = key_table(
            [
                row("aaaa", "acme", "t1", "default"),
                row("bbbb", "a-very-long-client-id-of-thirty", "n", "60"),
            ]
            .into_iter(),
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        // Every column starts at the same offset on every line.
        let starts = |line: &str, cell: &str| line.find(cell).unwrap();
        assert_eq!(starts(lines[0], "NAME"), starts(lines[1], "t1"));
        assert_eq!(starts(lines[1], "t1"), starts(lines[2], " n ") + 1);
        assert_eq!(starts(lines[0], "ACTIVE"), starts(lines[2], "yes"));
        // RATE/MIN is right-aligned; no line ends in spaces.
        assert!(lines[2].contains("      60  yes     never"), "{table}");
        assert!(table.lines().all(|l| l == l.trim_end()), "{table}");
    }

    #[test]
    fn unknown_annals_variables_are_named_with_the_nearest_setting() {
        let names = [
            "ANNALS_MAX_BATH",
            "ANNALS_LISTEN",
            "ANNALS_LOG",
            "ANNALS_TEST_DATABASE_URL",
            "ANNALS_SOMETHING_ELSE_ENTIRELY",
            "HOME",
        ]
        .map(String::from);
        assert_eq!(
            unknown_variables(names.into_iter()),
            [
                "ANNALS_MAX_BATH is not a setting and is ignored; did you mean ANNALS_MAX_BATCH?",
                "ANNALS_SOMETHING_ELSE_ENTIRELY is not a setting and is ignored",
            ]
        );
    }

    #[test]
    fn expiry_cells_say_never_or_the_minute_and_whether_it_passed() {
        let now = Timestamp::parse_rfc3339("2026-12-02T15:00:00Z").unwrap();
        assert_eq!(expiry_cell(None, now), "never");
        let later = Timestamp::parse_rfc3339("2027-03-02T10:30:59.5Z").unwrap();
        assert_eq!(expiry_cell(Some(later), now), "2027-03-02T10:30Z");
        let earlier = Timestamp::parse_rfc3339("2026-12-01T08:00:00Z").unwrap();
        assert_eq!(
            expiry_cell(Some(earlier), now),
            "2026-12-01T08:00Z (expired)"
        );
    }
}
