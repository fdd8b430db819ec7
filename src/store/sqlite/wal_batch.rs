//! `annals-wal-batch`: a thin SQLite VFS over the platform's default one that turns a commit's
//! WAL writes into one `pwrite`.
//!
//! SQLite appends each WAL frame with two writes (a 24-byte header, then the page), so a group
//! commit that dirties 40 pages costs 80 system calls before its `fsync`; on the writer thread
//! that was more time than the `fsync` itself. Here a WAL file's contiguous writes are gathered in
//! memory and handed to the real file in one call just before SQLite reads, syncs, sizes,
//! truncates or closes it, or when the next write isn't contiguous or the buffer is full.
//!
//! Invariants:
//! - Only `-wal` files are wrapped; the database file, journals and shared memory go straight to
//!   the default VFS (its own `sqlite3_file`, its own methods, no indirection).
//! - Writes reach the real file in the order SQLite made them: a non-contiguous write first
//!   flushes what is gathered.
//! - Every operation other than a write sees the file as if nothing were gathered (it flushes
//!   first), and a failed flush is that operation's error.
//! - A WAL sync is the default VFS's `fsync` the first time (it also syncs the directory of a
//!   new WAL), then `fdatasync` on a second descriptor of the same file: the data and the size
//!   reach the disk as before, only the inode's modification time is no longer written on every
//!   commit (one disk write and one VM exit fewer per commit).
//! - Use it only for a connection with `synchronous = FULL`: then SQLite syncs the WAL at the
//!   end of every commit, before it publishes the new frames in the WAL index, so another
//!   connection (a reader, the checkpointer) never finds a published frame that is still in the
//!   buffer, and an acknowledged commit is on disk exactly as without this layer.

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use anyhow::Context;
use rusqlite::ffi;

/// The VFS's registered name.
pub const NAME: &CStr = c"annals-wal-batch";

/// Most bytes gathered before they are written anyway (a large batch's transaction). SQLite's
/// WAL writes are at most a page, so a write never exceeds it by much.
const MAX_GATHERED: usize = 4 * 1024 * 1024;

// The inner file follows WalFile directly, so WalFile must keep its alignment.
const _: () = assert!(std::mem::size_of::<WalFile>().is_multiple_of(std::mem::align_of::<u64>()));

/// Largest single write handed to the default VFS: the unix VFS masks a write's length to 17
/// bits (`nBuf &= 0x1ffff` in `seekAndWriteFd`), so a longer one would be cut short.
const MAX_WRITE: usize = 0x1ffff & !0xfff;

/// The default VFS this one wraps, and this VFS once registered.
struct Registered {
    inner: *mut ffi::sqlite3_vfs,
}

// SAFETY: SQLite's VFS objects are immutable once registered and used from any thread.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, String>> = OnceLock::new();

/// Registers the VFS (once per process); returns its name for `open_with_flags_and_vfs`.
pub fn register() -> anyhow::Result<&'static CStr> {
    let registered = REGISTERED.get_or_init(|| unsafe { register_now() });
    registered
        .as_ref()
        .map(|_| NAME)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("registering the annals-wal-batch SQLite VFS")
}

unsafe fn register_now() -> Result<Registered, String> {
    // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, valid for the process's lifetime.
    let inner = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if inner.is_null() {
        return Err(String::from("SQLite has no default VFS"));
    }
    // SAFETY: `inner` points at a registered VFS; a bitwise copy keeps every method it has.
    let mut vfs: ffi::sqlite3_vfs = unsafe { std::ptr::read(inner) };
    let inner_size = unsafe { (*inner).szOsFile } as usize;
    vfs.szOsFile = (std::mem::size_of::<WalFile>() + inner_size) as c_int;
    vfs.zName = NAME.as_ptr();
    vfs.pNext = std::ptr::null_mut();
    vfs.xOpen = Some(open);
    let vfs = Box::leak(Box::new(vfs));
    // SAFETY: `vfs` lives for the rest of the process; registering doesn't make it the default.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed with code {rc}"));
    }
    Ok(Registered { inner })
}

fn inner_vfs() -> *mut ffi::sqlite3_vfs {
    match REGISTERED.get() {
        Some(Ok(r)) => r.inner,
        _ => unreachable!("the VFS is only reachable through SQLite once registered"),
    }
}

/// A wrapped WAL file: SQLite's handle first, then the default VFS's own file right after it.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    /// The default VFS's file, in the same allocation just past this struct.
    inner: *mut ffi::sqlite3_file,
    gathered: Vec<u8>,
    /// File offset of `gathered[0]`.
    gathered_at: i64,
    /// The same file opened again, for `fdatasync`; `None` if it could not be opened.
    data_sync: Option<std::fs::File>,
    /// Whether the default VFS's sync has run once (it also syncs the directory of a new WAL).
    synced_once: bool,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let inner_vfs = inner_vfs();
    // SAFETY: the default VFS's xOpen is always set.
    let inner_open = unsafe { (*inner_vfs).xOpen.expect("default VFS has xOpen") };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a WAL: the default VFS's file takes the whole slot and SQLite calls it directly.
        return unsafe { inner_open(inner_vfs, name, file, flags, out_flags) };
    }
    let wal = file.cast::<WalFile>();
    // SAFETY: SQLite gave us `szOsFile` bytes, i.e. a WalFile followed by the inner file, and
    // WalFile's size is a multiple of the pointer alignment the inner file needs.
    let inner = unsafe { file.cast::<u8>().add(std::mem::size_of::<WalFile>()) }
        .cast::<ffi::sqlite3_file>();
    let rc = unsafe { inner_open(inner_vfs, name, inner, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // A NULL pMethods tells SQLite not to close a file that never opened.
        unsafe { (*file).pMethods = std::ptr::null() };
        return rc;
    }
    // SAFETY: `name` is the path SQLite just opened.
    let data_sync = unsafe { reopen(name) };
    unsafe {
        wal.write(WalFile {
            base: ffi::sqlite3_file {
                pMethods: &WAL_METHODS,
            },
            inner,
            gathered: Vec::new(),
            gathered_at: 0,
            data_sync,
            synced_once: false,
        })
    };
    ffi::SQLITE_OK
}

/// Opens the WAL at `name` a second time, for `fdatasync` (which acts on the file, not on one
/// descriptor).
///
/// SAFETY: `name` is the NUL-terminated path SQLite passed to `open`.
unsafe fn reopen(name: ffi::sqlite3_filename) -> Option<std::fs::File> {
    use std::os::unix::ffi::OsStrExt;
    let path = unsafe { CStr::from_ptr(name) };
    std::fs::OpenOptions::new()
        .write(true)
        .open(std::ffi::OsStr::from_bytes(path.to_bytes()))
        .ok()
}

/// The wrapped file of a handle this VFS opened for a WAL.
///
/// SAFETY: `file` must be a handle opened by `open` with WAL_METHODS, not yet closed.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *file.cast::<WalFile>() }
}

impl WalFile {
    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: an open inner file always has its methods.
        unsafe { &*(*self.inner).pMethods }
    }

    /// Hands everything gathered to the real file.
    fn flush(&mut self) -> c_int {
        if self.gathered.is_empty() {
            return ffi::SQLITE_OK;
        }
        let write = self.methods().xWrite.expect("xWrite");
        let mut rc = ffi::SQLITE_OK;
        let mut offset = self.gathered_at;
        for chunk in self.gathered.chunks(MAX_WRITE) {
            // SAFETY: the chunk is valid for its length (< MAX_WRITE); the inner file is open.
            rc = unsafe {
                write(
                    self.inner,
                    chunk.as_ptr().cast::<c_void>(),
                    chunk.len() as c_int,
                    offset,
                )
            };
            if rc != ffi::SQLITE_OK {
                break;
            }
            offset += chunk.len() as i64;
        }
        self.gathered.clear();
        if self.gathered.capacity() > MAX_GATHERED {
            self.gathered = Vec::new();
        }
        rc
    }
}

/// Flushes, then runs `then` on the inner file unless the flush failed.
fn flushed(file: *mut ffi::sqlite3_file, then: impl FnOnce(&mut WalFile) -> c_int) -> c_int {
    // SAFETY: SQLite only calls these methods on handles `open` set up.
    let wal = unsafe { wal(file) };
    match wal.flush() {
        ffi::SQLITE_OK => then(wal),
        rc => rc,
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let wal = unsafe { wal(file) };
    let flushed = wal.flush();
    let close = wal.methods().xClose.expect("xClose");
    let closed = unsafe { close(wal.inner) };
    // SAFETY: SQLite never touches the handle after xClose; drop what `open` wrote.
    unsafe { std::ptr::drop_in_place(file.cast::<WalFile>()) };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    flushed(file, |wal| unsafe {
        (wal.methods().xRead.expect("xRead"))(wal.inner, buf, amount, offset)
    })
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let wal = unsafe { wal(file) };
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let appends = wal.gathered_at + wal.gathered.len() as i64 == offset
        && wal.gathered.len() + len <= MAX_GATHERED;
    if !wal.gathered.is_empty() && !appends {
        let rc = wal.flush();
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if wal.gathered.is_empty() {
        wal.gathered_at = offset;
    }
    // SAFETY: SQLite passes `amount` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    wal.gathered.extend_from_slice(bytes);
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    flushed(file, |wal| unsafe {
        (wal.methods().xTruncate.expect("xTruncate"))(wal.inner, size)
    })
}

/// The default VFS's sync the first time, `fdatasync` after that (see the module's invariants).
unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed(file, |wal| match &wal.data_sync {
        Some(file) if wal.synced_once => match file.sync_data() {
            Ok(()) => ffi::SQLITE_OK,
            Err(_) => ffi::SQLITE_IOERR_FSYNC,
        },
        _ => {
            let rc = unsafe { (wal.methods().xSync.expect("xSync"))(wal.inner, flags) };
            wal.synced_once |= rc == ffi::SQLITE_OK;
            rc
        }
    })
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    flushed(file, |wal| unsafe {
        (wal.methods().xFileSize.expect("xFileSize"))(wal.inner, size)
    })
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let wal = unsafe { wal(file) };
    unsafe { (wal.methods().xLock.expect("xLock"))(wal.inner, level) }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let wal = unsafe { wal(file) };
    unsafe { (wal.methods().xUnlock.expect("xUnlock"))(wal.inner, level) }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let wal = unsafe { wal(file) };
    unsafe {
        (wal.methods()
            .xCheckReservedLock
            .expect("xCheckReservedLock"))(wal.inner, out)
    }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flushed(file, |wal| unsafe {
        (wal.methods().xFileControl.expect("xFileControl"))(wal.inner, op, arg)
    })
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let wal = unsafe { wal(file) };
    unsafe { (wal.methods().xSectorSize.expect("xSectorSize"))(wal.inner) }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let wal = unsafe { wal(file) };
    unsafe {
        (wal.methods()
            .xDeviceCharacteristics
            .expect("xDeviceCharacteristics"))(wal.inner)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags, params};

    /// Deterministic, varied row content.
    fn blob(row: i64, len: usize) -> Vec<u8> {
        let mut x = row as u64 ^ 0x9e37_79b9_7f4a_7c15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn open_batched(path: &std::path::Path) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::default(),
            super::register().unwrap(),
        )
        .unwrap();
        // A tiny page cache makes SQLite spill pages mid-transaction and read them back from the
        // WAL, and rewrite frames it already wrote: the non-append paths of the layer.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = 8; \
             PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .unwrap();
        conn
    }

    /// (rows, total bytes, a checksum of every byte) as a plain connection sees the table.
    fn seen(conn: &Connection) -> (i64, i64, i64) {
        conn.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0), \
             coalesce(sum(id * unicode(substr(hex(v), 1 + id % 50, 1))), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    #[test]
    fn committed_frames_reach_other_connections_intact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batched.db");
        let mut writer = open_batched(&path);
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let expected = Connection::open_in_memory().unwrap();
        expected
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);")
            .unwrap();

        // One transaction far larger than both the gathering buffer (4 MiB) and the unix VFS's
        // largest single write (128 KiB), with updates of rows written earlier in it.
        let tx = writer.transaction().unwrap();
        for id in 0..3000i64 {
            let v = blob(id, 1500 + (id as usize % 700));
            tx.execute("INSERT INTO t (id, v) VALUES (?1, ?2)", params![id, v])
                .unwrap();
            expected
                .execute("INSERT INTO t (id, v) VALUES (?1, ?2)", params![id, v])
                .unwrap();
        }
        for id in (0..3000i64).step_by(7) {
            let v = blob(id + 10_000, 900);
            tx.execute("UPDATE t SET v = ?2 WHERE id = ?1", params![id, v])
                .unwrap();
            expected
                .execute("UPDATE t SET v = ?2 WHERE id = ?1", params![id, v])
                .unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(seen(&reader), seen(&expected));

        // Small commits, each visible to the other connection as soon as it returns.
        for id in 3000..3200i64 {
            let v = blob(id, 300);
            writer
                .execute("INSERT INTO t (id, v) VALUES (?1, ?2)", params![id, v])
                .unwrap();
            expected
                .execute("INSERT INTO t (id, v) VALUES (?1, ?2)", params![id, v])
                .unwrap();
            let (rows, _, _) = seen(&reader);
            assert_eq!(rows, id + 1, "commit {id} not visible to the reader");
        }
        assert_eq!(seen(&reader), seen(&expected));

        // A checkpoint by a plain connection, then the WAL starts over and is written again.
        let other = Connection::open(&path).unwrap();
        let (busy, frames, copied): (i64, i64, i64) = other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, copied), (0, frames));
        writer
            .execute("DELETE FROM t WHERE id % 3 = 0", [])
            .unwrap();
        expected
            .execute("DELETE FROM t WHERE id % 3 = 0", [])
            .unwrap();
        assert_eq!(seen(&reader), seen(&expected));

        drop((writer, reader, other));
        let reopened = Connection::open(&path).unwrap();
        let check: String = reopened
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(seen(&reopened), seen(&expected));
    }

    /// The WAL's handle as SQLite holds it (`SQLITE_FCNTL_JOURNAL_POINTER`).
    fn wal_handle(conn: &Connection) -> *mut rusqlite::ffi::sqlite3_file {
        let mut file: *mut rusqlite::ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the connection is open; the op writes one file pointer into `file`.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                rusqlite::ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                (&raw mut file).cast(),
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        assert!(!file.is_null(), "no WAL is open");
        file
    }

    #[test]
    fn wal_syncs_after_the_first_are_fdatasync_on_a_second_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synced.db");
        let conn = open_batched(&path);
        for id in 0..3i64 {
            conn.execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                params![id, blob(id, 100)],
            )
            .unwrap();
        }
        let file = wal_handle(&conn);
        // SAFETY: `file` is the live WAL handle of `conn`, which outlives this borrow.
        let methods = unsafe { (*file).pMethods };
        assert!(
            std::ptr::eq(methods, &super::WAL_METHODS),
            "the WAL is not wrapped"
        );
        let wal = unsafe { super::wal(file) };
        assert!(
            wal.data_sync.is_some(),
            "the WAL could not be reopened for fdatasync"
        );
        assert!(
            wal.synced_once,
            "the default VFS's first sync (with the directory) never ran"
        );
    }

    #[test]
    fn registering_twice_is_fine() {
        assert_eq!(super::register().unwrap(), super::NAME);
        assert_eq!(super::register().unwrap(), super::NAME);
    }
}
