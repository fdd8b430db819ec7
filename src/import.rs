//! `annals import`: events from an NDJSON file (or stdin) into a running server, through its
//! batch API — a backfill of history kept elsewhere (a home-made table dumped as JSON lines,
//! another system's export). One line is one event, exactly what `POST /v1/events` takes.
//!
//! Invariants:
//! - Every event goes through the server's own ingest path (`POST /v1/events/batch`): the same
//!   validation, masking, type policy, idempotency and audit as any client's, so an import can
//!   store nothing a client could not.
//! - Batches are all-or-nothing and sent in file order, one at a time, so when a batch is
//!   refused every line before it is stored and none after it; the report names the refused
//!   lines and the `--skip` that resumes after the stored ones. Lines with an `event_id` are
//!   idempotent, so running an import again is also safe.
//! - A line that is not a JSON object is refused before its batch is sent, by line number.
//! - A busy server (`503`) or a rate limit (`429`) is waited out (`Retry-After`), not skipped.
//! - Memory holds one batch, whatever the file's size.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The NDJSON file: one event per line, each what `POST /v1/events` takes (blank lines are
    /// skipped); `-` reads standard input.
    pub file: PathBuf,
    /// The server to import into.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API key with `events:write` (`admin` for events of several clients).
    #[arg(long, env = "ANNALS_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Events per batch request (at most the server's `ANNALS_MAX_BATCH`).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Lines to skip at the start: resumes an import after the lines it stored.
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
}

/// Longest wait for a busy server before the import gives up.
const MOST_WAITED: Duration = Duration::from_secs(300);
/// Shortest wait before sending a batch again, whatever `Retry-After` says.
const LEAST_WAIT: Duration = Duration::from_millis(200);

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Events the server took: new ones plus those it already had.
    pub events: u64,
    /// Of them, those already recorded (same `event_id`, same content).
    pub duplicates: u64,
    /// The last line of the input whose event is stored (or skipped): `--skip` for a resume.
    pub through_line: u64,
}

/// One event read from the input, with its line number.
struct Line {
    number: u64,
    event: Value,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/events/batch", args.url.trim_end_matches('/'));
    crate::bus::client::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .context("making the HTTP client")?;
    let outcome = if args.file.as_os_str() == "-" {
        import(BufReader::new(tokio::io::stdin()), &client, &url, &args).await
    } else {
        let file = tokio::fs::File::open(&args.file)
            .await
            .with_context(|| format!("opening {}", args.file.display()))?;
        import(BufReader::new(file), &client, &url, &args).await
    };
    let done = |imported: &Imported| {
        format!(
            "{} event{} stored ({} new, {} already recorded), through line {}",
            imported.events,
            if imported.events == 1 { "" } else { "s" },
            imported.events - imported.duplicates,
            imported.duplicates,
            imported.through_line
        )
    };
    match outcome {
        Ok(imported) => {
            println!("Done: {}.", done(&imported));
            Ok(())
        }
        Err((imported, error)) => {
            eprintln!("Import stopped: {} so far.", done(&imported));
            eprintln!(
                "Nothing after line {} was stored; once the input is fixed, run again with \
                 --skip {} to go on from there.",
                imported.through_line, imported.through_line
            );
            Err(error)
        }
    }
}

/// Sends the input's events in batches; on a failure, what was stored before it and why.
async fn import(
    input: impl AsyncBufRead + Unpin,
    client: &reqwest::Client,
    url: &str,
    args: &ImportArgs,
) -> Result<Imported, (Imported, anyhow::Error)> {
    let mut imported = Imported {
        through_line: args.skip,
        ..Imported::default()
    };
    let mut lines = input.lines();
    let mut number = 0u64;
    let mut batch: Vec<Line> = Vec::new();
    loop {
        let next = match lines.next_line().await {
            Ok(next) => next,
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("reading line {}", number + 1));
                return Err((imported, e));
            }
        };
        let Some(text) = next else { break };
        number += 1;
        if number <= args.skip {
            continue;
        }
        if text.trim().is_empty() {
            if batch.is_empty() {
                imported.through_line = number;
            }
            continue;
        }
        let event = match crate::api::extract::parse_json(text.as_bytes()) {
            Ok(event @ Value::Object(_)) => event,
            Ok(_) => {
                let e = anyhow::anyhow!("line {number}: an event must be a JSON object");
                return Err((imported, e));
            }
            Err(e) => {
                let e = anyhow::anyhow!("line {number}: {}", e.summary());
                return Err((imported, e));
            }
        };
        batch.push(Line { number, event });
        if batch.len() as u64 == args.batch {
            send(
                client,
                url,
                &args.key,
                std::mem::take(&mut batch),
                &mut imported,
            )
            .await?;
        }
    }
    if !batch.is_empty() {
        send(client, url, &args.key, batch, &mut imported).await?;
    }
    imported.through_line = imported.through_line.max(number);
    Ok(imported)
}

/// Posts one batch, waiting out a busy server; counts it into `imported` once stored.
async fn send(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    batch: Vec<Line>,
    imported: &mut Imported,
) -> Result<(), (Imported, anyhow::Error)> {
    let last_line = batch.last().map_or(imported.through_line, |l| l.number);
    let numbers: Vec<u64> = batch.iter().map(|l| l.number).collect();
    let body = json!({"events": batch.into_iter().map(|l| l.event).collect::<Vec<_>>()});
    let mut waited = Duration::ZERO;
    let fail = |imported: &mut Imported, e: anyhow::Error| Err((std::mem::take(imported), e));
    loop {
        let response = match client
            .post(url)
            .header("x-api-key", key)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                let e = anyhow::Error::new(e)
                    .context(format!("sending lines {}–{last_line} to {url}", numbers[0]));
                return fail(imported, e);
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs)
            .max(LEAST_WAIT);
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            let stored = answer["ids"].as_array().map_or(0, Vec::len) as u64;
            let duplicates = answer["duplicates"].as_array().map_or(0, Vec::len) as u64;
            imported.events += stored;
            imported.duplicates += duplicates;
            imported.through_line = last_line;
            return Ok(());
        }
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) && waited < MOST_WAITED
        {
            tokio::time::sleep(retry_after).await;
            waited += retry_after;
            continue;
        }
        return fail(imported, refused(status, &answer, &numbers));
    }
}

/// Why the server refused a batch, with each item's problem at its line.
fn refused(status: StatusCode, answer: &Value, numbers: &[u64]) -> anyhow::Error {
    let message = answer["message"].as_str().unwrap_or("no explanation given");
    let mut text = format!(
        "the server refused lines {}–{} ({status}): {message}",
        numbers.first().copied().unwrap_or(0),
        numbers.last().copied().unwrap_or(0)
    );
    for item in answer["errors"].as_array().into_iter().flatten() {
        let line = item["index"]
            .as_u64()
            .and_then(|i| numbers.get(i as usize))
            .map_or(String::from("?"), u64::to_string);
        let field = item["field"].as_str().unwrap_or("");
        let problem = item["message"].as_str().unwrap_or("");
        text.push_str(&format!("\n  line {line}: {field}: {problem}"));
    }
    anyhow::Error::msg(text)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server that answers `503` to the first `busy` requests, then stores every batch.
    async fn busy_server(busy: usize) -> (String, Arc<AtomicUsize>) {
        use axum::http::{HeaderMap, StatusCode as Status};
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let app = axum::Router::new().route(
            "/v1/events/batch",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) < busy {
                        let mut headers = HeaderMap::new();
                        headers.insert("retry-after", "0".parse().unwrap());
                        return (Status::SERVICE_UNAVAILABLE, headers, axum::Json(json!({})));
                    }
                    let n = body["events"].as_array().map_or(0, Vec::len);
                    let ids: Vec<u64> = (0..n as u64).collect();
                    let answer = json!({"ids": ids, "duplicates": [0]});
                    (Status::CREATED, HeaderMap::new(), axum::Json(answer))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/events/batch", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    #[tokio::test]
    async fn a_busy_server_is_waited_out_and_every_line_counted() {
        crate::bus::client::install_crypto_provider();
        let (url, calls) = busy_server(2).await;
        let args = ImportArgs {
            file: PathBuf::from("-"),
            url: String::new(),
            key: String::from("k"),
            batch: 2,
            skip: 1,
        };
        let input = "{\"event_type\":\"a.b.created\"}\n".repeat(5) + "\n";
        let imported = import(input.as_bytes(), &reqwest::Client::new(), &url, &args)
            .await
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(
            imported,
            Imported {
                events: 4,
                duplicates: 2,
                through_line: 6
            },
            "lines 2-5 in two batches, after two refusals"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_refusal_names_each_item_by_its_line() {
        let answer = json!({
            "error": "validation_failed",
            "message": "2 fields are invalid",
            "errors": [
                {"index": 0, "field": "event_type", "message": "is required"},
                {"index": 2, "field": "data", "message": "must be a JSON object"},
                {"index": 9, "field": "x", "message": "out of range"},
            ]
        });
        let text = refused(StatusCode::UNPROCESSABLE_ENTITY, &answer, &[4, 6, 7]).to_string();
        assert_eq!(
            text,
            "the server refused lines 4–7 (422 Unprocessable Entity): 2 fields are invalid\n  \
             line 4: event_type: is required\n  line 7: data: must be a JSON object\n  \
             line ?: x: out of range"
        );
    }
}
