//! Event queries as SQL for SQLite: filters become `WHERE` terms that the composite indexes
//! `(client_id, <field>, seq)` serve; `data` filters use the JSON functions.

use rusqlite::types::Value as SqlValue;

use crate::domain::page::IdPage;
use crate::store::indexed::{IndexedField, sqlite_candidates};
use crate::store::{EventQuery, Order};

/// Column list every event read selects, in the order `row_to_event` expects.
pub(super) const EVENT_COLUMNS: &str = "seq, id, client_id, event_type, user_id, data, event_id, \
source, subject, occurred_at, received_at, correlation_id, status, ip_address, headers, partition_key, format";

/// Name of the SQL function registered on read connections that applies `TopicPattern::matches`.
pub(super) const TOPIC_MATCH_FN: &str = "annals_topic_match";

/// A `WHERE` clause built term by term; `?#` in a term stands for its value's placeholder (a
/// term may use it more than once).
pub(super) struct Filters {
    pub sql: String,
    pub args: Vec<SqlValue>,
}

impl Filters {
    pub fn new(select: &str) -> Self {
        Self {
            sql: select.to_string(),
            args: Vec::new(),
        }
    }

    pub fn add(&mut self, term: &str, value: SqlValue) {
        self.args.push(value);
        self.sql
            .push_str(&term.replace("?#", &format!("?{}", self.args.len())));
    }

    /// Closes an id-ordered listing: the time range on `time_column`, the cursor, newest first,
    /// one row more than the page so the caller can tell whether another page exists.
    pub fn page(mut self, time_column: &str, page: &IdPage) -> Self {
        if let Some(from) = page.from {
            self.add(
                &format!(" AND {time_column} >= ?#"),
                SqlValue::Integer(from.as_micros()),
            );
        }
        if let Some(to) = page.to {
            self.add(
                &format!(" AND {time_column} < ?#"),
                SqlValue::Integer(to.as_micros()),
            );
        }
        if let Some(before) = page.before_id {
            self.add(" AND id < ?#", SqlValue::Integer(before));
        }
        self.add(
            " ORDER BY id DESC LIMIT ?#",
            SqlValue::Integer(page.limit as i64 + 1),
        );
        self
    }
}

/// Builds the page query: `limit + 1` rows so the caller can tell whether another page exists.
pub(super) fn page_sql(q: &EventQuery, indexed: &[IndexedField]) -> (String, Vec<SqlValue>) {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    let mut eq = |sql: &mut String, column: &str, value: &Option<String>| {
        if let Some(v) = value {
            args.push(SqlValue::Text(v.clone()));
            sql.push_str(&format!(" AND {column} = ?{}", args.len()));
        }
    };
    eq(
        &mut sql,
        "client_id",
        &q.client_id.as_ref().map(|c| c.as_str().to_string()),
    );
    eq(&mut sql, "user_id", &q.user_id);
    eq(&mut sql, "source", &q.source);
    eq(&mut sql, "subject", &q.subject);
    eq(&mut sql, "correlation_id", &q.correlation_id);
    eq(&mut sql, "status", &q.status);

    if let Some(pattern) = &q.event_type {
        if pattern.is_exact() {
            args.push(SqlValue::Text(pattern.as_str().to_string()));
            sql.push_str(&format!(" AND event_type = ?{}", args.len()));
        } else {
            let prefix = pattern.literal_prefix();
            if !prefix.is_empty() {
                // Every allowed type character is below 0x7f, so this bounds the prefix range.
                args.push(SqlValue::Text(prefix.clone()));
                args.push(SqlValue::Text(format!("{prefix}\u{7f}")));
                sql.push_str(&format!(
                    " AND event_type >= ?{} AND event_type < ?{}",
                    args.len() - 1,
                    args.len()
                ));
            }
            args.push(SqlValue::Text(pattern.as_str().to_string()));
            sql.push_str(&format!(
                " AND {TOPIC_MATCH_FN}(?{}, event_type)",
                args.len()
            ));
        }
    }
    if let Some(format) = q.format {
        // A literal, not a parameter: the planner can then use the partial format indexes.
        sql.push_str(&format!(" AND format = {}", format.code()));
    }
    if let Some(from) = q.from {
        args.push(SqlValue::Integer(from.as_micros()));
        sql.push_str(&format!(" AND occurred_at >= ?{}", args.len()));
    }
    if let Some(to) = q.to {
        args.push(SqlValue::Integer(to.as_micros()));
        sql.push_str(&format!(" AND occurred_at < ?{}", args.len()));
    }
    for filter in &q.data {
        if let Some(field) = indexed.iter().find(|f| f.serves(filter)) {
            // The index's own expression, so the planner can use it; the exact test follows.
            let mut placeholders = Vec::new();
            for candidate in sqlite_candidates(&filter.value) {
                args.push(candidate);
                placeholders.push(format!("?{}", args.len()));
            }
            sql.push_str(&format!(
                " AND {} IN ({})",
                field.sqlite_expr(),
                placeholders.join(", ")
            ));
        }
        args.push(SqlValue::Text(json_path(&filter.path)));
        let p = args.len();
        args.push(SqlValue::Text(filter.value.clone()));
        let v = args.len();
        sql.push_str(&format!(
            " AND ((json_type(data, ?{p}) = 'text' AND json_extract(data, ?{p}) = ?{v}) \
             OR (json_type(data, ?{p}) IN ('integer', 'real', 'true', 'false') AND (data -> ?{p}) = ?{v}))"
        ));
    }
    if let Some(after) = q.after_seq {
        args.push(SqlValue::Integer(after));
        let op = match q.order {
            Order::Desc => "<",
            Order::Asc => ">",
        };
        sql.push_str(&format!(" AND seq {op} ?{}", args.len()));
    }
    let direction = match q.order {
        Order::Desc => "DESC",
        Order::Asc => "ASC",
    };
    args.push(SqlValue::Integer(q.limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY seq {direction} LIMIT ?{}", args.len()));
    (sql, args)
}

/// `["a", "b c"]` → `$."a"."b c"`. Segments are checked at the edge to hold no `"`.
fn json_path(path: &[String]) -> String {
    let mut out = String::from("$");
    for segment in path {
        out.push_str(".\"");
        out.push_str(segment);
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TopicPattern;
    use crate::store::DataFilter;

    #[test]
    fn builds_bound_parameters_only() {
        let q = EventQuery {
            user_id: Some("u'; DROP TABLE events; --".into()),
            event_type: Some(TopicPattern::parse("billing.#").unwrap()),
            data: vec![DataFilter {
                path: vec!["a".into(), "b".into()],
                value: "1".into(),
            }],
            limit: 10,
            ..Default::default()
        };
        let (sql, args) = page_sql(&q, &[]);
        assert!(!sql.contains("DROP"));
        assert!(sql.contains("annals_topic_match"));
        assert_eq!(args.len(), 7);
        assert_eq!(args[4], SqlValue::Text("$.\"a\".\"b\"".into()));
    }

    #[test]
    fn an_indexed_field_filter_uses_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open_and_migrate(
            &dir.path().join("t.db"),
            crate::store::sqlite::Synchronous::Normal,
        )
        .unwrap();
        let fields = crate::store::indexed::parse_indexed_fields("order_id").unwrap();
        super::super::create_field_indexes(&conn, &fields).unwrap();
        let plan = |indexed: &[IndexedField], client: bool| {
            let q = EventQuery {
                client_id: client.then(|| crate::domain::ClientId::parse("acme").unwrap()),
                data: vec![DataFilter {
                    path: vec!["order_id".into()],
                    value: "o-42".into(),
                }],
                limit: 100,
                ..Default::default()
            };
            let (sql, args) = page_sql(&q, indexed);
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        for client in [true, false] {
            let with = plan(&fields, client);
            assert!(with.contains("events_data_order_id"), "{with}");
            let without = plan(&[], client);
            assert!(!without.contains("events_data_order_id"), "{without}");
        }
    }
}
