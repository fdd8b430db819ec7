//! Multi-row `INSERT`s: rows go in with as few statement runs as `CHUNKS` allows.
//!
//! Within one statement SQLite keeps its cursor on the table and on each index. A key that
//! sorts after the last entry (a new `seq`, a UUIDv7 id, a recent time) is then placed without a
//! descent from the root, which one statement per row pays for every index, and the statement's
//! own set-up (opening cursors, binding, resetting) is paid once per chunk.
//!
//! Invariant: a statement that may fail part-way must not need a statement journal (for a
//! multi-row `OR ABORT` insert SQLite copies every page it touches), so the `INSERT`s given here
//! are `OR ROLLBACK` (a failure fails the whole transaction, which callers retry) or
//! `OR IGNORE` (nothing to undo).

use rusqlite::{Connection, Statement};

/// Rows per statement, largest first; any number of rows is a sum of these.
const CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// The texts of one multi-row `INSERT`, one per `CHUNKS` size.
pub(super) struct MultiRowInsert {
    columns: usize,
    sql: Vec<String>,
}

impl MultiRowInsert {
    /// `head` is the statement up to `VALUES` (e.g. `INSERT OR IGNORE INTO t (a, b)`), naming
    /// `columns` columns.
    pub fn new(head: &str, columns: usize) -> Self {
        let sql = CHUNKS
            .iter()
            .map(|&rows| {
                let values: Vec<String> = (0..rows)
                    .map(|row| {
                        let params: Vec<String> = (1..=columns)
                            .map(|c| format!("?{}", row * columns + c))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                format!("{head} VALUES {}", values.join(", "))
            })
            .collect();
        Self { columns, sql }
    }

    /// Inserts `rows`; `bind` binds one row's columns after the first `offset` parameters.
    /// The statements are cached on `conn` (its cache should hold all `CHUNKS` sizes).
    pub fn run<T>(
        &self,
        conn: &Connection,
        rows: &[T],
        mut bind: impl FnMut(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        let mut rest = rows;
        for (size, sql) in CHUNKS.iter().zip(&self.sql) {
            while rest.len() >= *size {
                let (chunk, tail) = rest.split_at(*size);
                let mut insert = conn.prepare_cached(sql)?;
                for (n, row) in chunk.iter().enumerate() {
                    bind(&mut insert, n * self.columns, row)?;
                }
                insert.raw_execute()?;
                rest = tail;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_number_of_rows_goes_in_once_each_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT)")
            .unwrap();
        let insert = MultiRowInsert::new("INSERT OR ROLLBACK INTO t (a, b)", 2);
        for n in [0usize, 1, 63, 64, 65, 127, 200] {
            conn.execute_batch("DELETE FROM t").unwrap();
            let rows: Vec<(i64, String)> = (0..n as i64).map(|i| (i, format!("r{i}"))).collect();
            insert
                .run(&conn, &rows, |stmt, offset, (a, b)| {
                    stmt.raw_bind_parameter(offset + 1, a)?;
                    stmt.raw_bind_parameter(offset + 2, b)
                })
                .unwrap();
            let stored: Vec<(i64, String)> = conn
                .prepare("SELECT a, b FROM t ORDER BY rowid")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(stored, rows, "{n} rows");
        }
    }
}
