//! Multi-row `INSERT`s: rows go in with as few statement runs as `CHUNKS` allows, their texts
//! and blobs bound without a copy.
//!
//! Within one statement SQLite keeps its cursor on the table and on each index. A key that
//! sorts after the last entry (a new `seq`, a UUIDv7 id, a recent time) is then placed without a
//! descent from the root, which one statement per row pays for every index, and the statement's
//! own set-up (opening cursors, binding, resetting) is paid once per chunk.
//!
//! rusqlite binds every text and blob as `SQLITE_TRANSIENT`: SQLite copies it into memory of
//! its own and frees the copy when the binding is cleared, an allocation, a copy and a free per
//! column (on the single-event path ~4% of all instructions, events, audit records and user
//! index entries together). `Prepared` keeps its own statements and binds them
//! `SQLITE_STATIC` instead: SQLite reads the caller's bytes in place while the statement runs.
//!
//! Invariants:
//! - A statement that may fail part-way must not need a statement journal (for a multi-row
//!   `OR ABORT` insert SQLite copies every page it touches), so the `INSERT`s given here are
//!   `OR ROLLBACK` (a failure fails the whole transaction, which callers retry) or `OR IGNORE`
//!   (nothing to undo).
//! - A statically bound value is borrowed from the rows for the whole of `Prepared::run` (the
//!   `'r` lifetime), and a statement is only stepped once every one of its parameters was bound
//!   in that run, so SQLite never reads a binding left from an earlier run.
//! - `Prepared` belongs to one connection and must be dropped before it (its statements are
//!   finalized on drop; a connection closed with statements alive is leaked by rusqlite, not
//!   freed under them).

use std::ffi::{CString, c_int, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rusqlite::{Connection, ffi};

/// Rows per statement, largest first; any number of rows is a sum of these.
const CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// The texts of one multi-row `INSERT`, one per `CHUNKS` size.
pub(super) struct MultiRowInsert {
    columns: usize,
    sql: Vec<CString>,
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
                CString::new(format!("{head} VALUES {}", values.join(", ")))
                    .expect("SQL text has no NUL")
            })
            .collect();
        Self { columns, sql }
    }
}

/// A prepared statement this module owns; finalized on drop.
struct Statement(NonNull<ffi::sqlite3_stmt>);

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: the statement came from sqlite3_prepare_v3 and is finalized only here.
        unsafe { ffi::sqlite3_finalize(self.0.as_ptr()) };
    }
}

/// One `MultiRowInsert`'s statements on one connection, prepared on first use and kept.
pub(super) struct Prepared {
    shape: &'static MultiRowInsert,
    statements: [Option<Statement>; CHUNKS.len()],
    /// The connection the statements belong to (set by the first `run`).
    db: Option<NonNull<ffi::sqlite3>>,
}

// SAFETY: the statements are only used through `run`, with `&Connection` of the connection they
// belong to (checked). rusqlite opens connections in SQLite's multi-thread mode: a connection
// and its statements may move between threads as long as one thread uses them at a time, which
// holds because `run` needs that connection too (the writer thread owns it; the audit
// connection is behind a mutex together with its `Prepared`).
unsafe impl Send for Prepared {}

impl Prepared {
    pub fn new(shape: &'static MultiRowInsert) -> Self {
        Self {
            shape,
            statements: Default::default(),
            db: None,
        }
    }

    /// Inserts `rows` on `conn`; `bind` binds one row's columns, in order, on `Row`.
    pub fn run<'r, T>(
        &mut self,
        conn: &Connection,
        rows: &'r [T],
        mut bind: impl FnMut(&mut Row<'r>, &'r T),
    ) -> rusqlite::Result<()> {
        // SAFETY: the handle is only compared and passed to SQLite calls on this connection.
        let db = NonNull::new(unsafe { conn.handle() }).ok_or_else(|| misuse("closed"))?;
        if *self.db.get_or_insert(db) != db {
            return Err(misuse("statements prepared on another connection"));
        }
        let columns = self.shape.columns;
        let mut rest = rows;
        for (slot, &size) in CHUNKS.iter().enumerate() {
            while rest.len() >= size {
                let (chunk, tail) = rest.split_at(size);
                let stmt = self.statement(db, slot)?;
                let mut row = Row {
                    stmt,
                    next: 1,
                    rc: ffi::SQLITE_OK,
                    _rows: PhantomData,
                };
                for item in chunk {
                    bind(&mut row, item);
                }
                if row.rc != ffi::SQLITE_OK {
                    return Err(error(db, row.rc));
                }
                if row.next as usize != size * columns + 1 {
                    return Err(misuse("a row bound the wrong number of columns"));
                }
                // SAFETY: every parameter was bound in this run to data borrowed for 'r.
                let rc = unsafe { ffi::sqlite3_step(stmt) };
                unsafe { ffi::sqlite3_reset(stmt) };
                if rc != ffi::SQLITE_DONE {
                    return Err(error(db, rc));
                }
                rest = tail;
            }
        }
        Ok(())
    }

    fn statement(
        &mut self,
        db: NonNull<ffi::sqlite3>,
        slot: usize,
    ) -> rusqlite::Result<*mut ffi::sqlite3_stmt> {
        if let Some(stmt) = &self.statements[slot] {
            return Ok(stmt.0.as_ptr());
        }
        let sql = &self.shape.sql[slot];
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is NUL-terminated and its length includes the NUL; `db` is open.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                sql.as_ptr(),
                sql.as_bytes_with_nul().len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        let stmt = match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Statement(stmt),
            _ => return Err(error(db, rc)),
        };
        let ptr = stmt.0.as_ptr();
        self.statements[slot] = Some(stmt);
        Ok(ptr)
    }
}

/// Binds one chunk's parameters in order, each call the next parameter. A failed bind is kept
/// and reported by `Prepared::run`.
pub(super) struct Row<'r> {
    stmt: *mut ffi::sqlite3_stmt,
    /// The next parameter's index (1-based).
    next: c_int,
    rc: c_int,
    _rows: PhantomData<&'r [u8]>,
}

impl<'r> Row<'r> {
    fn bound(&mut self, rc: c_int) -> &mut Self {
        if self.rc == ffi::SQLITE_OK {
            self.rc = rc;
        }
        self.next += 1;
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        // SAFETY: `stmt` is a live statement of `Prepared`; a bad index only returns an error.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt, self.next, value) };
        self.bound(rc)
    }

    pub fn null(&mut self) -> &mut Self {
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt, self.next) };
        self.bound(rc)
    }

    /// Bound in place: SQLite reads `value` while the statement runs.
    pub fn text(&mut self, value: &'r str) -> &mut Self {
        // SAFETY: `value` outlives the run (see the module's invariants).
        unsafe { self.bind_text(value, ffi::SQLITE_STATIC()) }
    }

    /// SAFETY: with `SQLITE_STATIC`, `value` must stay valid until the statement has run.
    unsafe fn bind_text(&mut self, value: &str, how: ffi::sqlite3_destructor_type) -> &mut Self {
        let rc = unsafe {
            ffi::sqlite3_bind_text64(
                self.stmt,
                self.next,
                value.as_ptr().cast(),
                value.len() as u64,
                how,
                ffi::SQLITE_UTF8 as u8,
            )
        };
        self.bound(rc)
    }

    pub fn opt_text(&mut self, value: Option<&'r str>) -> &mut Self {
        match value {
            Some(value) => self.text(value),
            None => self.null(),
        }
    }

    /// A text made for this row that doesn't outlive the call: SQLite copies it.
    pub fn text_copied(&mut self, value: &str) -> &mut Self {
        // SAFETY: SQLite copies a transient text before the call returns.
        unsafe { self.bind_text(value, ffi::SQLITE_TRANSIENT()) }
    }

    /// Bound in place, like `text`.
    pub fn blob(&mut self, value: &'r [u8]) -> &mut Self {
        let rc = unsafe {
            ffi::sqlite3_bind_blob64(
                self.stmt,
                self.next,
                value.as_ptr().cast::<c_void>(),
                value.len() as u64,
                ffi::SQLITE_STATIC(),
            )
        };
        self.bound(rc)
    }
}

/// The connection's error for `rc`, as rusqlite reports errors (so callers can match codes).
fn error(db: NonNull<ffi::sqlite3>, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is open; the message is copied before any other call on it.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db.as_ptr());
        let message = std::ffi::CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr()))
            .to_string_lossy()
            .into_owned();
        (if code == ffi::SQLITE_OK { rc } else { code }, message)
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(message))
}

fn misuse(what: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_MISUSE),
        Some(format!("multi-row insert: {what}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    static SHAPE: std::sync::LazyLock<MultiRowInsert> =
        std::sync::LazyLock::new(|| MultiRowInsert::new("INSERT OR ROLLBACK INTO t (a, b)", 2));

    /// An in-memory database with table `t` as `columns` declares, and the inserts for it.
    fn table(columns: &str) -> (Connection, Prepared) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("CREATE TABLE t ({columns})"))
            .unwrap();
        (conn, Prepared::new(&SHAPE))
    }

    fn stored(conn: &Connection) -> Vec<(i64, Option<String>)> {
        conn.prepare("SELECT a, b FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn any_number_of_rows_goes_in_once_each_in_order() {
        let (conn, mut insert) = table("a INTEGER, b TEXT");
        for n in [0usize, 1, 63, 64, 65, 127, 200] {
            conn.execute_batch("DELETE FROM t").unwrap();
            let rows: Vec<(i64, Option<String>)> = (0..n as i64)
                .map(|i| (i, (i % 3 != 0).then(|| format!("r{i}"))))
                .collect();
            insert
                .run(&conn, &rows, |row, (a, b)| {
                    row.int(*a).opt_text(b.as_deref());
                })
                .unwrap();
            assert_eq!(stored(&conn), rows, "{n} rows");
        }
    }

    #[test]
    fn bound_values_are_read_in_place_and_never_reused_by_a_later_run() {
        let (conn, mut insert) = table("a INTEGER, b TEXT");
        {
            let first = vec![(1i64, String::from("first"))];
            insert
                .run(&conn, &first, |row, (a, b)| {
                    row.int(*a).text(b);
                })
                .unwrap();
        }
        // A row that binds too few columns is refused before the statement runs, so the
        // earlier run's (freed) text is never read.
        let second = vec![(2i64, String::from("second"))];
        let refused = insert.run(&conn, &second, |row, (a, _)| {
            row.int(*a);
        });
        assert!(refused.is_err());
        insert
            .run(&conn, &second, |row, (a, b)| {
                row.int(*a).text_copied(&b.to_uppercase());
            })
            .unwrap();
        assert_eq!(
            stored(&conn),
            vec![
                (1, Some(String::from("first"))),
                (2, Some(String::from("SECOND")))
            ]
        );
    }

    #[test]
    fn a_constraint_failure_is_a_sqlite_error_and_another_connection_is_refused() {
        let (conn, mut insert) = table("a INTEGER PRIMARY KEY, b TEXT");
        let rows = vec![(1i64, "x"), (1, "y")];
        let err = insert
            .run(&conn, &rows, |row, (a, b)| {
                row.int(*a).text(b);
            })
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation),
            "{err}"
        );
        let other = Connection::open_in_memory().unwrap();
        other
            .execute_batch("CREATE TABLE t (a INTEGER, b TEXT)")
            .unwrap();
        assert!(
            insert
                .run(&other, &rows[..1], |row, (a, b)| {
                    row.int(*a).text(b);
                })
                .is_err()
        );
        drop(insert);
    }
}
