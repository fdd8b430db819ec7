//! Event queries as SQL for SQLite: filters become `WHERE` terms that the composite indexes
//! `(client_id, <field>, seq)` serve; `data` filters use the JSON functions.
//!
//! A query by user reads two disjoint parts of the events in one statement, merged by seq:
//! those up to `user_index_progress.through_seq`, found through `user_index`, and the tail
//! above it, scanned. Both parts are read in the statement's one snapshot, so an
//! event moving into the index between them can't be seen twice or missed.
//!
//! A query by type pattern without a user merges the ranges of the types it matches
//! (`EventQuery::reads_type_ranges`); the type listing and the page share one read
//! transaction, so a type committed between them can't leave newer events out of the page.

use rusqlite::Connection;
use rusqlite::types::Value as SqlValue;

use crate::domain::page::IdPage;
use crate::store::indexed::{IndexedField, sqlite_candidates};
use crate::store::{CLIENTS_SQL, EventQuery, Order, TYPE_RANGES, TYPES_SQL, TypeRanges};

/// The columns of an event read after `seq`, in the order `row_to_event` expects.
macro_rules! columns_after_seq {
    () => {
        "id, client_id, event_type, user_id, data, event_id, source, subject, occurred_at, \
         received_at, correlation_id, status, ip_address, headers, partition_key, format"
    };
}

/// Column list every event read selects, in the order `row_to_event` expects.
pub(super) const EVENT_COLUMNS: &str = concat!("seq, ", columns_after_seq!());

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

/// The `(client, event type)` pairs whose events a pattern query reads, in the query's scope;
/// `None` when the query is not one (`EventQuery::reads_type_ranges`) or the clients, seeks or
/// pairs are more than a merge takes (then `page_sql` reads one range and sorts).
pub(super) fn pattern_ranges(
    conn: &Connection,
    q: &EventQuery,
) -> rusqlite::Result<Option<Vec<(String, String)>>> {
    let Some(pattern) = q.event_type.as_ref().filter(|_| q.reads_type_ranges()) else {
        return Ok(None);
    };
    let clients: Vec<String> = match &q.client_id {
        Some(client) => vec![client.as_str().to_string()],
        None => {
            let most = TYPE_RANGES as i64 + 1;
            let clients = conn
                .prepare_cached(CLIENTS_SQL)?
                .query_map([most], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            if clients.len() > TYPE_RANGES {
                return Ok(None);
            }
            clients
        }
    };
    let (low, high) = pattern.type_range();
    let mut ranges = TypeRanges::new(pattern, clients.len());
    let mut listing = conn.prepare_cached(TYPES_SQL)?;
    for client in &clients {
        let types = listing
            .query_map(
                rusqlite::params![client, low, high, ranges.listing_limit()],
                |r| r.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        if !ranges.take(client, types) {
            return Ok(None);
        }
    }
    Ok(Some(ranges.into_pairs()))
}

/// Builds the page query: `limit + 1` rows so the caller can tell whether another page exists.
/// `ranges` (from `pattern_ranges`) turns a pattern query into a merge of those types' ranges.
pub(super) fn page_sql(
    q: &EventQuery,
    indexed: &[IndexedField],
    ranges: Option<&[(String, String)]>,
) -> (String, Vec<SqlValue>) {
    let mut args: Vec<SqlValue> = Vec::new();
    let mut arg = |value: SqlValue| {
        args.push(value);
        format!("?{}", args.len())
    };
    let client = q
        .client_id
        .as_ref()
        .map(|c| arg(SqlValue::Text(c.as_str().to_string())));
    let user = q.user_id.as_ref().map(|u| arg(SqlValue::Text(u.clone())));

    // The terms both parts of a query by user share (they name only `events` columns).
    let mut common = String::new();
    for (column, value) in [
        ("source", &q.source),
        ("subject", &q.subject),
        ("correlation_id", &q.correlation_id),
        ("status", &q.status),
    ] {
        if let Some(v) = value {
            common.push_str(&format!(
                " AND {column} = {}",
                arg(SqlValue::Text(v.clone()))
            ));
        }
    }
    if let Some(pattern) = q.event_type.as_ref().filter(|_| ranges.is_none()) {
        if pattern.is_exact() {
            let p = arg(SqlValue::Text(pattern.as_str().to_string()));
            common.push_str(&format!(" AND event_type = {p}"));
        } else {
            let (low, high) = pattern.type_range();
            if !low.is_empty() {
                let low = arg(SqlValue::Text(low));
                let high = arg(SqlValue::Text(high));
                common.push_str(&format!(" AND event_type >= {low} AND event_type < {high}"));
            }
            let p = arg(SqlValue::Text(pattern.as_str().to_string()));
            common.push_str(&format!(" AND {TOPIC_MATCH_FN}({p}, event_type)"));
        }
    }
    if let Some(format) = q.format {
        // A literal, not a parameter: the planner can then use the partial format indexes.
        common.push_str(&format!(" AND format = {}", format.code()));
    }
    if let Some(from) = q.from {
        let p = arg(SqlValue::Integer(from.as_micros()));
        common.push_str(&format!(" AND occurred_at >= {p}"));
    }
    if let Some(to) = q.to {
        let p = arg(SqlValue::Integer(to.as_micros()));
        common.push_str(&format!(" AND occurred_at < {p}"));
    }
    for filter in &q.data {
        if let Some(field) = indexed.iter().find(|f| f.serves(filter)) {
            // The index's own expression, so the planner can use it; the exact test follows.
            let placeholders: Vec<String> = sqlite_candidates(&filter.value)
                .into_iter()
                .map(&mut arg)
                .collect();
            common.push_str(&format!(
                " AND {} IN ({})",
                field.sqlite_expr(),
                placeholders.join(", ")
            ));
        }
        let p = arg(SqlValue::Text(json_path(&filter.path)));
        let v = arg(SqlValue::Text(filter.value.clone()));
        common.push_str(&format!(
            " AND ((json_type(data, {p}) = 'text' AND json_extract(data, {p}) = {v}) \
             OR (json_type(data, {p}) IN ('integer', 'real', 'true', 'false') AND (data -> {p}) = {v}))"
        ));
    }
    let (op, direction) = match q.order {
        Order::Desc => ("<", "DESC"),
        Order::Asc => (">", "ASC"),
    };
    let after = q.after_seq.map(|a| arg(SqlValue::Integer(a)));
    let limit = arg(SqlValue::Integer(q.limit as i64 + 1));

    // `[AND <column> = <placeholder>]` and the cursor term, for either part.
    let and_eq = |column: &str, placeholder: &Option<String>| {
        placeholder
            .as_ref()
            .map(|p| format!(" AND {column} = {p}"))
            .unwrap_or_default()
    };
    let cursor = |column: &str| {
        after
            .as_ref()
            .map(|p| format!(" AND {column} {op} {p}"))
            .unwrap_or_default()
    };
    // Entries above it may already be in `user_index` while a batch is being copied.
    const THROUGH: &str = "SELECT through_seq FROM user_index_progress WHERE id = 1";
    let sql = match (&user, ranges) {
        (None, Some([])) => format!("SELECT {EVENT_COLUMNS} FROM events WHERE 0 LIMIT {limit}"),
        // Each part is one type's range of `(client_id, event_type, seq)`, already in seq
        // order, so SQLite merges them and stops after `limit` rows.
        (None, Some(ranges)) => {
            let parts: Vec<String> = ranges
                .iter()
                .map(|(client, event_type)| {
                    let client = arg(SqlValue::Text(client.clone()));
                    let event_type = arg(SqlValue::Text(event_type.clone()));
                    format!(
                        "SELECT {EVENT_COLUMNS} FROM events \
                         WHERE client_id = {client} AND event_type = {event_type}{common}{}",
                        cursor("seq")
                    )
                })
                .collect();
            format!(
                "{} ORDER BY 1 {direction} LIMIT {limit}",
                parts.join(" UNION ALL ")
            )
        }
        (None, None) => format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1{}{common}{} ORDER BY seq {direction} LIMIT {limit}",
            and_eq("client_id", &client),
            cursor("seq"),
        ),
        // CROSS JOIN keeps `user_index` the outer loop, so its key order is the seq order.
        (Some(user), _) => format!(
            "SELECT u_seq, {} FROM user_index CROSS JOIN events ON seq = u_seq \
             WHERE u_user = {user}{} AND u_seq <= ({THROUGH}){common}{} \
             UNION ALL \
             SELECT {EVENT_COLUMNS} FROM events \
             WHERE seq > ({THROUGH}) \
             AND user_id = {user}{}{common}{} \
             ORDER BY 1 {direction} LIMIT {limit}",
            columns_after_seq!(),
            and_eq("u_client", &client),
            cursor("u_seq"),
            and_eq("client_id", &client),
            cursor("seq"),
        ),
    };
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
        let (sql, args) = page_sql(&q, &[], None);
        assert!(!sql.contains("DROP"));
        assert!(sql.contains("annals_topic_match"));
        assert_eq!(args.len(), 7);
        assert_eq!(args[4], SqlValue::Text("$.\"a\".\"b\"".into()));
    }

    /// The query plan of `q` on a fresh store, one line per step.
    fn plan_of(conn: &rusqlite::Connection, q: &EventQuery, indexed: &[IndexedField]) -> String {
        let (sql, args) = page_sql(q, indexed, None);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn a_query_by_user_reads_the_user_index_in_seq_order_and_the_tail_by_seq() {
        let (_dir, conn) = super::super::scratch_db();
        for order in [Order::Desc, Order::Asc] {
            let q = EventQuery {
                client_id: Some(crate::domain::ClientId::parse("acme").unwrap()),
                user_id: Some("user-42".into()),
                event_type: Some(TopicPattern::parse("billing.invoice.paid").unwrap()),
                after_seq: Some(1000),
                order,
                limit: 50,
                ..Default::default()
            };
            let plan = plan_of(&conn, &q, &[]);
            assert!(
                plan.contains(
                    "SEARCH user_index USING PRIMARY KEY (u_client=? AND u_user=? AND u_seq"
                ),
                "{plan}"
            );
            assert!(
                plan.contains("SEARCH events USING INTEGER PRIMARY KEY (rowid=?)"),
                "{plan}"
            );
            assert!(plan.contains("MERGE (UNION ALL)"), "{plan}");
            let tail = plan.split("RIGHT;").nth(1).unwrap();
            assert!(
                tail.contains("SEARCH events") && tail.contains("seq>?"),
                "{plan}"
            );
            assert!(
                !plan.contains("TEMP B-TREE"),
                "no sort of the user's events: {plan}"
            );
        }
    }

    #[test]
    fn a_query_by_user_sees_each_event_once_wherever_the_user_index_stops() {
        let (_dir, conn) = super::super::scratch_db();
        // 16 events: acme's users take turns (u0, u1, u2, no user), every fourth is globex's u1.
        let users = [Some("u0"), Some("u1"), Some("u2"), None];
        for seq in 1..=16i64 {
            let (client, user) = match seq % 4 {
                0 => ("globex", Some("u1")),
                n => ("acme", users[n as usize - 1]),
            };
            super::super::insert_test_event(&conn, seq, client, user);
        }
        let acme_u1: Vec<i64> = vec![2, 6, 10, 14];
        let all_u1: Vec<i64> = vec![2, 4, 6, 8, 10, 12, 14, 16];

        // Every page of `q`, two events at a time, as the store pages them.
        let pages = |client: Option<&str>, order: Order| {
            let mut seqs: Vec<i64> = Vec::new();
            let mut after = None;
            loop {
                let q = EventQuery {
                    client_id: client.map(|c| crate::domain::ClientId::parse(c).unwrap()),
                    user_id: Some("u1".into()),
                    after_seq: after,
                    order,
                    limit: 2,
                    ..Default::default()
                };
                let (sql, args) = page_sql(&q, &[], None);
                let mut stmt = conn.prepare(&sql).unwrap();
                let page: Vec<i64> = stmt
                    .query_map(rusqlite::params_from_iter(args), |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                seqs.extend(page.iter().take(2));
                if page.len() <= 2 {
                    return seqs;
                }
                after = Some(page[1]);
            }
        };
        // `copied`: entries in the index, some above `through` as while a batch is copied.
        for through in 0..=16i64 {
            for copied in [through, through + 3] {
                conn.execute_batch(&format!(
                    "DELETE FROM user_index; \
                     INSERT INTO user_index SELECT client_id, user_id, seq FROM events \
                     WHERE seq <= {copied} AND user_id IS NOT NULL; \
                     UPDATE user_index_progress SET through_seq = {through};"
                ))
                .unwrap();
                for (client, expected) in [(Some("acme"), &acme_u1), (None, &all_u1)] {
                    let at = format!("through {through}, copied {copied}, client {client:?}");
                    let ascending = pages(client, Order::Asc);
                    assert_eq!(&ascending, expected, "{at}");
                    let mut descending = pages(client, Order::Desc);
                    descending.reverse();
                    assert_eq!(&descending, expected, "{at}");
                }
            }
        }
    }

    #[test]
    fn an_indexed_field_filter_uses_its_index() {
        let (_dir, conn) = super::super::scratch_db();
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
            plan_of(&conn, &q, indexed)
        };
        for client in [true, false] {
            let with = plan(&fields, client);
            assert!(with.contains("events_data_order_id"), "{with}");
            let without = plan(&[], client);
            assert!(!without.contains("events_data_order_id"), "{without}");
        }
    }

    /// `conn` with the pattern function of read connections (after its rows are in).
    fn with_topic_match(mut conn: rusqlite::Connection) -> rusqlite::Connection {
        super::super::configure_reader(&mut conn).unwrap();
        conn
    }

    fn insert_typed(conn: &rusqlite::Connection, seq: i64, client: &str, event_type: &str) {
        conn.execute(
            "INSERT INTO events (seq, id, client_id, event_type, occurred_at, received_at, data, \
             headers) VALUES (?1, randomblob(16), ?2, ?3, ?1, ?1, '{}', '{}')",
            rusqlite::params![seq, client, event_type],
        )
        .unwrap();
    }

    /// Every page of `q`, `q.limit` events at a time, as the store pages it; with `merge`, by
    /// the pattern's type ranges (failing if it gets none).
    fn all_pages(conn: &rusqlite::Connection, q: &EventQuery, merge: bool) -> Vec<i64> {
        let mut q = q.clone();
        let mut seqs = Vec::new();
        loop {
            let ranges = merge.then(|| pattern_ranges(conn, &q).unwrap().expect("ranges"));
            let (sql, args) = page_sql(&q, &[], ranges.as_deref());
            let page: Vec<i64> = conn
                .prepare(&sql)
                .unwrap()
                .query_map(rusqlite::params_from_iter(args), |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            seqs.extend(page.iter().take(q.limit));
            if page.len() <= q.limit {
                return seqs;
            }
            q.after_seq = Some(page[q.limit - 1]);
        }
    }

    #[test]
    fn a_pattern_query_merges_the_ranges_of_the_types_it_matches() {
        let (_dir, conn) = super::super::scratch_db();
        let types = [
            "billing",
            "billing.invoice.paid",
            "billing.invoice.sent",
            "billing.refund.paid",
            "billingx.invoice.paid",
            "shop.order.paid",
            "shop.order.created",
        ];
        for seq in 1..=120i64 {
            let client = if seq % 5 == 0 { "globex" } else { "acme" };
            insert_typed(
                &conn,
                seq,
                client,
                types[(seq * 7 % 11) as usize % types.len()],
            );
        }
        let conn = with_topic_match(conn);
        for pattern in [
            "billing.#",
            "billing.*.paid",
            "#.paid",
            "*.invoice.*",
            "billing.invoice.*",
            "nothing.#",
            "#",
        ] {
            let topic = TopicPattern::parse(pattern).unwrap();
            for client in [Some("acme"), Some("globex"), Some("initech"), None] {
                for order in [Order::Desc, Order::Asc] {
                    let q = EventQuery {
                        client_id: client.map(|c| crate::domain::ClientId::parse(c).unwrap()),
                        event_type: Some(topic.clone()),
                        order,
                        limit: 7,
                        ..Default::default()
                    };
                    let mut expected: Vec<i64> = (1..=120i64)
                        .filter(|seq| {
                            let c = if seq % 5 == 0 { "globex" } else { "acme" };
                            client.is_none_or(|want| want == c)
                                && topic.matches(types[(seq * 7 % 11) as usize % types.len()])
                        })
                        .collect();
                    if order == Order::Desc {
                        expected.reverse();
                    }
                    let at = format!("{pattern} {client:?} {order:?}");
                    assert_eq!(all_pages(&conn, &q, true), expected, "{at}");
                    assert_eq!(all_pages(&conn, &q, false), expected, "{at}");
                }
            }
        }
        let q = EventQuery {
            client_id: Some(crate::domain::ClientId::parse("acme").unwrap()),
            event_type: Some(TopicPattern::parse("billing.#").unwrap()),
            limit: 50,
            ..Default::default()
        };
        let ranges = pattern_ranges(&conn, &q).unwrap().unwrap();
        assert_eq!(ranges.len(), 4, "{ranges:?}");
        let (sql, args) = page_sql(&q, &[], Some(&ranges));
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(rusqlite::params_from_iter(args), |r| r.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join("; ");
        assert!(plan.contains("MERGE (UNION ALL)"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }

    #[test]
    fn too_many_types_for_a_merge_fall_back_to_one_sorted_range() {
        let (_dir, conn) = super::super::scratch_db();
        for seq in 1..=(TYPE_RANGES as i64 + 1) {
            insert_typed(&conn, seq, "acme", &format!("billing.item{seq}.paid"));
        }
        let q = |pattern: &str, client: Option<&str>| EventQuery {
            client_id: client.map(|c| crate::domain::ClientId::parse(c).unwrap()),
            event_type: Some(TopicPattern::parse(pattern).unwrap()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(
            pattern_ranges(&conn, &q("billing.#", Some("acme"))).unwrap(),
            None
        );
        assert_eq!(pattern_ranges(&conn, &q("#.paid", None)).unwrap(), None);
        let few = pattern_ranges(&conn, &q("billing.item1.#", Some("acme"))).unwrap();
        assert_eq!(few.map(|r| r.len()), Some(1));
        // An exact type, or a user, is not served by ranges.
        assert_eq!(
            pattern_ranges(&conn, &q("billing.item1.paid", None)).unwrap(),
            None
        );
        let mut by_user = q("billing.#", None);
        by_user.user_id = Some("u1".into());
        assert_eq!(pattern_ranges(&conn, &by_user).unwrap(), None);
        // Nor is a pattern with another filter: the merge could read every row to find a few.
        let mut with_data = q("billing.item1.#", None);
        with_data.data = vec![DataFilter {
            path: vec!["amount".into()],
            value: "42".into(),
        }];
        assert_eq!(pattern_ranges(&conn, &with_data).unwrap(), None);
        let mut with_source = q("billing.item1.#", Some("acme"));
        with_source.source = Some("shop".into());
        assert_eq!(pattern_ranges(&conn, &with_source).unwrap(), None);
    }
}
