//! One serving process per SQLite store.
//!
//! The writer assigns `seq` from what it read at start and holds in memory, so a second
//! `annals serve` on the same file would hand out the same seqs and fail every append. The
//! serving process therefore holds an exclusive lock on `<database>-serve.lock` (an advisory
//! `flock`, released by the kernel when the process ends, however it ends) for as long as it
//! serves; a second one is refused at start with a message that says why. The management
//! commands (`annals keys …`, `annals migrate`) don't take it: they write no events, and
//! SQLite's own locking orders their writes with the server's.
//!
//! The server locks its audit database the same way (`<name>.audit.db-serve.lock`): stores whose
//! names differ only in their extension (`a.db`, `a.sqlite`) share one audit file, and a store
//! may itself be named like another's audit file (`a.audit.db`). Without that second lock, two
//! servers would write one audit log, and each would show its tenants the other's calls.
//!
//! Both are named after the store's real path (`real_path`: symbolic links resolved), so every
//! name of one store — `b.db` linking to `a.db`, a linked directory — takes the same locks and
//! the same audit database. (A hard link is a second name no path shows; don't serve one.)
//!
//! The lock is a file of its own, not the database: on NFS `flock` is emulated with the same
//! POSIX locks SQLite takes on the database, which a lock of ours would release or replace.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{audit_path, real_path};

/// Held while a server uses the store and its audit database; dropping it lets the next
/// server in.
#[derive(Debug)]
pub struct ServeLock {
    _events: File,
    _audit: File,
    /// The store's real path, in `SERVED_HERE` while this lives.
    database: PathBuf,
}

/// The stores whose serve lock this process holds.
static SERVED_HERE: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

impl Drop for ServeLock {
    fn drop(&mut self) {
        if let Ok(mut served) = SERVED_HERE.lock() {
            served.remove(&self.database);
        }
    }
}

/// Whether this process holds `database`'s serve lock: it serves the store (or copies into
/// it), so upkeep that must happen in one process only — counting committed events into the
/// analytics rollups — is its to do. A management command (`keys`, `verify`, …) beside a
/// running server is not.
pub fn served_here(database: &Path) -> bool {
    SERVED_HERE
        .lock()
        .is_ok_and(|served| served.contains(&real_path(database)))
}

/// The lock file next to `database`: `annals.db` → `annals.db-serve.lock`.
fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_os_string();
    name.push("-serve.lock");
    database.with_file_name(name)
}

/// Takes the serve locks of the store and of its audit database, or says which process-wide
/// rule a second server broke.
pub fn claim(database: &Path) -> anyhow::Result<ServeLock> {
    if let Some(dir) = database.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Locked by the file it names, not by this name of it: `b.db` linking to `a.db` is `a.db`.
    let database = &real_path(database);
    let events = try_lock(database)?.map_err(|lock| {
        anyhow::anyhow!(
            "another annals server is already serving {} or keeps its audit log there (it \
             holds {}): a SQLite store is served by one process at a time; stop that one \
             first, or share a PostgreSQL database between several servers",
            database.display(),
            lock.display()
        )
    })?;
    let audit = audit_path(database);
    let audit_lock = try_lock(&audit)?.map_err(|lock| {
        anyhow::anyhow!(
            "another annals server is already using {}, where {} keeps its audit log (it holds \
             {}): stores whose names differ only in their extension (a.db, a.sqlite) share one \
             audit database, and a store may not be named like another's audit database; \
             rename this one, or stop that server first",
            audit.display(),
            database.display(),
            lock.display()
        )
    })?;
    if let Ok(mut served) = SERVED_HERE.lock() {
        served.insert(database.clone());
    }
    Ok(ServeLock {
        _events: events,
        _audit: audit_lock,
        database: database.clone(),
    })
}

/// `database`'s lock file, locked (`Ok(Ok)`), or its path when another process holds it
/// (`Ok(Err)`).
fn try_lock(database: &Path) -> anyhow::Result<Result<File, PathBuf>> {
    let path = lock_path(database);
    // An existing lock file is opened for reading only (`flock` needs no more), so one left by
    // a server run as another user (root, say) does not keep the service's own user out.
    let file = match File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path),
        opened => opened,
    }
    .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Ok(file)),
        Err(TryLockError::WouldBlock) => Ok(Err(path)),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_waits_for_the_first_to_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("nested").join("a.db");
        let first = claim(&db).unwrap();
        assert!(lock_path(&db).ends_with("nested/a.db-serve.lock"));
        let refused = claim(&db).unwrap_err().to_string();
        assert!(refused.contains("already serving"), "{refused}");
        assert!(refused.contains("PostgreSQL"), "{refused}");
        drop(first);
        claim(&db).unwrap();
    }

    #[test]
    fn stores_that_share_an_audit_database_are_not_served_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let first = claim(&db).unwrap();
        assert!(lock_path(&audit_path(&db)).ends_with("a.audit.db-serve.lock"));
        for other in ["a.sqlite", "a", "a.audit.db"] {
            let refused = claim(&dir.path().join(other)).unwrap_err().to_string();
            assert!(refused.contains("a.audit.db"), "{other}: {refused}");
        }
        // A refused claim lets go of the store lock it took.
        try_lock(&dir.path().join("a.sqlite")).unwrap().unwrap();
        drop(first);
        let other = claim(&dir.path().join("a.sqlite")).unwrap();
        assert!(claim(&db).is_err());
        drop(other);
        claim(&db).unwrap();
    }

    #[test]
    fn a_lock_file_this_user_cannot_write_still_locks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        drop(claim(&db).unwrap());
        for lock in [lock_path(&db), lock_path(&audit_path(&db))] {
            std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        let first = claim(&db).expect("a read-only lock file is enough");
        assert!(
            claim(&db).is_err(),
            "and it still keeps a second server out"
        );
        drop(first);
    }

    #[test]
    fn every_name_of_one_store_takes_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        std::fs::write(&db, b"").unwrap();
        std::os::unix::fs::symlink("a.db", dir.path().join("b.db")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("sub/up")).unwrap();
        let first = claim(&db).unwrap();
        for other in ["b.db", "sub/up/a.db", "sub/up/b.db", "sub/../a.db"] {
            let refused = claim(&dir.path().join(other)).unwrap_err().to_string();
            assert!(refused.contains("already serving"), "{other}: {refused}");
        }
        drop(first);
        // A store that does not exist yet is named by its directory's real path.
        let new = dir.path().join("sub/up/new.db");
        assert_eq!(
            real_path(&new),
            std::fs::canonicalize(dir.path()).unwrap().join("new.db")
        );
    }
}
