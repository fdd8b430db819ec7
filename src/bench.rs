//! `annals bench`: ingest throughput of the real server against the ceilings measured in the same
//! run on the same machine:
//! - single events (N concurrent connections) vs a no-op axum handler that parses the same body
//!   on the same HTTP layers; and, apart, vs the same no-op inside the full server, behind the
//!   key check, rate limiter and audit log (what is left is the event path's own cost);
//! - single events with one subscription that every event matches vs without (what queueing a
//!   delivery in each append's transaction, the outbox, costs);
//! - 1000-event batches vs raw batched SQLite inserts of the same rows (same schema, same
//!   durability setting, no HTTP).
//!
//! It prints events/s and the ratios, and next to each phase the CPU time it cost per event
//! (this process: the servers, the in-process load, the raw ceilings; and apart, the `wrk`
//! load generator). On a small machine the load generator and the server share the cores, so
//! once both are CPU-bound the single-event ratio is close to the ratio of total CPU per
//! event, ceiling over annals: the CPU columns explain the throughput ratio and, unlike it,
//! barely move with a noisy VM. It is a program, not a test: timings never gate CI.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Args;
use rusqlite::params;
use serde_json::{Value, json};

use crate::config::ServeArgs;
use crate::domain::Timestamp;
use crate::server;
use crate::store::sqlite::{Synchronous, open_and_migrate};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Seconds each single-event phase runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Concurrent connections for single-event ingest.
    #[arg(long, default_value_t = 64, value_parser = at_least_one())]
    pub concurrency: usize,
    /// Seconds of unmeasured load before each single-event phase (connections opened, a new
    /// database's first pages and WAL allocated), for the no-op ceiling and annals alike.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// How many times the single-event phases (the no-op ceiling, audit on, audit off) run, in
    /// turn; each round's ratios compare phases run back to back, and the medians are reported
    /// (one run is at the mercy of a noisy neighbour).
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub rounds: usize,
    /// Events per batch request.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub batch_size: usize,
    /// Batch requests sent (spread over `batch-concurrency` connections).
    #[arg(long, default_value_t = 100, value_parser = at_least_one())]
    pub batches: usize,
    /// Concurrent connections for batch ingest.
    #[arg(long, default_value_t = 4, value_parser = at_least_one())]
    pub batch_concurrency: usize,
    /// Also load this many events into a fresh server and time typical queries (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub query_rows: usize,
    /// Run against PostgreSQL: a server URL (e.g. postgres://postgres@127.0.0.1/test) on which
    /// the benchmark creates and drops its own databases.
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// SQLite durability for both the server and the raw-insert ceiling.
    #[arg(long, value_enum, default_value = "full")]
    pub sqlite_synchronous: Synchronous,
    /// Who sends the single events (for the no-op ceiling and annals alike): `wrk` as a
    /// separate, lighter process, or reqwest tasks in this process (sharing its runtime with
    /// the server under test); `auto` takes `wrk` when it is on PATH.
    #[arg(long, value_enum, default_value = "auto")]
    pub load_generator: LoadGenerator,
}

/// A count of at least one (connections, rounds, batches, events per batch): zero of any
/// leaves nothing to measure.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadGenerator {
    Auto,
    InProcess,
    Wrk,
}

impl LoadGenerator {
    /// `Auto` made concrete: `Wrk` if a `wrk` executable is on PATH.
    fn resolve(self) -> Self {
        let wrk_on_path = || {
            std::env::var_os("PATH")
                .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("wrk").is_file()))
        };
        match self {
            Self::Auto if wrk_on_path() => Self::Wrk,
            Self::Auto => Self::InProcess,
            chosen => chosen,
        }
    }
}

/// CPU time used so far by this process and by its finished, waited-for children (`wrk`),
/// from `/proc/self/stat` (Linux only; `None` elsewhere), and by the SQLite writer threads
/// alive now. Its unit is the 10 ms clock tick (`USER_HZ`, 100 on Linux), fine enough for
/// phases of seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTimes {
    own: Duration,
    children: Duration,
    writer: Duration,
}

impl CpuTimes {
    const TICK: Duration = Duration::from_millis(10);

    fn now() -> Option<Self> {
        let process = Self::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        Some(Self {
            writer: Self::threads_named(crate::store::sqlite::WRITER_THREAD),
            ..process
        })
    }

    /// CPU time of this process's live threads called `name`.
    fn threads_named(name: &str) -> Duration {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Duration::ZERO;
        };
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
            .filter_map(|stat| Self::parse(&stat))
            .map(|thread| thread.own)
            .sum()
    }

    /// `utime stime cutime cstime` are fields 14–17; the command name (field 2) is in
    /// parentheses and may hold spaces, so counting starts after its closing parenthesis.
    fn parse(stat: &str) -> Option<Self> {
        let after_name = stat.rsplit_once(')')?.1;
        let ticks: Vec<u64> = after_name
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        let [utime, stime, cutime, cstime] = ticks[..] else {
            return None;
        };
        Some(Self {
            own: Self::TICK * (utime + stime) as u32,
            children: Self::TICK * (cutime + cstime) as u32,
            writer: Duration::ZERO,
        })
    }
}

/// One measured phase: its throughput and the CPU it cost per event.
#[derive(Clone, Copy, Debug)]
struct Phase {
    events_per_sec: f64,
    /// This process (server, in-process load, raw ceiling), µs per event.
    own_us: Option<f64>,
    /// The `wrk` load generator, µs per event (`None` for in-process load).
    load_us: Option<f64>,
    /// Of `own_us`, the SQLite writer thread (`None` where there is none).
    writer_us: Option<f64>,
}

/// Wall clock and CPU clocks started together at the start of a timed section.
struct Stopwatch {
    started: Instant,
    cpu: Option<CpuTimes>,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: CpuTimes::now(),
        }
    }

    /// The phase that stored `events` since `start`.
    fn stop(self, events: f64) -> Phase {
        let seconds = self.started.elapsed().as_secs_f64();
        self.stop_with(events, seconds)
    }

    /// As `stop`, with the throughput's time measured elsewhere (by `wrk`).
    fn stop_with(self, events: f64, seconds: f64) -> Phase {
        let per_event = |d: Duration| (events > 0.0).then(|| d.as_secs_f64() * 1e6 / events);
        let nonzero = |d: Duration| Some(d).filter(|d| !d.is_zero()).and_then(per_event);
        let (own_us, load_us, writer_us) = match (self.cpu, CpuTimes::now()) {
            (Some(before), Some(after)) => (
                per_event(after.own.saturating_sub(before.own)),
                nonzero(after.children.saturating_sub(before.children)),
                nonzero(after.writer.saturating_sub(before.writer)),
            ),
            _ => (None, None, None),
        };
        Phase {
            events_per_sec: if seconds > 0.0 { events / seconds } else { 0.0 },
            own_us,
            load_us,
            writer_us,
        }
    }
}

impl Phase {
    /// All the CPU one event cost on this machine: server, load generator, in-process load.
    fn total_us(&self) -> Option<f64> {
        Some(self.own_us? + self.load_us.unwrap_or(0.0))
    }

    /// `"42.0 + 10.5 wrk"`, `"42.0"`, or `"-"` where the platform gives no CPU times.
    fn cpu_column(&self) -> String {
        match (self.own_us, self.load_us) {
            (Some(own), Some(load)) => format!("{own:.1} + {load:.1} wrk"),
            (Some(own), None) => format!("{own:.1}"),
            _ => String::from("-"),
        }
    }

    /// The writer thread's share, `"16.2"`, or empty.
    fn writer_column(&self) -> String {
        self.writer_us
            .map(|us| format!("{us:.1}"))
            .unwrap_or_default()
    }
}

/// The median phase by throughput.
fn median_phase(phases: &mut [Phase]) -> Phase {
    phases.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    phases[phases.len() / 2]
}

/// The median of each round's `phase ÷ baseline` throughput ratio, with the lowest and highest.
/// Each round's pair ran back to back, so a machine that slows down or speeds up between rounds
/// moves both sides of a ratio alike, where a ratio of medians could pair a fast round's
/// ceiling with a slow round's annals.
fn paired_ratio(phases: &[Phase], baselines: &[Phase]) -> Spread {
    let mut ratios: Vec<f64> = phases
        .iter()
        .zip(baselines)
        .map(|(p, b)| p.events_per_sec / b.events_per_sec)
        .collect();
    ratios.sort_by(f64::total_cmp);
    Spread {
        median: ratios[ratios.len() / 2],
        low: ratios[0],
        high: ratios[ratios.len() - 1],
    }
}

/// A ratio measured once per round: its median and range.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: f64,
    low: f64,
    high: f64,
}

impl Spread {
    /// `"0.58-0.63"`; empty for a single round.
    fn range(&self) -> String {
        if self.low == self.high {
            String::new()
        } else {
            format!("{:.2}-{:.2}", self.low, self.high)
        }
    }
}

/// Single-event load from `generator` (already resolved: `Auto` counts as in-process); events/s
/// are the answers with 201.
async fn single_load(
    generator: LoadGenerator,
    url: String,
    key: Option<String>,
    args: &BenchArgs,
) -> anyhow::Result<Phase> {
    let load = |seconds: u64| {
        let (url, key) = (url.clone(), key.clone());
        async move {
            match generator {
                LoadGenerator::Wrk => {
                    load_wrk(&url, key.as_deref(), args.concurrency, seconds).await
                }
                LoadGenerator::InProcess | LoadGenerator::Auto => {
                    load_single(url, key, args.concurrency, seconds).await
                }
            }
        }
    };
    if args.warmup > 0 {
        load(args.warmup).await?;
    }
    load(args.seconds).await
}

/// The `wrk` script: the same event bodies as `event_body`, one counter per wrk thread.
fn wrk_script(key: Option<&str>) -> String {
    let key_header = key
        .map(|k| format!("wrk.headers[\"X-API-Key\"] = \"{k}\"\n"))
        .unwrap_or_default();
    format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{key_header}local n = 0
request = function()
  n = n + 1
  local body = '{{"event_type":"billing.invoice.paid","user_id":"user-' .. (n % 1000) ..
    '","source":"bench","data":{{"invoice":"in_' .. n ..
    '","amount":1200,"currency":"EUR"}},"headers":{{"actor":"bench"}}}}'
  return wrk.format(nil, nil, nil, body)
end
"#
    )
}

/// Runs `wrk` (one thread, `concurrency` connections) and counts the 2xx answers per second.
async fn load_wrk(
    url: &str,
    key: Option<&str>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Phase> {
    let script = tempfile::Builder::new().suffix(".lua").tempfile()?;
    std::fs::write(script.path(), wrk_script(key))?;
    let clock = Stopwatch::start();
    let output = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script.path())
        .arg(url)
        .output()
        .await
        .context("running wrk (install it, e.g. apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk failed: {text}");
    let (events, secs) =
        parse_wrk(&text).with_context(|| format!("unexpected wrk output: {text}"))?;
    Ok(clock.stop_with(events, secs))
}

/// `N requests in T s` minus `Non-2xx or 3xx responses: M`: the successes and `T` in seconds.
fn parse_wrk(text: &str) -> Option<(f64, f64)> {
    let line = text.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_whitespace();
    let requests: f64 = words.next()?.parse().ok()?;
    let duration = words.nth(2)?.trim_end_matches(',');
    let secs = if let Some(ms) = duration.strip_suffix("ms") {
        ms.parse::<f64>().ok()? / 1000.0
    } else if let Some(m) = duration.strip_suffix('m') {
        m.parse::<f64>().ok()? * 60.0
    } else {
        duration.strip_suffix('s')?.parse().ok()?
    };
    let failed: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0);
    if failed > 0.0 {
        eprintln!("  ({failed} requests failed)");
    }
    Some((requests - failed, secs))
}

fn event_body(n: u64) -> Value {
    json!({
        "event_type": "billing.invoice.paid",
        "user_id": format!("user-{}", n % 1000),
        "source": "bench",
        "data": {"invoice": format!("in_{n}"), "amount": 1200, "currency": "EUR"},
        "headers": {"actor": "bench"},
    })
}

/// Sends single events from `concurrency` tasks for `seconds`; returns events/s.
async fn load_single(
    url: String,
    key: Option<String>,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Phase> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let clock = Stopwatch::start();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key) = (client.clone(), url.clone(), key.clone());
        let (stop, done, errors, counter) =
            (stop.clone(), done.clone(), errors.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let mut req = client.post(&url).json(&event_body(n));
                if let Some(k) = &key {
                    req = req.header("x-api-key", k);
                }
                match req.send().await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let phase = clock.stop(done.load(Ordering::Relaxed) as f64);
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("  ({errors} requests failed)");
    }
    Ok(phase)
}

/// Sends `batches` batch requests over `concurrency` connections; returns events/s.
async fn load_batches(url: String, key: String, args: &BenchArgs) -> anyhow::Result<Phase> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let clock = Stopwatch::start();
    let mut tasks = Vec::new();
    for _ in 0..args.batch_concurrency {
        let (client, url, key, next) = (client.clone(), url.clone(), key.clone(), next.clone());
        let (batches, size) = (args.batches as u64, args.batch_size as u64);
        tasks.push(tokio::spawn(async move {
            let mut stored = 0u64;
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let events: Vec<Value> = (0..size).map(|i| event_body(b * size + i)).collect();
                let body = serde_json::to_vec(&json!({"events": events})).expect("serializes");
                let r = client
                    .post(&url)
                    .header("x-api-key", &key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    r.status() == StatusCode::CREATED,
                    "batch failed: {}",
                    r.status()
                );
                stored += size;
            }
            anyhow::Ok(stored)
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    Ok(clock.stop(stored as f64))
}

/// The no-op handler: the body read and parsed as JSON, an answer like annals' own, no work.
async fn noop_handler(body: Bytes) -> (StatusCode, axum::Json<Value>) {
    match serde_json::from_slice::<Value>(&body) {
        Ok(_) => (
            StatusCode::CREATED,
            axum::Json(json!({"message": "Event recorded", "id": uuid::Uuid::now_v7()})),
        ),
        Err(_) => (StatusCode::BAD_REQUEST, axum::Json(json!({}))),
    }
}

/// The no-op ceiling: same runtime, same listener, axum router and middleware layers, the same
/// body read and parsed as JSON, no work.
async fn noop_server() -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = crate::api::with_layers(crate::api::json_fallbacks(
        Router::new().route("/v1/events", post(noop_handler)),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let options = crate::listener::Options::default();
        crate::listener::serve(listener, app, options, std::future::pending()).await;
    });
    Ok((format!("http://{addr}/v1/events"), task))
}

/// The storage ceiling: the same rows inserted in 1000-row transactions straight into SQLite,
/// each event with its `user_index` entry (annals stores both; it copies the entries later).
fn raw_sqlite_inserts(
    path: &std::path::Path,
    total: usize,
    batch: usize,
    sync: Synchronous,
) -> anyhow::Result<Phase> {
    let mut conn = open_and_migrate(path, sync)?;
    // Rows are built before the clock starts: the ceiling is SQLite's insert cost alone.
    let rows: Vec<(String, String, String)> = (0..total as u64)
        .map(|n| {
            let body = event_body(n);
            let user = body["user_id"].as_str().unwrap_or_default().to_string();
            (user, body["data"].to_string(), body["headers"].to_string())
        })
        .collect();
    let clock = Stopwatch::start();
    let mut seq = 0i64;
    for chunk in rows.chunks(batch) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (seq, id, client_id, event_type, user_id, event_id, source, subject, \
                 correlation_id, status, ip_address, partition_key, occurred_at, received_at, data, headers) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            let mut index = tx.prepare_cached(
                "INSERT INTO user_index (u_client, u_user, u_seq) VALUES ('default', ?1, ?2)",
            )?;
            let now = Timestamp::now().as_micros();
            for (user, data, headers) in chunk {
                seq += 1;
                stmt.execute(params![
                    seq,
                    uuid::Uuid::now_v7().as_bytes().as_slice(),
                    "default",
                    "billing.invoice.paid",
                    user,
                    None::<String>,
                    "bench",
                    None::<String>,
                    None::<String>,
                    None::<String>,
                    None::<String>,
                    None::<String>,
                    now,
                    now,
                    data,
                    headers,
                ])?;
                index.execute(params![user, seq])?;
            }
        }
        tx.commit()?;
    }
    Ok(clock.stop(total as f64))
}

async fn start_server(
    database_url: &str,
    sync: Synchronous,
) -> anyhow::Result<(server::RunningServer, String)> {
    start_server_with(database_url, sync, true, Router::new()).await
}

/// The full server, with `extra` routes behind its access and audit layers.
async fn start_server_with(
    database_url: &str,
    sync: Synchronous,
    audit_log: bool,
    extra: Router<crate::api::AppState>,
) -> anyhow::Result<(server::RunningServer, String)> {
    let mut serve = ServeArgs::with_database(database_url);
    serve.audit_log = audit_log;
    serve.store.sqlite_synchronous = sync;
    // The benchmark measures ingest, not the limiter's refusals.
    serve.rate_limit_per_minute = Some(u32::MAX);
    let server = server::start_with(serve, extra).await?;
    let key = server
        .bootstrap_key
        .as_ref()
        .map(|k| k.key.clone())
        .context("the benchmark server did not issue a key")?;
    Ok((server, key))
}

/// Makes a pull subscription that every event matches, so each append queues a delivery.
async fn subscribe_to_everything(base: &str, key: &str) -> anyhow::Result<()> {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/subscriptions"))
        .header("x-api-key", key)
        .json(&serde_json::json!({"subscriber_name": "bench", "topic_pattern": "#", "callback_method": "bench"}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "creating the benchmark's subscription: {}",
        r.status()
    );
    Ok(())
}

/// Loads `rows` varied events through the batch API, then times the queries users run most,
/// as an admin (no client filter) and as a client key. Prints the median of 20 runs each.
async fn query_phase(url: &str, rows: usize, sync: Synchronous) -> anyhow::Result<()> {
    let (server, key) = start_server(url, sync).await?;
    let client = reqwest::Client::new();
    let batch_url = format!("http://{}/v1/events/batch", server.addr);
    let started = Instant::now();
    for chunk in 0..rows.div_ceil(1000) {
        let events: Vec<Value> = (0..1000u64)
            .map(|i| {
                let n = chunk as u64 * 1000 + i;
                json!({
                    "event_type": format!("svc{}.resource.{}", n % 20, if n.is_multiple_of(3) { "created" } else { "updated" }),
                    "user_id": format!("user-{}", n % 10_000),
                    "source": format!("service-{}", n % 5),
                    "correlation_id": format!("corr-{}", n / 4),
                    "occurred_at": Timestamp::from_micros(1_700_000_000_000_000 + n as i64 * 1_000_000).to_rfc3339(),
                    "data": {"order_id": n, "amount": n % 500, "status": "ok"},
                })
            })
            .collect();
        let r = client
            .post(&batch_url)
            .header("x-api-key", &key)
            .json(&json!({"events": events}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == StatusCode::CREATED,
            "load failed: {}",
            r.status()
        );
    }
    println!(
        "query phase: loaded {rows} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    server.stop().await?;
    // Restart: as a long-running server would after its periodic statistics refresh.
    let admin = key;
    let mut serve = ServeArgs::with_database(url);
    serve.store.sqlite_synchronous = sync;
    serve.rate_limit_per_minute = Some(u32::MAX);
    let server = server::start(serve).await?;
    let reader = server
        .keys
        .create(crate::auth::NewKeyRequest {
            client_id: crate::domain::ClientId::parse("default").expect("valid"),
            name: String::from("bench reader"),
            scopes: crate::domain::access::Scopes::parse_list("events:read").expect("valid"),
            rate_limit: None,
            expires_at: None,
        })
        .await?
        .key;
    let mid = Timestamp::from_micros(1_700_000_000_000_000 + (rows as i64 / 2) * 1_000_000);
    let queries = [
        String::from("limit=100"),
        String::from("user_id=user-42"),
        String::from("event_type=svc7.resource.created"),
        String::from("event_type=svc7.%23"),
        String::from("event_type=*.resource.created"),
        String::from("event_type=%23.updated"),
        String::from("user_id=user-42&event_type=svc2.resource.updated"),
        format!("correlation_id=corr-{}", rows / 8),
        format!(
            "from={}&to={}",
            mid.to_rfc3339(),
            Timestamp::from_micros(mid.as_micros() + 3_600_000_000).to_rfc3339()
        ),
        String::from("user_id=user-42&amount=42"),
        String::from("source=service-3&limit=1000"),
    ];
    println!(
        "{:<70} {:>10} {:>10}",
        "query (GET /v1/events?…)", "admin ms", "client ms"
    );
    let base = format!("http://{}/v1/events", server.addr);
    for q in &queries {
        let mut medians = Vec::new();
        for k in [&admin, &reader] {
            let mut times = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let r = client
                    .get(format!("{base}?{q}"))
                    .header("x-api-key", k.as_str())
                    .send()
                    .await?;
                let status = r.status();
                let _ = r.bytes().await?;
                anyhow::ensure!(status == StatusCode::OK, "{q}: {status}");
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            medians.push(times[times.len() / 2]);
        }
        println!("{:<70} {:>10.2} {:>10.2}", q, medians[0], medians[1]);
    }
    server.stop().await?;
    Ok(())
}

/// Fresh databases for the phases: files in a temp dir, or PostgreSQL databases created on the
/// server of `--postgres-url` and dropped at the end.
struct BenchDatabases {
    dir: tempfile::TempDir,
    postgres: Option<(String, tokio_postgres::Client)>,
    created: Vec<String>,
}

impl BenchDatabases {
    async fn new(postgres_url: Option<&str>) -> anyhow::Result<Self> {
        let postgres = match postgres_url {
            Some(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .context("connecting to --postgres-url")?;
                tokio::spawn(conn);
                Some((url.to_string(), client))
            }
            None => None,
        };
        Ok(Self {
            dir: tempfile::tempdir().context("creating a temporary directory")?,
            postgres,
            created: Vec::new(),
        })
    }

    async fn fresh(&mut self, name: &str) -> anyhow::Result<String> {
        match &self.postgres {
            None => Ok(self
                .dir
                .path()
                .join(format!("{name}.db"))
                .display()
                .to_string()),
            Some((url, client)) => {
                let db = format!("annals_bench_{name}_{}", uuid::Uuid::now_v7().simple());
                client
                    .batch_execute(&format!("CREATE DATABASE {db}"))
                    .await?;
                self.created.push(db.clone());
                let config = tokio_postgres::Config::from_str(url)?;
                let host = match config.get_hosts().first() {
                    Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                    _ => String::from("127.0.0.1"),
                };
                let port = config.get_ports().first().copied().unwrap_or(5432);
                let user = config.get_user().unwrap_or("postgres");
                Ok(format!("postgres://{user}@{host}:{port}/{db}"))
            }
        }
    }

    async fn drop_all(self) {
        if let Some((_, client)) = &self.postgres {
            for db in &self.created {
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .await;
            }
        }
    }
}

/// The PostgreSQL storage ceiling: the same rows written by binary `COPY`, 1000 per statement.
async fn raw_postgres_copy(url: &str, total: usize, batch: usize) -> anyhow::Result<Phase> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{ToSql, Type};
    // Create the schema the way the server does, then write around it.
    let store =
        crate::store::postgres::PostgresStore::open(crate::store::postgres::PostgresOptions {
            url: url.to_string(),
            queue_jobs: 1,
            queue_bytes: 1,
            pool_size: 2,
            query_timeout: Duration::from_secs(5),
            indexed_fields: Vec::new(),
        })
        .await?;
    crate::store::Store::shutdown(&store).await;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows: Vec<(String, Value, Value)> = (0..total as u64)
        .map(|n| {
            let body = event_body(n);
            let user = body["user_id"].as_str().unwrap_or_default().to_string();
            (user, body["data"].clone(), body["headers"].clone())
        })
        .collect();
    let clock = Stopwatch::start();
    let mut seq = 0i64;
    for chunk in rows.chunks(batch) {
        let sink = client
            .copy_in(
                "COPY events (seq, id, client_id, event_type, user_id, source, occurred_at, received_at, data, headers) \
                 FROM STDIN BINARY",
            )
            .await?;
        let types = [
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::JSONB,
            Type::JSONB,
        ];
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
        let now = chrono::Utc::now();
        for (user, data, headers) in chunk {
            seq += 1;
            let id = uuid::Uuid::now_v7();
            let values: [&(dyn ToSql + Sync); 10] = [
                &seq,
                &id,
                &"default",
                &"billing.invoice.paid",
                user,
                &"bench",
                &now,
                &now,
                data,
                headers,
            ];
            writer.as_mut().write(&values).await?;
        }
        writer.finish().await?;
    }
    Ok(clock.stop(total as f64))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut dbs = BenchDatabases::new(args.postgres_url.as_deref()).await?;
    let store = if args.postgres_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    // Resolved once: the header names it, and every single-event phase uses the same one.
    let generator = args.load_generator.resolve();
    println!(
        "annals bench ({store}): {} s single-event phases at {} connections ({:?} load); {} batches of {} events at {} connections; sqlite synchronous={:?}",
        args.seconds,
        args.concurrency,
        generator,
        args.batches,
        args.batch_size,
        args.batch_concurrency,
        args.sqlite_synchronous
    );

    // Each phase gets a fresh database, so batch ingest and the raw-write ceiling write the
    // same rows into tables of the same size.
    // The no-op ceiling, then single events with the audit log on, then off (what auditing
    // every call costs), `rounds` times in turn. The ceiling is measured in every round like
    // the phases compared with it, and each ratio is taken within a round (`paired_ratio`), so
    // a machine that speeds up or slows down during the run moves both sides alike. After the
    // no-op, a second ceiling: the same handler mounted in the full server behind the key
    // check, the rate limiter and the audit log, so the ratio to it is the event path's own
    // cost (parsing the envelope, the queue, the durable write).
    let mut noops = Vec::new();
    let mut guarded = Vec::new();
    let mut audited = Vec::new();
    let mut unaudited = Vec::new();
    let mut subscribed = Vec::new();
    for round in 0..args.rounds.max(1) {
        let (noop_url, noop_task) = noop_server().await?;
        noops.push(single_load(generator, noop_url, None, &args).await?);
        noop_task.abort();
        let (server, key) = start_server_with(
            &dbs.fresh(&format!("noop{round}")).await?,
            args.sqlite_synchronous,
            true,
            Router::new().route("/v1/noop", post(noop_handler)),
        )
        .await?;
        let url = format!("http://{}/v1/noop", server.addr);
        guarded.push(single_load(generator, url, Some(key), &args).await?);
        server.stop().await?;
        for (audit, out) in [(true, &mut audited), (false, &mut unaudited)] {
            let name = format!("single{round}{}", if audit { "a" } else { "u" });
            let (server, key) = start_server_with(
                &dbs.fresh(&name).await?,
                args.sqlite_synchronous,
                audit,
                Router::new(),
            )
            .await?;
            let url = format!("http://{}/v1/events", server.addr);
            out.push(single_load(generator, url, Some(key), &args).await?);
            server.stop().await?;
        }
        // With one subscription every event matches: each append also queues a delivery in
        // its transaction (the outbox). A pull subscription, so no webhook calls share the CPU.
        let (server, key) = start_server(
            &dbs.fresh(&format!("single{round}s")).await?,
            args.sqlite_synchronous,
        )
        .await?;
        subscribe_to_everything(&format!("http://{}", server.addr), &key).await?;
        let url = format!("http://{}/v1/events", server.addr);
        subscribed.push(single_load(generator, url, Some(key), &args).await?);
        server.stop().await?;
    }
    // Ratios pair each round's phases before the medians sort them.
    let single_ratio = paired_ratio(&audited, &noops);
    let guarded_ratio = paired_ratio(&guarded, &noops);
    let single_vs_guarded = paired_ratio(&audited, &guarded);
    let unaudited_ratio = paired_ratio(&unaudited, &noops);
    let audit_ratio = paired_ratio(&audited, &unaudited);
    let outbox_ratio = paired_ratio(&subscribed, &audited);
    let subscribed_ratio = paired_ratio(&subscribed, &noops);
    let subscribed = median_phase(&mut subscribed);
    let (noop, guarded, single, unaudited) = (
        median_phase(&mut noops),
        median_phase(&mut guarded),
        median_phase(&mut audited),
        median_phase(&mut unaudited),
    );

    let (server, key) = start_server(&dbs.fresh("batch").await?, args.sqlite_synchronous).await?;
    let batch = load_batches(
        format!("http://{}/v1/events/batch", server.addr),
        key,
        &args,
    )
    .await?;
    server.stop().await?;

    let (total, size, sync) = (
        args.batches * args.batch_size,
        args.batch_size,
        args.sqlite_synchronous,
    );
    let raw_url = dbs.fresh("raw").await?;
    let (raw, raw_name) = if args.postgres_url.is_some() {
        (
            raw_postgres_copy(&raw_url, total, size).await?,
            "ceiling: raw binary COPY, 1000 rows each",
        )
    } else {
        let path = std::path::PathBuf::from(raw_url);
        let raw = tokio::task::spawn_blocking(move || raw_sqlite_inserts(&path, total, size, sync))
            .await??;
        (raw, "ceiling: raw batched SQLite inserts")
    };

    println!();
    println!(
        "{:<44} {:>10}  {:>6}  {:>20}  {:>8}  {:>9}",
        "phase", "events/s", "ratio", "CPU µs/event", "(writer)", "rounds"
    );
    let row = |name: &str, phase: &Phase, ratio: f64, range: String| {
        println!(
            "{:<44} {:>10.0}  {:>6.2}  {:>20}  {:>8}  {:>9}",
            name,
            phase.events_per_sec,
            ratio,
            phase.cpu_column(),
            phase.writer_column(),
            range
        );
    };
    row(
        "ceiling: no-op handler, same body",
        &noop,
        1.0,
        String::new(),
    );
    row(
        "ceiling 2: no-op behind key, limit, audit",
        &guarded,
        guarded_ratio.median,
        guarded_ratio.range(),
    );
    row(
        "annals: single events (POST /v1/events)",
        &single,
        single_ratio.median,
        single_ratio.range(),
    );
    row(
        "annals: single events, audit log off",
        &unaudited,
        unaudited_ratio.median,
        unaudited_ratio.range(),
    );
    let audit_cpu = match (single.total_us(), unaudited.total_us()) {
        (Some(on), Some(off)) => format!("{:+.1} for auditing", on - off),
        _ => String::new(),
    };
    println!(
        "{:<44} {:>10}  {:>6.2}  {:>20}  {:>8}  {:>9}",
        "audit log on / off (single events)",
        "",
        audit_ratio.median,
        audit_cpu,
        "",
        audit_ratio.range()
    );
    row(
        "annals: single events, one subscription",
        &subscribed,
        subscribed_ratio.median,
        subscribed_ratio.range(),
    );
    let outbox_cpu = match (subscribed.total_us(), single.total_us()) {
        (Some(with), Some(without)) => format!("{:+.1} for the outbox", with - without),
        _ => String::new(),
    };
    println!(
        "{:<44} {:>10}  {:>6.2}  {:>20}  {:>8}  {:>9}",
        "with / without a subscription (single)",
        "",
        outbox_ratio.median,
        outbox_cpu,
        "",
        outbox_ratio.range()
    );
    row(raw_name, &raw, 1.0, String::new());
    row(
        "annals: batches (POST /v1/events/batch)",
        &batch,
        batch.events_per_sec / raw.events_per_sec,
        String::new(),
    );
    println!();
    println!(
        "single events against ceiling 2 (the same access and audit layers, so only the event \
         path differs): {:.2} {}",
        single_vs_guarded.median,
        single_vs_guarded.range()
    );
    println!("targets: single >= 0.60 x no-op; batch >= 0.80 x raw writes; audit on/off >= 0.90");
    if args.postgres_url.is_some() {
        // The database server's CPU is not counted, so there is no CPU-bound limit to print.
        println!("(CPU columns count this process only, not the PostgreSQL server's.)");
    } else if let (Some(ceiling), Some(annals)) = (noop.total_us(), single.total_us()) {
        println!(
            "CPU per single event, all processes: no-op {ceiling:.1} µs, annals {annals:.1} µs; \
             when the {} CPUs are the limit, single events reach at most {:.2} of the no-op",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            ceiling / annals
        );
    }
    if args.query_rows > 0 {
        println!();
        let url = dbs.fresh("query").await?;
        query_phase(&url, args.query_rows, args.sqlite_synchronous).await?;
    }
    dbs.drop_all().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(events_per_sec: f64) -> Phase {
        Phase {
            events_per_sec,
            own_us: None,
            load_us: None,
            writer_us: None,
        }
    }

    #[test]
    fn ratios_pair_phases_of_the_same_round() {
        // A slow second round: the ratio of medians would pair 100 with 45 (0.45); within
        // each round annals reached 0.6, 0.5 and 0.7 of the ceiling.
        let noops = [phase(100.0), phase(60.0), phase(110.0)];
        let annals = [phase(60.0), phase(30.0), phase(77.0)];
        let spread = paired_ratio(&annals, &noops);
        assert!((spread.median - 0.6).abs() < 1e-9, "{spread:?}");
        assert!((spread.low - 0.5).abs() < 1e-9, "{spread:?}");
        assert!((spread.high - 0.7).abs() < 1e-9, "{spread:?}");
        assert_eq!(spread.range(), "0.50-0.70");
        let one = paired_ratio(&[phase(50.0)], &[phase(100.0)]);
        assert_eq!((one.median, one.range()), (0.5, String::new()));
    }

    #[test]
    fn wrk_output_counts_only_successes() {
        let out = "Running 3s test @ http://127.0.0.1:1/v1/events\n  1 threads and 64 connections\n\
                   90000 requests in 3.00s, 12.00MB read\n  Non-2xx or 3xx responses: 3000\n\
                   Requests/sec:  30000.00\n";
        assert_eq!(parse_wrk(out), Some((87_000.0, 3.0)));
        let out = "  500 requests in 500.00ms, 1.00MB read\n";
        assert_eq!(parse_wrk(out), Some((500.0, 0.5)));
        assert_eq!(parse_wrk("garbage"), None);
    }

    #[test]
    fn cpu_times_come_from_fields_14_to_17_after_the_command_name() {
        // pid (comm with spaces and a ')') state ppid … utime stime cutime cstime …
        let stat = "4242 (annals (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 7 3 20 0 9 0 1000 200000000 5000";
        assert_eq!(
            CpuTimes::parse(stat),
            Some(CpuTimes {
                own: Duration::from_millis(3000),
                children: Duration::from_millis(100),
                writer: Duration::ZERO,
            })
        );
        assert_eq!(CpuTimes::parse("4242 (annals) S 1 2"), None);
        assert!(CpuTimes::now().is_some(), "Linux has /proc/self/stat");
    }

    #[test]
    fn a_threads_cpu_time_is_found_by_its_name() {
        // A named thread burns two ticks of its own CPU, then waits; its time is found by name.
        let name = "annals-bench-t";
        let (burnt, wait) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let burner = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let own = || {
                    std::fs::read_to_string("/proc/thread-self/stat")
                        .ok()
                        .and_then(|stat| CpuTimes::parse(&stat))
                        .map_or(Duration::ZERO, |t| t.own)
                };
                while own() < CpuTimes::TICK * 2 {
                    std::hint::spin_loop();
                }
                burnt.send(()).unwrap();
                let _ = released.recv();
            })
            .unwrap();
        wait.recv().unwrap();
        assert!(CpuTimes::threads_named(name) >= CpuTimes::TICK * 2);
        assert_eq!(CpuTimes::threads_named("no-such-thread"), Duration::ZERO);
        drop(release);
        burner.join().unwrap();
    }

    #[test]
    fn wrk_script_sends_the_key_and_the_bench_body() {
        let script = wrk_script(Some("ank_x_y"));
        assert!(script.contains("wrk.headers[\"X-API-Key\"] = \"ank_x_y\""));
        assert!(script.contains("billing.invoice.paid"));
        assert!(!wrk_script(None).contains("X-API-Key"));
    }
}
