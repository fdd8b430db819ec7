//! `annals backup`: a consistent copy of a SQLite store and of its audit log, taken while a
//! server keeps serving.
//!
//! Invariants:
//! - Each copy is one snapshot of its database: `VACUUM INTO` reads inside one read
//!   transaction, and in WAL mode the server's writer goes on meanwhile (the copy holds what was
//!   committed when it began). The events and the audit log are two databases, copied one after
//!   the other, so calls made in between may be in one copy and not in the other.
//! - Nothing is overwritten: a destination (or its audit file) that exists is refused, and a
//!   copy that fails part way is removed.
//! - A copy is synced to disk and checked (`PRAGMA quick_check`) before it is reported.
//! - The store is never created or migrated here: a path with no database is an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

use super::{audit_path, real_path};

/// What a backup copied.
#[derive(Debug)]
pub struct BackupReport {
    /// The events database's copy, its event count and highest `seq`, and its size.
    pub events: Copied,
    /// The audit log's copy and its record count, if the store had an audit log.
    pub audit: Option<Copied>,
}

/// One database copied.
#[derive(Debug)]
pub struct Copied {
    pub path: PathBuf,
    pub rows: i64,
    /// Highest `seq` (events) or id (audit records); 0 when empty.
    pub last: i64,
    pub bytes: u64,
}

/// Copies the store at `store` to `dest`, and its audit log (if any) beside `dest` under the
/// name a store at `dest` would look for (`backup.db` → `backup.audit.db`), so `dest` can be
/// served as it is.
pub fn backup(store: &Path, dest: &Path) -> anyhow::Result<BackupReport> {
    let store = real_path(store);
    if !store.is_file() {
        bail!("there is no SQLite store at {}", store.display());
    }
    let dest_audit = audit_path(dest);
    for path in [dest, dest_audit.as_path()] {
        if path.exists() {
            bail!(
                "{} already exists: a backup never overwrites a file; choose a new name",
                path.display()
            );
        }
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let events = copy(
        &store,
        dest,
        "SELECT count(*), coalesce(max(seq), 0) FROM events",
    )?;
    let audit_store = audit_path(&store);
    let audit = if audit_store.is_file() {
        Some(copy(
            &audit_store,
            &dest_audit,
            "SELECT count(*), coalesce(max(id), 0) FROM audit_logs",
        )?)
    } else {
        None
    };
    Ok(BackupReport { events, audit })
}

/// `VACUUM INTO` from `from` to `to`, then sync and check the copy and count its rows with
/// `count_sql`. A failed copy leaves no file behind.
fn copy(from: &Path, to: &Path, count_sql: &str) -> anyhow::Result<Copied> {
    let result = copy_checked(from, to, count_sql);
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result.with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn copy_checked(from: &Path, to: &Path, count_sql: &str) -> anyhow::Result<Copied> {
    // Read-write without create: a read-only connection can't open a WAL database whose
    // shared-memory file is missing (no server running); this one writes nothing.
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    let target = to
        .to_str()
        .context("the backup path is not UTF-8, which SQLite needs")?;
    source.execute("VACUUM INTO ?1", [target])?;
    drop(source);
    let file = std::fs::File::open(to)?;
    file.sync_all()?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the copy failed its integrity check: {check}");
    }
    let (rows, last) = copy.query_row(count_sql, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Copied {
        path: to.to_path_buf(),
        rows,
        last,
        bytes: file.metadata()?.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_never_overwrites_and_a_missing_store_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        let e = backup(&missing, &dir.path().join("b.db")).unwrap_err();
        assert!(e.to_string().contains("no SQLite store"), "{e}");
        assert!(!missing.exists());

        let store = dir.path().join("a.db");
        super::super::open_and_migrate(&store, super::super::Synchronous::Full).unwrap();
        let taken = dir.path().join("b.audit.db");
        std::fs::write(&taken, b"keep me").unwrap();
        let e = backup(&store, &dir.path().join("b.db")).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
        assert!(!dir.path().join("b.db").exists());

        let report = backup(&store, &dir.path().join("sub/c.db")).unwrap();
        assert_eq!((report.events.rows, report.events.last), (0, 0));
        assert!(report.audit.is_none(), "this store has no audit log yet");
    }
}
