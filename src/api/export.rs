//! `GET /v1/events/export?format=ndjson|csv&…filters` (DESIGN.md "Query"): every event matching
//! the listing's filters, streamed page by page.
//!
//! Invariants: memory holds one page (`EXPORT_PAGE` events) at a time, whatever the result
//! size; the first page is read before the answer starts, so a bad or too-broad query still
//! gets its JSON error; the client scope is the same `read_scope` as every read. A later page
//! that fails ends the stream early (the status line is already sent), which the client sees
//! as a truncated body, and the failure is logged.

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{StreamExt, stream};

use super::AppState;
use super::extract::Auth;
use super::query_params::{parse_list_params, parse_pairs};
use crate::domain::StoredEvent;
use crate::domain::access::Scope;
use crate::error::ApiError;
use crate::store::{EventQuery, Order};

/// Events read per store query while exporting.
const EXPORT_PAGE: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/events/export", get(export))
        .route("/api/v1/events/export", get(export))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            Self::Ndjson => "attachment; filename=\"events.ndjson\"",
            Self::Csv => "attachment; filename=\"events.csv\"",
        }
    }
}

const CSV_COLUMNS: [&str; 17] = [
    "id",
    "seq",
    "client_id",
    "event_type",
    "user_id",
    "event_id",
    "source",
    "subject",
    "occurred_at",
    "received_at",
    "correlation_id",
    "status",
    "ip_address",
    "partition_key",
    "format",
    "data",
    "headers",
];

/// What a spreadsheet takes as the start of a formula in a cell (OWASP "CSV injection").
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. A value that a
/// spreadsheet would run as a formula (`=HYPERLINK(…)` in a `user_id` sent by anyone who can
/// write events) gets a leading `'`, which makes a spreadsheet take it as text (OWASP's advice);
/// the exact value is in the ndjson export.
fn csv_field(out: &mut String, value: &str) {
    let formula = value.starts_with(FORMULA_STARTS);
    if formula || value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn csv_row(out: &mut String, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// What an export's filters ask for: the format, the query (one page of `EXPORT_PAGE`, oldest
/// first unless `order` says otherwise) and the client named, if any, whose scope the caller
/// checks. The same `name=value` pairs as `GET /v1/events`, plus `format`; no `limit` or
/// `cursor`, since an export takes everything.
pub struct Plan {
    pub format: Format,
    pub query: EventQuery,
    pub requested_client: Option<crate::domain::ClientId>,
}

pub fn plan(mut pairs: Vec<(String, String)>) -> Result<Plan, ApiError> {
    let mut format = Format::Ndjson;
    if let Some(at) = pairs.iter().position(|(name, _)| name == "format") {
        format = match pairs.remove(at).1.as_str() {
            "ndjson" => Format::Ndjson,
            "csv" => Format::Csv,
            _ => return Err(ApiError::invalid("format", "must be ndjson or csv")),
        };
    }
    for name in ["limit", "cursor"] {
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(ApiError::invalid(
                name,
                "an export streams every matching event; page with GET /v1/events instead",
            ));
        }
    }
    let params = parse_list_params(&pairs)?;
    let mut query = params.query;
    query.limit = EXPORT_PAGE;
    if !pairs.iter().any(|(n, _)| n == "order") {
        query.order = Order::Asc; // an export reads like a log: oldest first
    }
    Ok(Plan {
        format,
        query,
        requested_client: params.requested_client,
    })
}

/// What an export starts with: CSV's header row; nothing for NDJSON.
pub fn head(format: Format) -> Vec<u8> {
    match format {
        Format::Csv => {
            let mut header = String::new();
            csv_row(&mut header, &CSV_COLUMNS);
            header.into_bytes()
        }
        Format::Ndjson => Vec::new(),
    }
}

/// A page of events in the export format.
pub fn render(format: Format, events: &[StoredEvent]) -> Result<Vec<u8>, serde_json::Error> {
    match format {
        Format::Ndjson => {
            let mut out = Vec::with_capacity(events.len() * 512);
            for event in events {
                serde_json::to_writer(&mut out, event)?;
                out.push(b'\n');
            }
            Ok(out)
        }
        Format::Csv => {
            let mut out = String::with_capacity(events.len() * 512);
            for e in events {
                let (id, seq) = (e.id.to_string(), e.seq.to_string());
                let (occurred, received) = (e.occurred_at.to_rfc3339(), e.received_at.to_rfc3339());
                let headers = serde_json::Value::Object(e.full_headers()).to_string();
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                let partition_key = e
                    .partition_key
                    .clone()
                    .unwrap_or_else(|| e.client_id.clone());
                csv_row(
                    &mut out,
                    &[
                        &id,
                        &seq,
                        &e.client_id,
                        &e.event_type,
                        &text(&e.user_id),
                        &text(&e.event_id),
                        &text(&e.source),
                        &text(&e.subject),
                        &occurred,
                        &received,
                        &text(&e.correlation_id),
                        &text(&e.status),
                        &text(&e.ip_address),
                        &partition_key,
                        e.format.name(),
                        &e.data,
                        &headers,
                    ],
                );
            }
            Ok(out.into_bytes())
        }
    }
}

/// Where the export stands between pages.
struct Cursor {
    state: AppState,
    query: EventQuery,
    format: Format,
    done: bool,
}

impl Cursor {
    /// Reads and renders the next page; `None` once everything is sent.
    async fn next_chunk(mut self) -> Option<(Result<Vec<u8>, std::io::Error>, Self)> {
        if self.done {
            return None;
        }
        let page = match self.state.store.query_events(self.query.clone()).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "export stopped early");
                return Some((Err(std::io::Error::other(e.to_string())), self.finished()));
            }
        };
        self.query.after_seq = page.next_after;
        self.done = page.next_after.is_none();
        match render(self.format, &page.events) {
            Ok(bytes) => Some((Ok(bytes), self)),
            Err(e) => Some((Err(std::io::Error::other(e)), self.finished())),
        }
    }

    fn finished(mut self) -> Self {
        self.done = true;
        self
    }
}

async fn export(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    principal.require(Scope::EventsRead)?;
    let Plan {
        format,
        mut query,
        requested_client,
    } = plan(parse_pairs(raw.as_deref())?)?;
    query.client_id = principal.read_scope(requested_client)?;

    // The first page before the answer, so its errors are still JSON errors.
    let first = state.store.query_events(query.clone()).await?;
    let mut head = head(format);
    head.extend(render(format, &first.events).map_err(ApiError::internal)?);
    query.after_seq = first.next_after;
    let rest = Cursor {
        state: state.clone(),
        query,
        format,
        done: first.next_after.is_none(),
    };
    let chunks = stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(stream::unfold(rest, Cursor::next_chunk))
        // Fused: layers such as gzip poll once more after the end to finish their output.
        .fuse();
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static(format.file_name()),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut out = String::new();
        csv_row(&mut out, &["plain", "a,b", "say \"hi\"", "two\nlines", ""]);
        assert_eq!(out, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n");
    }

    #[test]
    fn csv_keeps_formulas_from_running() {
        let mut out = String::new();
        csv_row(
            &mut out,
            &[
                "=1+1",
                "+1",
                "-2",
                "@SUM(A1)",
                "\tx",
                "=HYPERLINK(\"http://x\")",
                "a=b",
                "{}",
            ],
        );
        assert_eq!(
            out,
            "\"'=1+1\",\"'+1\",\"'-2\",\"'@SUM(A1)\",\"'\tx\",\"'=HYPERLINK(\"\"http://x\"\")\",a=b,{}\r\n"
        );
    }
}
