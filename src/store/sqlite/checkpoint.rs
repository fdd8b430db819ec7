//! The WAL checkpointer: a thread with its own connection that copies committed WAL frames into
//! the database file every `INTERVAL`, so the group-commit writer never stalls on a checkpoint.
//!
//! A `PASSIVE` checkpoint never blocks the writer or readers; it copies what it can. Under steady
//! ingest it never quite catches up (the writer adds frames while it copies), and the WAL would
//! only grow; so when the WAL is past `RESTART_FRAMES`, a `RESTART` checkpoint follows. It holds
//! the write lock only while copying the few frames written since the passive pass, and makes
//! the writer start the WAL over from the beginning: the file stays bounded and is overwritten in
//! place rather than extended. On stop, a final `TRUNCATE` checkpoint empties it.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;

const INTERVAL: Duration = Duration::from_millis(250);
/// WAL size (in 4 KiB frames) past which the passive pass is followed by a `RESTART`.
const RESTART_FRAMES: i64 = 4096;

pub(super) struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening {} for checkpoints", path.display()))?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(String::from("annals-sqlite-checkpoint"))
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    let result = checkpoint(&conn, "PASSIVE").and_then(|frames| {
                        if frames >= RESTART_FRAMES {
                            checkpoint(&conn, "RESTART")?;
                        }
                        Ok(())
                    });
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                    }
                }
                if let Err(e) = checkpoint(&conn, "TRUNCATE") {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
            })
            .context("starting the checkpoint thread")?;
        Ok(Self { stop, handle })
    }

    /// Runs a last checkpoint and waits for the thread. Call after the writer has stopped.
    pub(super) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}

/// Runs one checkpoint; returns the number of frames in the WAL before it.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
}
