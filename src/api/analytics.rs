//! Analytics over HTTP (seed 002): `GET /v1/analytics/events-by-type`, `/timeseries`,
//! `/processing-metrics` and `/queue-status` (also under `/api/v1`).
//!
//! Counts come from the rollups the writers keep (`store::analytics`), never from a scan of
//! `events`, so they cost the same at a million events as at a thousand. A client sees its own
//! counts; an admin sees every client's, or one client's with `client_id`. Time bounds are
//! taken to the minute (`from` rounded down, `to` up): a rollup's smallest bucket.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::Json;
use axum::routing::get;
use serde_json::{Value, json};

use super::AppState;
use super::extract::Auth;
use super::query_params::{invalid_if_any, known_params, parse_limit, time_bound};
use crate::auth::Principal;
use crate::domain::access::Scope;
use crate::domain::analytics::{
    CountQuery, Counted, DAY_SECS, GroupBy, HOUR_SECS, Histogram, MINUTE_SECS, Rollup, ceil_to,
    floor_to, unix_secs,
};
use crate::domain::{ClientId, FieldError, Timestamp, TopicPattern};
use crate::error::ApiError;

/// Most buckets one time series answers with.
const MAX_BUCKETS: i64 = 10_080;
/// Most groups a time series names; the rest are summed into each bucket's `other`.
const MAX_GROUPS: usize = 50;
/// Longest window of the processing metrics.
const MAX_DAYS: i64 = 366;
/// Earliest and latest second a rollup bucket can hold (the years 0000–9999).
const ALL_TIME: (i64, i64) = (-62_167_219_200, 253_402_300_800);

pub fn router() -> Router<AppState> {
    let routes = || {
        Router::new()
            .route("/events-by-type", get(events_by_type))
            .route("/timeseries", get(timeseries))
            .route("/processing-metrics", get(processing_metrics))
            .route("/queue-status", get(queue_status))
    };
    Router::new()
        .nest("/v1/analytics", routes())
        .nest("/api/v1/analytics", routes())
}

/// The parameters the analytics endpoints take; each reads those it names.
#[derive(Default)]
struct Params {
    client_id: Option<ClientId>,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    source: Option<String>,
    event_type: Option<TopicPattern>,
    limit: Option<usize>,
    interval: Option<Interval>,
    group_by: Option<GroupBy>,
    days: Option<i64>,
}

impl Params {
    /// Parses the query string, taking only the parameters in `known`; every bad or unknown
    /// parameter is reported.
    fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let mut p = Self::default();
        let mut errors = known_params(raw, known, |name, value| match name {
            "client_id" => ClientId::parse_stored(value.to_owned()).map(|c| p.client_id = Some(c)),
            "from" => time_bound(value).map(|t| p.from = Some(t)),
            "to" => time_bound(value).map(|t| p.to = Some(t)),
            "source" => super::query_params::filter_text(value).map(|s| p.source = Some(s)),
            "event_type" => TopicPattern::parse(value).map(|t| p.event_type = Some(t)),
            "limit" => parse_limit(value).map(|n| p.limit = Some(n)),
            "interval" => Interval::parse(value).map(|i| p.interval = Some(i)),
            "group_by" => GroupBy::parse(value).map(|g| p.group_by = Some(g)),
            "days" => value
                .parse::<i64>()
                .ok()
                .filter(|d| (1..=MAX_DAYS).contains(d))
                .map(|d| p.days = Some(d))
                .ok_or_else(|| format!("must be a whole number of days from 1 to {MAX_DAYS}")),
            _ => Ok(()),
        })?;
        if let (Some(from), Some(to)) = (p.from, p.to)
            && from >= to
        {
            errors.push(FieldError::new("to", "must be later than from"));
        }
        invalid_if_any(errors)?;
        Ok(p)
    }

    /// What every analytics read starts with: the `events:read` scope, the parameters in
    /// `known`, and the client the counts are of — the caller's own, or for an admin the one
    /// named (`None`: all); a non-admin naming another client is refused.
    fn for_reader(
        principal: &Principal,
        raw: Option<&str>,
        known: &[&str],
    ) -> Result<(Self, Option<String>), ApiError> {
        principal.require(Scope::EventsRead)?;
        let p = Self::parse(raw, known)?;
        let client = principal
            .read_scope(p.client_id.clone())?
            .map(|c| c.to_string());
        Ok((p, client))
    }
}

/// A time series' step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interval {
    Minute,
    Hour,
    Day,
}

impl Interval {
    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(String::from("must be minute, hour or day")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    fn secs(self) -> i64 {
        match self {
            Self::Minute => MINUTE_SECS,
            Self::Hour => HOUR_SECS,
            Self::Day => DAY_SECS,
        }
    }

    /// The rollup its buckets are summed from.
    fn rollup(self) -> Rollup {
        match self {
            Self::Minute => Rollup::Minute,
            Self::Hour | Self::Day => Rollup::Hour,
        }
    }

    /// How far back a series goes without `from`: 60 minutes, 24 hours, 30 days.
    fn default_span(self) -> i64 {
        match self {
            Self::Minute => 60 * MINUTE_SECS,
            Self::Hour => DAY_SECS,
            Self::Day => 30 * DAY_SECS,
        }
    }
}

/// Named counts, largest first, ties by name (the order every analytics answer lists them in).
fn largest_first<N: PartialOrd>(counts: &mut [(String, N)]) {
    counts.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.0.cmp(&b.0))
    });
}

fn rfc3339(secs: i64) -> String {
    Timestamp::from_micros(secs.saturating_mul(1_000_000)).to_rfc3339()
}

/// The range `[from, to)` in seconds, widened to whole minutes.
fn minute_range(from: Option<Timestamp>, to: Option<Timestamp>) -> (i64, i64) {
    (
        from.map_or(ALL_TIME.0, |t| floor_to(unix_secs(t), MINUTE_SECS)),
        to.map_or(ALL_TIME.1, |t| {
            ceil_to(
                t.as_micros().div_euclid(1_000_000)
                    + i64::from(t.as_micros().rem_euclid(1_000_000) > 0),
                MINUTE_SECS,
            )
        }),
    )
}

/// Every event type's count in `[from, to)` (whole minutes): whole hours from the hour rollup,
/// the minutes at either end from the minute rollup.
async fn counts_by_type(
    state: &AppState,
    client_id: Option<String>,
    source: Option<String>,
    (from, to): (i64, i64),
) -> Result<HashMap<String, i64>, ApiError> {
    let first_hour = ceil_to(from, HOUR_SECS);
    let last_hour = floor_to(to, HOUR_SECS);
    let mut parts = Vec::new();
    if first_hour < last_hour {
        parts.push((Rollup::Hour, first_hour, last_hour));
        parts.push((Rollup::Minute, from, first_hour));
        parts.push((Rollup::Minute, last_hour, to));
    } else {
        parts.push((Rollup::Minute, from, to));
    }
    let mut by_type: HashMap<String, i64> = HashMap::new();
    for (rollup, from, to) in parts.into_iter().filter(|(_, f, t)| f < t) {
        let rows = state
            .store
            .count_events(CountQuery {
                client_id: client_id.clone(),
                rollup,
                from,
                to,
                width: 0,
                source: source.clone(),
                group: None,
            })
            .await?;
        for row in rows {
            *by_type.entry(row.event_type).or_default() += row.count;
        }
    }
    Ok(by_type)
}

async fn events_by_type(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (p, client) = Params::for_reader(
        &principal,
        raw.as_deref(),
        &["client_id", "from", "to", "source", "event_type", "limit"],
    )?;
    let range = minute_range(p.from, p.to);
    let by_type = counts_by_type(&state, client, p.source.clone(), range).await?;
    let mut types: Vec<(String, i64)> = by_type
        .into_iter()
        .filter(|(t, _)| {
            p.event_type
                .as_ref()
                .is_none_or(|pattern| pattern.matches(t))
        })
        .collect();
    largest_first(&mut types);
    let total: i64 = types.iter().map(|(_, n)| n).sum();
    let distinct = types.len();
    types.truncate(p.limit.unwrap_or(super::query_params::DEFAULT_LIMIT));
    Ok(Json(json!({
        "from": p.from.map(|_| rfc3339(range.0)),
        "to": p.to.map(|_| rfc3339(range.1)),
        "total": total,
        "distinct_types": distinct,
        "event_types": types
            .into_iter()
            .map(|(event_type, count)| json!({"event_type": event_type, "count": count}))
            .collect::<Vec<_>>(),
    })))
}

async fn timeseries(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (p, client) = Params::for_reader(
        &principal,
        raw.as_deref(),
        &[
            "client_id",
            "from",
            "to",
            "source",
            "event_type",
            "interval",
            "group_by",
        ],
    )?;
    let interval = p.interval.unwrap_or(Interval::Hour);
    let step = interval.secs();
    let to = match p.to {
        Some(to) => ceil_to(minute_range(None, Some(to)).1, step),
        None => ceil_to(unix_secs(Timestamp::now()) + 1, step),
    };
    let from = match p.from {
        Some(from) => floor_to(unix_secs(from), step),
        None => to - interval.default_span(),
    };
    if from >= to {
        return Err(ApiError::invalid(
            "from",
            "must be earlier than to (which defaults to now)",
        ));
    }
    let buckets = (to - from) / step;
    if buckets > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "from",
            format!(
                "the range holds {buckets} {}s; at most {MAX_BUCKETS} per series: narrow it or use a longer interval",
                interval.name()
            ),
        ));
    }
    let group = p.group_by;
    if group == Some(GroupBy::Client) && !principal.is_admin() {
        return Err(
            ApiError::forbidden("only an admin key may group by client").with_field("group_by")
        );
    }
    let rows = state
        .store
        .count_events(CountQuery {
            client_id: client,
            rollup: interval.rollup(),
            from,
            to,
            width: step,
            source: p.source.clone(),
            group,
        })
        .await?;
    let rows: Vec<Counted> = rows
        .into_iter()
        .filter(|r| {
            p.event_type
                .as_ref()
                .is_none_or(|t| t.matches(&r.event_type))
        })
        .collect();
    Ok(Json(series_json(interval, from, to, group, rows)))
}

/// A dense series: one bucket per step from `from` to `to`, with per-group counts when grouped
/// (the `MAX_GROUPS` largest by total; the rest in `other`).
fn series_json(
    interval: Interval,
    from: i64,
    to: i64,
    group: Option<GroupBy>,
    rows: Vec<Counted>,
) -> Value {
    let key = |r: &Counted| match group {
        Some(GroupBy::EventType) => Some(r.event_type.clone()),
        Some(_) => r.group.clone(),
        None => None,
    };
    let mut totals: HashMap<String, i64> = HashMap::new();
    for r in &rows {
        if let Some(k) = key(r) {
            *totals.entry(k).or_default() += r.count;
        }
    }
    let mut named: Vec<(String, i64)> = totals.into_iter().collect();
    largest_first(&mut named);
    let truncated = named.len() > MAX_GROUPS;
    let named: std::collections::HashSet<String> =
        named.into_iter().take(MAX_GROUPS).map(|(k, _)| k).collect();

    let mut buckets: BTreeMap<i64, (i64, BTreeMap<String, i64>, i64)> = BTreeMap::new();
    for r in rows {
        let k = key(&r);
        let bucket = buckets.entry(r.period).or_default();
        bucket.0 += r.count;
        match k {
            Some(k) if named.contains(&k) => *bucket.1.entry(k).or_default() += r.count,
            Some(_) => bucket.2 += r.count,
            None => {}
        }
    }
    let step = interval.secs();
    let mut total = 0;
    let mut out = Vec::with_capacity(((to - from) / step) as usize);
    let mut at = from;
    while at < to {
        let (count, groups, other) = buckets.remove(&at).unwrap_or_default();
        total += count;
        let mut bucket = json!({"start": rfc3339(at), "count": count});
        if group.is_some() {
            bucket["groups"] = json!(groups);
            if truncated {
                bucket["other"] = json!(other);
            }
        }
        out.push(bucket);
        at += step;
    }
    json!({
        "interval": interval.name(),
        "from": rfc3339(from),
        "to": rfc3339(to),
        "group_by": group.map(GroupBy::name),
        "total": total,
        "buckets": out,
    })
}

async fn processing_metrics(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (p, client) = Params::for_reader(&principal, raw.as_deref(), &["client_id", "days"])?;
    let days = p.days.unwrap_or(7);
    let now = unix_secs(Timestamp::now());
    let from = floor_to(now - days * DAY_SECS, HOUR_SECS);
    let to = floor_to(now, HOUR_SECS) + HOUR_SECS;
    let mut histogram = Histogram::default();
    for (slot, count) in state.store.latency_slots(client, from, to).await? {
        histogram.add(slot, count.max(0) as u64);
    }
    let ms = |us: Option<f64>| us.map(|us| (us / 10.0).round() / 100.0);
    Ok(Json(json!({
        "days": days,
        "from": rfc3339(from),
        "to": rfc3339(to),
        "measured": "from an append entering the write queue to its durable commit",
        "appends": histogram.count(),
        "p50_ms": ms(histogram.quantile_us(0.50)),
        "p95_ms": ms(histogram.quantile_us(0.95)),
        "p99_ms": ms(histogram.quantile_us(0.99)),
        "max_ms": ms(histogram.max_us().map(|us| us as f64)),
    })))
}

async fn queue_status(
    State(state): State<AppState>,
    Auth(principal): Auth,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (_, owner) = Params::for_reader(&principal, raw.as_deref(), &["client_id"])?;
    let deliveries = state.store.delivery_counts(owner).await?;
    let now = Timestamp::now();
    let mut body = json!({
        "deliveries": {
            "pending": deliveries.pending,
            "processing": deliveries.processing,
            "failed": deliveries.failed,
            "oldest_waiting": deliveries.oldest_waiting.map(Timestamp::to_rfc3339),
            "oldest_waiting_age_secs": deliveries
                .oldest_waiting
                .map(|at| (now.as_micros() - at.as_micros()).max(0) / 1_000_000),
        },
    });
    // The node's own queues carry every client's load: for admins only.
    if principal.is_admin() {
        let q = state.store.write_queue();
        body["write_queue"] = json!({
            "jobs": q.jobs,
            "max_jobs": q.max_jobs,
            "bytes": q.bytes,
            "max_bytes": q.max_bytes,
        });
        if let Some(audit) = &state.audit {
            let (queued, dropped) = audit.depth();
            body["audit_queue"] = json!({"records": queued, "dropped": dropped});
        }
    }
    Ok(Json(body))
}

/// How many of the largest types a live snapshot names.
const LIVE_TYPES: usize = 10;

/// What `/v1/ws/metrics` sends each tick: the last minute's events (per second and by type, by
/// event time, from the minute rollup: the previous minute weighted by how much of it is still
/// within the last 60 s), this hour's append latency, deliveries waiting and failed, and for an
/// admin this node's write queue.
pub(super) async fn live_metrics(
    state: &AppState,
    client: Option<String>,
    admin: bool,
) -> Result<Value, ApiError> {
    let now = Timestamp::now();
    let secs = unix_secs(now);
    let minute = floor_to(secs, MINUTE_SECS);
    let rows = state
        .store
        .count_events(CountQuery {
            client_id: client.clone(),
            rollup: Rollup::Minute,
            from: minute - MINUTE_SECS,
            to: minute + MINUTE_SECS,
            width: MINUTE_SECS,
            source: None,
            group: None,
        })
        .await?;
    let previous_share = (MINUTE_SECS - (secs - minute)) as f64 / MINUTE_SECS as f64;
    let mut by_type: HashMap<String, f64> = HashMap::new();
    for row in rows {
        let weight = if row.period < minute {
            previous_share
        } else {
            1.0
        };
        *by_type.entry(row.event_type).or_default() += row.count as f64 * weight;
    }
    let last_minute: f64 = by_type.values().sum();
    let mut types: Vec<(String, f64)> = by_type.into_iter().collect();
    largest_first(&mut types);
    types.truncate(LIVE_TYPES);
    let hour = floor_to(secs, HOUR_SECS);
    let mut histogram = Histogram::default();
    for (slot, count) in state
        .store
        .latency_slots(client.clone(), hour, hour + HOUR_SECS)
        .await?
    {
        histogram.add(slot, count.max(0) as u64);
    }
    let ms = |q: f64| {
        histogram
            .quantile_us(q)
            .map(|us| (us / 10.0).round() / 100.0)
    };
    let deliveries = state.store.delivery_counts(client.clone()).await?;
    let mut body = json!({
        "type": "metrics",
        "at": now.to_rfc3339(),
        "client_id": client,
        "events_last_minute": last_minute.round() as i64,
        "events_per_second": (last_minute / 60.0 * 100.0).round() / 100.0,
        "by_type": types
            .into_iter()
            .map(|(t, n)| json!({"event_type": t, "count": n.round() as i64}))
            .collect::<Vec<_>>(),
        "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "appends": histogram.count()},
        "deliveries": {
            "pending": deliveries.pending,
            "processing": deliveries.processing,
            "failed": deliveries.failed,
        },
    });
    if admin {
        let q = state.store.write_queue();
        body["write_queue"] = json!({"jobs": q.jobs, "bytes": q.bytes, "max_jobs": q.max_jobs});
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_widen_to_whole_minutes() {
        let at = |s: i64, us: i64| Some(Timestamp::from_micros(s * 1_000_000 + us));
        assert_eq!(minute_range(at(125, 0), at(180, 0)), (120, 180));
        assert_eq!(minute_range(at(120, 0), at(180, 1)), (120, 240));
        assert_eq!(minute_range(None, None), ALL_TIME);
    }

    #[test]
    fn a_series_is_dense_and_names_its_largest_groups() {
        let row = |period, t: &str, count| Counted {
            period,
            event_type: t.into(),
            group: None,
            count,
        };
        let v = series_json(
            Interval::Minute,
            0,
            180,
            Some(GroupBy::EventType),
            vec![row(0, "a", 2), row(120, "a", 1), row(120, "b", 4)],
        );
        assert_eq!(v["total"], 7);
        let buckets = v["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[1]["count"], 0);
        assert_eq!(buckets[2]["groups"], json!({"a": 1, "b": 4}));
        assert_eq!(buckets[0]["start"], "1970-01-01T00:00:00Z");
    }
}
