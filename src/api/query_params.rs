//! Query-string parsing for event listings: reserved parameters become typed filters, every
//! other `name=value` becomes a filter on `data` (seed 001), `data.a.b=value` on a nested field.
//! Also the opaque cursor and the `Link: rel="next"` header.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::nul::{self, NUL_MESSAGE};
use crate::domain::page::IdPage;
use crate::domain::{ClientId, FieldError, Timestamp, TopicPattern};
use crate::error::ApiError;
use crate::store::{DataFilter, EventQuery, Order};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
const MAX_DATA_FILTERS: usize = 16;
const MAX_VALUE_LEN: usize = 1024;

/// Parsed listing parameters; `client_id` is what the caller asked for, before the tenancy check.
pub struct ListParams {
    pub query: EventQuery,
    pub requested_client: Option<ClientId>,
}

/// The query string's `name=value` pairs, percent-decoded. A pair that does not decode to UTF-8
/// is refused rather than read with replacement characters: a filter on a mangled name or value
/// would quietly match nothing.
pub fn parse_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or("");
    let malformed = |why: String| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("the query string is malformed: {why}"),
        )
    };
    if let Some(pair) = raw.split('&').find(|pair| {
        percent_encoding::percent_decode_str(pair)
            .decode_utf8()
            .is_err()
    }) {
        let shown: String = pair.chars().take(64).collect();
        return Err(malformed(format!(
            "'{shown}' is not UTF-8 once percent-decoded"
        )));
    }
    let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
        .map_err(|e| malformed(e.to_string()))?;
    // No stored text holds U+0000 (see `domain::nul`), and PostgreSQL takes none as a parameter.
    if let Some((name, _)) = pairs
        .iter()
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
    {
        return Err(ApiError::invalid(nul::shown(name), NUL_MESSAGE));
    }
    Ok(pairs)
}

pub fn parse_list_params(pairs: &[(String, String)]) -> Result<ListParams, ApiError> {
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let mut requested_client = None;
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in pairs {
        if !seen.insert(name.as_str()) {
            errors.push(FieldError::new(name, "is given more than once"));
            continue;
        }
        if value.chars().count() > MAX_VALUE_LEN {
            errors.push(FieldError::new(
                name,
                format!("must be at most {MAX_VALUE_LEN} characters"),
            ));
            continue;
        }
        let text = || filter_text(value).map(Some);
        let result: Result<(), String> = match name.as_str() {
            "user_id" => text().map(|v| q.user_id = v),
            "source" => text().map(|v| q.source = v),
            "subject" => text().map(|v| q.subject = v),
            "correlation_id" => text().map(|v| q.correlation_id = v),
            "status" => text().map(|v| q.status = v),
            "event_type" => TopicPattern::parse(value)
                .map(|p| q.event_type = Some(p))
                .map_err(|e| with_url_hint(e, value)),
            "from" => time_bound(value).map(|t| q.from = Some(t)),
            "to" => time_bound(value).map(|t| q.to = Some(t)),
            "client_id" => {
                ClientId::parse_stored(value.clone()).map(|c| requested_client = Some(c))
            }
            "limit" => parse_limit(value).map(|n| q.limit = n),
            "order" => parse_order(value).map(|o| q.order = o),
            "cursor" => decode_cursor(value).map(|s| q.after_seq = Some(s)),
            other => data_path(other).map(|path| {
                q.data.push(DataFilter {
                    path,
                    value: value.clone(),
                })
            }),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name, message));
        }
    }
    if q.data.len() > MAX_DATA_FILTERS {
        errors.push(FieldError::new(
            "data",
            format!("at most {MAX_DATA_FILTERS} data filters"),
        ));
    }
    errors.extend(empty_range(q.from, q.to));
    if errors.is_empty() {
        Ok(ListParams {
            query: q,
            requested_client,
        })
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

/// Parses an id-paged listing's query string: the shared `client_id`, `from`, `to`, `limit` and
/// `cursor`, and through `specific` the listing's own filters (`None` = not one of them). Every
/// bad parameter is reported; `filters` names them all for the unknown-parameter message.
pub fn parse_id_listing(
    pairs: &[(String, String)],
    filters: &str,
    mut specific: impl FnMut(&str, &str) -> Option<Result<(), String>>,
) -> Result<(IdPage, Option<ClientId>), ApiError> {
    let mut page = IdPage {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    let mut client = None;
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in pairs {
        if !seen.insert(name.as_str()) {
            errors.push(FieldError::new(name, "is given more than once"));
            continue;
        }
        let result = match name.as_str() {
            "client_id" => ClientId::parse(value).map(|c| client = Some(c)),
            "from" => time_bound(value).map(|t| page.from = Some(t)),
            "to" => time_bound(value).map(|t| page.to = Some(t)),
            "limit" => parse_limit(value).map(|n| page.limit = n),
            "cursor" => decode_cursor(value).map(|id| page.before_id = Some(id)),
            other => specific(other, value).unwrap_or_else(|| {
                Err(format!(
                    "unknown parameter; filters are {filters}, client_id, from, to, limit, cursor"
                ))
            }),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name.clone(), message));
        }
    }
    errors.extend(empty_range(page.from, page.to));
    if errors.is_empty() {
        Ok((page, client))
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

/// A `from` or `to` bound (`Timestamp::parse_bound`), its refusal with `with_url_hint`.
pub fn time_bound(value: &str) -> Result<Timestamp, String> {
    Timestamp::parse_bound(value).map_err(|e| with_url_hint(e, value))
}

/// A refused query value's message, plus what the URL most likely did to it: a `+` in a query
/// string is read as a space (`10:00:00+05:30` arrives as `10:00:00 05:30`), and a bare `#`
/// starts the URL's fragment, so `billing.#` arrives as `billing.`.
fn with_url_hint(message: String, value: &str) -> String {
    if value.contains(' ') {
        format!("{message}; a + in a query string is read as a space: write it as %2B")
    } else if value.ends_with('.') {
        format!(
            "{message}; to match any number of segments write # as %23 (a bare # starts the \
             URL's fragment and is not sent)"
        )
    } else {
        message
    }
}

/// `from` (inclusive) must come before `to` (exclusive): an empty range is a mistake, not a
/// question with no answer.
fn empty_range(from: Option<Timestamp>, to: Option<Timestamp>) -> Option<FieldError> {
    match (from, to) {
        (Some(from), Some(to)) if from >= to => {
            Some(FieldError::new("to", "must be later than from"))
        }
        _ => None,
    }
}

/// Reads a query string whose parameters must all be in `known`, each at most once, handing
/// each to `take`; returns what was wrong with them (bad values, repeats, unknown names), all
/// together, for the caller to add its own checks to.
pub fn known_params(
    raw: Option<&str>,
    known: &[&str],
    mut take: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<Vec<FieldError>, ApiError> {
    let pairs = parse_pairs(raw)?;
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in &pairs {
        if !seen.insert(name.as_str()) {
            errors.push(FieldError::new(name, "is given more than once"));
        } else if !known.contains(&name.as_str()) {
            errors.push(FieldError::new(
                name,
                format!(
                    "unknown parameter; this endpoint takes {}",
                    known.join(", ")
                ),
            ));
        } else if let Err(message) = take(name, value) {
            errors.push(FieldError::new(name, message));
        }
    }
    Ok(errors)
}

/// `known_params` for a query string with no checks across parameters: any problem is the
/// answer (a 422 naming each parameter).
pub fn only_known_params(
    raw: Option<&str>,
    known: &[&str],
    take: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<(), ApiError> {
    invalid_if_any(known_params(raw, known, take)?)
}

/// `Ok` when `errors` is empty, else the 422 that names each.
pub fn invalid_if_any(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

/// The value of a filter on a text field. No stored row has an empty one (ingest refuses it),
/// so an empty filter is a mistake, often an unset variable in the caller's URL, not a question
/// whose answer is "nothing".
pub fn filter_text(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err(String::from(
            "must not be empty; leave the parameter out to match any value",
        ))
    } else {
        Ok(value.to_string())
    }
}

/// A page size: 1 to `MAX_LIMIT`.
pub fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number from 1 to {MAX_LIMIT}")),
    }
}

/// `true` or `false`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(String::from("must be true or false")),
    }
}

fn parse_order(text: &str) -> Result<Order, String> {
    match text {
        "asc" => Ok(Order::Asc),
        "desc" => Ok(Order::Desc),
        _ => Err(String::from("must be asc or desc")),
    }
}

/// `amount` → `["amount"]`; `data.a.b` → `["a", "b"]`.
fn data_path(name: &str) -> Result<Vec<String>, String> {
    let path: Vec<&str> = match name.strip_prefix("data.") {
        Some(rest) => rest.split('.').collect(),
        None => vec![name],
    };
    if path.len() > 8 {
        return Err(String::from(
            "a data filter path may have at most 8 segments",
        ));
    }
    for segment in &path {
        if segment.is_empty()
            || segment.len() > 128
            || segment.contains(['"', '\\'])
            || segment.chars().any(char::is_control)
        {
            return Err(String::from(
                "is not a usable data field name (1-128 characters, no quotes, backslashes or empty segments)",
            ));
        }
    }
    Ok(path.into_iter().map(String::from).collect())
}

pub fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(text: &str) -> Result<i64, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("seq:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            String::from("is not a cursor this server issued; use the Link header's URL")
        })
}

/// A JSON array of the first `limit` of `rows` (a store returns one more when another page
/// exists), with a `Link: rel="next"` header continuing below the last row's id.
pub fn paged_json<'r, T, V: serde::Serialize + 'r>(
    rows: &'r mut Vec<T>,
    limit: usize,
    path: &str,
    pairs: &[(String, String)],
    id_of: impl Fn(&T) -> i64,
    view: impl Fn(&'r T) -> V,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let rows: &'r Vec<T> = rows;
    let mut response = axum::Json(rows.iter().map(view).collect::<Vec<_>>()).into_response();
    if more
        && let Some(last) = rows.last()
        && let Ok(link) = axum::http::HeaderValue::from_str(&next_link(path, pairs, id_of(last)))
    {
        response
            .headers_mut()
            .insert(axum::http::header::LINK, link);
    }
    response
}

/// `<path?…&cursor=…>; rel="next"`, keeping every other parameter as the client sent it.
pub fn next_link(path: &str, pairs: &[(String, String)], next_after: i64) -> String {
    let mut kept: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let cursor = encode_cursor(next_after);
    kept.push(("cursor", &cursor));
    let query = serde_urlencoded::to_string(&kept).unwrap_or_default();
    format!("<{path}?{query}>; rel=\"next\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        parse_pairs(Some(q)).unwrap()
    }

    #[test]
    fn unknown_names_are_data_filters() {
        let p =
            parse_list_params(&pairs("user_id=u1&amount=1200&data.a.b=x&data.status=ok")).unwrap();
        assert_eq!(p.query.user_id.as_deref(), Some("u1"));
        let paths: Vec<_> = p.query.data.iter().map(|d| d.path.join("/")).collect();
        assert_eq!(paths, ["amount", "a/b", "status"]);
        assert!(p.query.status.is_none());
    }

    #[test]
    fn id_listings_refuse_an_empty_range_and_repeated_names() {
        let no_filters = |_: &str, _: &str| None;
        let Err(e) = parse_id_listing(
            &pairs("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
            "none",
            no_filters,
        ) else {
            panic!("an empty range should fail");
        };
        assert_eq!(e.errors[0].field, "to");
        let Err(e) = parse_id_listing(&pairs("limit=5&limit=6"), "none", no_filters) else {
            panic!("a repeated name should fail");
        };
        assert_eq!(e.errors[0].message, "is given more than once");
        assert!(
            parse_id_listing(
                &pairs("from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"),
                "none",
                no_filters
            )
            .is_ok()
        );
    }

    #[test]
    fn pairs_must_decode_to_utf8() {
        assert_eq!(
            pairs("user_id=%C3%A9l%C3%A8ve&a+b=c+d"),
            [
                ("user_id".into(), "élève".into()),
                ("a b".into(), "c d".into())
            ]
        );
        for bad in ["%ff=1", "user_id=%C3", "a=1&b=%80%80"] {
            let e = parse_pairs(Some(bad)).expect_err(bad);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(e.code, "invalid_query", "{bad}");
        }
        // U+0000 decodes, but no store can look for it: a 422 naming the parameter.
        for (bad, field) in [
            ("user_id=%00", "user_id"),
            ("a=1&data.x%00=1", "data.x\\u0000"),
        ] {
            let e = parse_pairs(Some(bad)).expect_err(bad);
            assert_eq!(
                e.status,
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "{bad}"
            );
            assert_eq!(e.field.as_deref(), Some(field), "{bad}");
        }
    }

    #[test]
    fn bad_parameters_are_all_reported() {
        let Err(e) = parse_list_params(&pairs(
            "limit=0&order=up&from=never&cursor=zz&event_type=a..b",
        )) else {
            panic!("should fail");
        };
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limit", "order", "from", "cursor", "event_type"]);
    }

    #[test]
    fn refusals_say_what_the_url_did_to_a_plus_or_a_hash() {
        let message = |q: &str| {
            let Err(e) = parse_list_params(&pairs(q)) else {
                panic!("{q} should fail");
            };
            e.errors[0].message.clone()
        };
        assert!(message("from=2026-12-02T10:00:00+05:30").contains("%2B"));
        assert!(message("to=2026-12-02T10:00:00+05:30").contains("%2B"));
        assert!(message("event_type=billing.").contains("%23"));
        assert!(!message("from=yesterday").contains('%'));
        assert!(
            parse_list_params(&pairs(
                "from=2026-12-02T10:00:00%2B05:30&event_type=billing.%23"
            ))
            .is_ok()
        );
    }

    #[test]
    fn cursor_round_trip_and_link() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Ok(42));
        let link = next_link("/v1/events", &pairs("user_id=a%20b&cursor=old"), 7);
        assert_eq!(
            link,
            format!(
                "</v1/events?user_id=a+b&cursor={}>; rel=\"next\"",
                encode_cursor(7)
            )
        );
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_list_params(&pairs("user_id=a&user_id=b")).is_err());
    }

    #[test]
    fn empty_text_filters_are_refused_but_empty_data_filters_are_not() {
        let Err(e) = parse_list_params(&pairs("user_id=&source=&subject=&correlation_id=&status="))
        else {
            panic!("empty filters should fail");
        };
        let fields: Vec<_> = e.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["user_id", "source", "subject", "correlation_id", "status"]
        );
        assert!(
            e.errors[0].message.contains("leave the parameter out"),
            "{e:?}"
        );
        // A data field may hold an empty string.
        let p = parse_list_params(&pairs("plan=")).expect("an empty data filter is a question");
        assert_eq!(p.query.data[0].value, "");
    }
}
