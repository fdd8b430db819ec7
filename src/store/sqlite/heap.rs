//! SQLite's heap: mimalloc (the process's Rust allocator) instead of the C library's `malloc`.
//!
//! SQLite copies every text and blob a statement binds into its own heap and frees the copy
//! when the value is rebound, and builds each row's record there too: a group commit of 64
//! events makes over a thousand small allocations. With glibc's `malloc` (free-list
//! consolidation, arena locks) those showed at about a tenth of the writer thread's time.
//!
//! Invariants:
//! - `install` runs before SQLite initializes (before the first connection or VFS lookup); SQLite
//!   refuses a new allocator once initialized, and then simply keeps its default one.
//! - Every pointer SQLite frees or resizes came from these functions (the allocator is never
//!   switched while SQLite is initialized), so `mi_free`/`mi_realloc` always own it.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use libmimalloc_sys as mi;
use rusqlite::ffi;

/// Points SQLite's allocator at mimalloc, once per process; whether SQLite took it (`false` if
/// something initialized SQLite first).
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(malloc),
            xFree: Some(free),
            xRealloc: Some(realloc),
            xSize: Some(size),
            xRoundup: Some(roundup),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a `sqlite3_mem_methods`, which SQLite
        // copies; the functions below follow its contract (8-byte aligned blocks, `xSize` of
        // any block it returned).
        let rc = unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_MALLOC,
                &methods as *const ffi::sqlite3_mem_methods,
            )
        };
        if rc != ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was already initialized; it keeps its own allocator"
            );
        }
        rc == ffi::SQLITE_OK
    })
}

/// A negative or zero size asks for nothing SQLite will use; mimalloc still returns a block
/// that can be freed, which is what SQLite expects of `xMalloc(0)`.
fn bytes(n: c_int) -> usize {
    usize::try_from(n).unwrap_or(0)
}

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SAFETY: plain allocation; mimalloc's blocks are 16-byte aligned.
    unsafe { mi::mi_malloc(bytes(n)) }
}

unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: `p` came from `malloc`/`realloc` above (module invariants).
    unsafe { mi::mi_free(p) }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: as `free`.
    unsafe { mi::mi_realloc(p, bytes(n)) }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    // SAFETY: as `free`; a block's usable size is at least what was asked for.
    let n = unsafe { mi::mi_usable_size(p) };
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn roundup(n: c_int) -> c_int {
    // SAFETY: a pure size computation.
    let rounded = unsafe { mi::mi_good_size(bytes(n)) };
    c_int::try_from(rounded).unwrap_or(n)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_allocates_from_mimalloc_once_installed() {
        // Under `cargo test` another test in this binary may have initialized SQLite first;
        // then SQLite keeps its own heap and `install` says so. Either way the answer must be
        // true of the blocks SQLite hands out.
        let installed = install();
        // SAFETY: a block from SQLite's allocator, sized and freed by SQLite.
        unsafe {
            let block = ffi::sqlite3_malloc(1000);
            assert!(!block.is_null());
            assert!(ffi::sqlite3_msize(block) >= 1000);
            assert_eq!(mi::mi_is_in_heap_region(block), installed);
            let grown = ffi::sqlite3_realloc(block, 100_000);
            assert!(!grown.is_null());
            assert!(ffi::sqlite3_msize(grown) >= 100_000);
            ffi::sqlite3_free(grown);
        }
        // And SQLite works on it: a query that builds and regrows a long string.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let text: String = conn
            .query_row(
                "WITH RECURSIVE n(i, s) AS (SELECT 1, 'x' UNION ALL SELECT i + 1, s || 'yz' FROM n WHERE i < 2000) \
                 SELECT s FROM n ORDER BY i DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(text.len(), 1 + 2 * 1999);
    }
}
