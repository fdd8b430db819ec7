//! Event queries as SQL for PostgreSQL: the same filters as the SQLite store, with `data`
//! filters as JSONB containment (served by the GIN index) and topic patterns as a regex.

use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::domain::page::IdPage;
use crate::store::indexed::IndexedField;
use crate::store::{DataFilter, EventQuery, Order};

/// Column list every event read selects, in the order `row_to_event` expects.
pub(super) const EVENT_COLUMNS: &str = "seq, id, client_id, event_type, user_id, data::text, \
event_id, source, subject, occurred_at, received_at, correlation_id, status, ip_address, \
headers::text, partition_key, format";

pub(super) type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// The containment documents a data filter matches: `{"a":{"b":"v"}}`, plus the number or
/// boolean form when `v` is one (`amount=1200` matches `1200` and `"1200"`).
fn containment_docs(filter: &DataFilter) -> Vec<Value> {
    let mut leaves = vec![Value::String(filter.value.clone())];
    if let Ok(v @ (Value::Number(_) | Value::Bool(_))) =
        serde_json::from_str::<Value>(&filter.value)
    {
        // Only when the value is exactly that JSON text (`01` or `1e3` stay strings).
        let canonical = v.to_string();
        if canonical == filter.value {
            leaves.push(v);
        }
    }
    leaves
        .into_iter()
        .map(|leaf| {
            filter.path.iter().rev().fold(leaf, |inner, key| {
                let mut obj = serde_json::Map::new();
                obj.insert(key.clone(), inner);
                Value::Object(obj)
            })
        })
        .collect()
}

/// A `WHERE` clause built term by term; `$#` in a term stands for its value's placeholder (a
/// term may use it more than once).
pub(super) struct Filters {
    pub sql: String,
    pub args: Params,
}

impl Filters {
    pub fn new(select: &str) -> Self {
        Self {
            sql: select.to_string(),
            args: Vec::new(),
        }
    }

    pub fn add(&mut self, term: &str, value: Box<dyn ToSql + Sync + Send>) {
        self.args.push(value);
        self.sql
            .push_str(&term.replace("$#", &format!("${}", self.args.len())));
    }

    /// Closes an id-ordered listing: the time range on `time_column`, the cursor, newest first,
    /// one row more than the page so the caller can tell whether another page exists.
    pub fn page(mut self, time_column: &str, page: &IdPage) -> Self {
        if let Some(from) = page.from {
            self.add(
                &format!(" AND {time_column} >= $#"),
                Box::new(to_datetime(from.as_micros())),
            );
        }
        if let Some(to) = page.to {
            self.add(
                &format!(" AND {time_column} < $#"),
                Box::new(to_datetime(to.as_micros())),
            );
        }
        if let Some(before) = page.before_id {
            self.add(" AND id < $#", Box::new(before));
        }
        self.add(
            " ORDER BY id DESC LIMIT $#",
            Box::new(page.limit as i64 + 1),
        );
        self
    }

    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Builds the page query: `limit + 1` rows so the caller can tell whether another page exists.
/// `parts` (from `merge_parts`) splits the query into one read per client, or per client and
/// event type, each along its index range for at most a page, and a sort of those.
pub(super) fn page_sql(
    q: &EventQuery,
    indexed: &[IndexedField],
    parts: Option<&[Part]>,
) -> (String, Params) {
    // Parts name the client, and the type when they split a pattern query by type.
    let by_type = parts.is_some() && q.reads_type_ranges();
    // The terms after `WHERE TRUE`; a merge repeats them in each range's part.
    let mut sql = String::new();
    let mut args: Params = Vec::new();
    let mut push = |sql: &mut String, template: &str, value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        sql.push_str(&template.replace("$?", &format!("${}", args.len())));
    };
    for (column, value) in [
        (
            "client_id",
            q.client_id
                .as_ref()
                .filter(|_| parts.is_none())
                .map(|c| c.as_str().to_string()),
        ),
        ("user_id", q.user_id.clone()),
        ("source", q.source.clone()),
        ("subject", q.subject.clone()),
        ("correlation_id", q.correlation_id.clone()),
        ("status", q.status.clone()),
    ] {
        if let Some(v) = value {
            push(&mut sql, &format!(" AND {column} = $?"), Box::new(v));
        }
    }
    if let Some(pattern) = q.event_type.as_ref().filter(|_| !by_type) {
        if pattern.is_exact() {
            push(
                &mut sql,
                " AND event_type = $?",
                Box::new(pattern.as_str().to_string()),
            );
        } else {
            let (low, high) = pattern.type_range();
            if !low.is_empty() {
                push(&mut sql, " AND event_type >= $?", Box::new(low));
                push(&mut sql, " AND event_type < $?", Box::new(high));
            }
            push(
                &mut sql,
                " AND ('.' || event_type) ~ $?",
                Box::new(pattern.to_dotted_regex()),
            );
        }
    }
    if let Some(format) = q.format {
        // A literal, not a parameter: the planner can then use the partial format indexes.
        sql.push_str(&format!(" AND format = {}", format.code()));
    }
    if let Some(from) = q.from {
        push(
            &mut sql,
            " AND occurred_at >= $?",
            Box::new(to_datetime(from.as_micros())),
        );
    }
    if let Some(to) = q.to {
        push(
            &mut sql,
            " AND occurred_at < $?",
            Box::new(to_datetime(to.as_micros())),
        );
    }
    for filter in &q.data {
        if let Some(field) = indexed.iter().find(|f| f.serves(filter)) {
            // The index's own expression, so the planner can use it; containment follows.
            args.push(Box::new(filter.value.clone()));
            sql.push_str(&format!(" AND {} = ${}", field.postgres_expr(), args.len()));
        }
        let docs = containment_docs(filter);
        let terms: Vec<String> = docs
            .into_iter()
            .map(|doc| {
                args.push(Box::new(doc));
                format!("data @> ${}", args.len())
            })
            .collect();
        sql.push_str(&format!(" AND ({})", terms.join(" OR ")));
    }
    if let Some(after) = q.after_seq {
        let op = match q.order {
            Order::Desc => "<",
            Order::Asc => ">",
        };
        args.push(Box::new(after));
        sql.push_str(&format!(" AND seq {op} ${}", args.len()));
    }
    let direction = match q.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    args.push(Box::new(q.limit as i64 + 1));
    let limit = format!("${}", args.len());
    let terms = sql;
    let sql = match parts {
        None => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE TRUE{terms} ORDER BY seq {direction} LIMIT {limit}"
        ),
        Some([]) => format!("SELECT {EVENT_COLUMNS} FROM events WHERE FALSE LIMIT {limit}"),
        Some(parts) => {
            let mut selects = Vec::with_capacity(parts.len());
            for (client, event_type) in parts {
                args.push(Box::new(client.clone()));
                let mut part = format!("client_id = ${}", args.len());
                if let Some(event_type) = event_type {
                    args.push(Box::new(event_type.clone()));
                    part.push_str(&format!(" AND event_type = ${}", args.len()));
                }
                selects.push(format!(
                    "(SELECT {EVENT_COLUMNS} FROM events WHERE {part}{terms} \
                     ORDER BY seq {direction} LIMIT {limit})"
                ));
            }
            format!(
                "SELECT * FROM ({}) merged ORDER BY seq {direction} LIMIT {limit}",
                selects.join(" UNION ALL ")
            )
        }
    };
    (sql, args)
}

/// One part of a split query: a client, and an event type when a pattern query is split by
/// type (`EventQuery::reads_type_ranges`).
pub(super) type Part = (String, Option<String>);

/// Whether an admin query (every client) is split by client: when it filters on a column
/// whose index starts with `client_id`, each client's part reads that index in seq order,
/// where the whole query would walk every event by seq.
pub(super) fn splits_by_client(q: &EventQuery) -> bool {
    q.client_id.is_none()
        && (q.user_id.is_some()
            || q.event_type.is_some()
            || q.source.is_some()
            || q.correlation_id.is_some()
            || q.from.is_some()
            || q.to.is_some())
}

pub(super) fn to_datetime(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_covers_string_and_number_forms() {
        let f = DataFilter {
            path: vec!["a".into(), "b".into()],
            value: "1200".into(),
        };
        let docs: Vec<String> = containment_docs(&f).iter().map(Value::to_string).collect();
        assert_eq!(docs, [r#"{"a":{"b":"1200"}}"#, r#"{"a":{"b":1200}}"#]);
        let f = DataFilter {
            path: vec!["x".into()],
            value: "01".into(),
        };
        assert_eq!(
            containment_docs(&f).len(),
            1,
            "01 is not the JSON text of a number"
        );
    }
}
