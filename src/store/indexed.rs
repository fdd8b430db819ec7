//! Indexed data fields (`ANNALS_INDEXED_FIELDS=order_id,customer.tier`): an expression index per
//! listed `data` field, created at start on either store, and the extra query term that lets
//! the planner use it for a data filter on that field.
//!
//! Invariants: a field path is 1–4 segments of `[A-Za-z0-9_]`, so it can be written into SQL
//! as a literal (an expression index is only used when the query repeats its expression
//! exactly, which a bound parameter would not). The extra term only narrows by the field's
//! scalar value; the usual data-filter predicate stays beside it, so results are unchanged.

use crate::store::DataFilter;

/// At most this many indexed fields (each costs every insert an index entry).
pub const MAX_INDEXED_FIELDS: usize = 16;
const MAX_SEGMENTS: usize = 4;
const MAX_PATH_LEN: usize = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedField {
    path: Vec<String>,
}

impl IndexedField {
    fn parse(text: &str) -> Result<Self, String> {
        let path: Vec<String> = text.split('.').map(str::to_string).collect();
        let well_formed = text.len() <= MAX_PATH_LEN
            && path.len() <= MAX_SEGMENTS
            && path.iter().all(|s| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
        if well_formed {
            Ok(Self { path })
        } else {
            Err(format!(
                "ANNALS_INDEXED_FIELDS: '{text}' is not an indexable field: use up to {MAX_SEGMENTS} dot-separated \
                 segments of letters, digits and _ ({MAX_PATH_LEN} characters at most)"
            ))
        }
    }

    /// Does a data filter look at this field?
    pub fn serves(&self, filter: &DataFilter) -> bool {
        filter.path == self.path
    }

    /// The index name: `events_data_` and the path with `__` between segments.
    pub fn index_name(&self) -> String {
        format!("events_data_{}", self.path.join("__"))
    }

    /// SQLite: the field's value as SQL (text, integer, real, or 1/0 for booleans).
    pub fn sqlite_expr(&self) -> String {
        let path: String = self.path.iter().map(|s| format!(".\"{s}\"")).collect();
        format!("json_extract(data, '${path}')")
    }

    /// PostgreSQL: the field's value as text (numbers and booleans in their JSON text).
    pub fn postgres_expr(&self) -> String {
        format!("(data #>> '{{{}}}')", self.path.join(","))
    }
}

/// Parses the comma-separated list (empty entries ignored, duplicates dropped).
pub fn parse_indexed_fields(text: &str) -> Result<Vec<IndexedField>, String> {
    let mut fields: Vec<IndexedField> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let field = IndexedField::parse(entry.strip_prefix("data.").unwrap_or(entry))?;
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    if fields.len() > MAX_INDEXED_FIELDS {
        return Err(format!(
            "ANNALS_INDEXED_FIELDS: at most {MAX_INDEXED_FIELDS} fields"
        ));
    }
    Ok(fields)
}

/// The SQLite values a data filter's text can equal in `sqlite_expr`: the text itself, and the
/// number or boolean (1/0) it spells.
pub fn sqlite_candidates(value: &str) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value as V;
    let mut out = vec![V::Text(value.to_string())];
    match value {
        "true" => out.push(V::Integer(1)),
        "false" => out.push(V::Integer(0)),
        _ => {
            if let Ok(i) = value.parse::<i64>() {
                out.push(V::Integer(i));
            } else if let Ok(f) = value.parse::<f64>()
                && f.is_finite()
            {
                out.push(V::Real(f));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names() {
        let fields = parse_indexed_fields(" order_id, data.customer.tier ,,order_id").unwrap();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].index_name(), "events_data_customer__tier");
        assert_eq!(
            fields[1].sqlite_expr(),
            r#"json_extract(data, '$."customer"."tier"')"#
        );
        assert_eq!(fields[1].postgres_expr(), "(data #>> '{customer,tier}')");
        for bad in [
            "a-b",
            "a..b",
            "x'); DROP TABLE events; --",
            "a.b.c.d.e",
            &"x".repeat(41),
        ] {
            assert!(parse_indexed_fields(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn candidates_cover_numbers_and_booleans() {
        use rusqlite::types::Value as V;
        assert_eq!(
            sqlite_candidates("12"),
            [V::Text("12".into()), V::Integer(12)]
        );
        assert_eq!(
            sqlite_candidates("true"),
            [V::Text("true".into()), V::Integer(1)]
        );
        assert_eq!(sqlite_candidates("abc"), [V::Text("abc".into())]);
        assert_eq!(
            sqlite_candidates("1.5"),
            [V::Text("1.5".into()), V::Real(1.5)]
        );
    }
}
