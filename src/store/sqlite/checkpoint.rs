//! The WAL checkpointer: a thread with its own connection that copies committed WAL frames into
//! the database file every `INTERVAL`, so the group-commit writer never stalls on a checkpoint.
//!
//! A `PASSIVE` checkpoint never blocks the writer or readers; it copies what it can. Under steady
//! ingest it never quite catches up (the writer adds frames while it copies), so SQLite can never
//! start the WAL over and the file would only grow. When the WAL is past `RESTART_FRAMES`, this
//! thread raises `WalRestart`; the writer then runs one more `PASSIVE` checkpoint itself between
//! two groups (see `writer.rs`), when no frame can be added meanwhile, so it copies the last few
//! frames and the writer's next transaction starts the WAL over from the beginning: the file
//! stays bounded and is overwritten in place. (A `RESTART` checkpoint from this thread would do
//! the same but has to wait for the write lock, and while it waits it blocks the writer.)
//! On stop, a final `TRUNCATE` checkpoint empties the WAL.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;

const INTERVAL: Duration = Duration::from_millis(250);
/// WAL size (in 4 KiB frames) past which the writer is asked to let the WAL start over.
const RESTART_FRAMES: i64 = 4096;

/// Raised by the checkpointer when the WAL should start over; lowered by the writer when it
/// runs its own checkpoint.
#[derive(Clone, Default)]
pub(super) struct WalRestart(Arc<AtomicBool>);

impl WalRestart {
    pub(super) fn wanted(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// The writer's part: between two groups, copy the frames the checkpointer has not copied
    /// yet. Once every frame is in the database file, the writer's next transaction restarts the
    /// WAL. If the checkpointer was mid-pass (busy), the request stays up and the writer tries
    /// again after its next group, which costs nothing until the pass ends. Otherwise the
    /// request is lowered even if a reader on an older snapshot kept frames uncopied: the
    /// checkpointer's next pass finds the WAL still long and asks again, so those retries come
    /// at the checkpointer's pace, never after every group.
    /// Failures go to `failures`, the writer's own streak.
    pub(super) fn checkpoint_from_writer(&self, conn: &Connection, failures: &mut FailureStreak) {
        match checkpoint(conn, "PASSIVE") {
            Ok(result) if result.busy => failures.ended(),
            Ok(result) => {
                failures.ended();
                self.0.store(false, Ordering::Relaxed);
                if result.copied >= result.frames {
                    tracing::debug!(
                        frames = result.frames,
                        "writer-side checkpoint copied the WAL; it will start over"
                    );
                }
            }
            Err(e) => failures.failed(&e),
        }
    }
}

pub(super) struct Checkpointer {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path, restart: WalRestart) -> anyhow::Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening {} for checkpoints", path.display()))?;
        conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(String::from("annals-checkpt")) // 15 characters at most
            .spawn(move || {
                let mut failures = FailureStreak::new("WAL checkpoint");
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    match checkpoint(&conn, "PASSIVE") {
                        Ok(result) => {
                            failures.ended();
                            if result.frames >= RESTART_FRAMES {
                                restart.request();
                            }
                        }
                        Err(e) => failures.failed(&e),
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

/// Checkpoint failures, logged without flooding the log (on a full disk the checkpointer fails
/// every pass, four times a second, and the writer after every group while it is asked to
/// checkpoint): the first, then one line per `REPEAT` while they go on, and the end.
pub(super) struct FailureStreak {
    /// Whose checkpoints: the checkpointer's, or the writer's.
    what: &'static str,
    /// Failures since the last success, and when the last line about them was logged.
    current: Option<(u64, Instant)>,
}

impl FailureStreak {
    const REPEAT: Duration = Duration::from_secs(60);

    pub(super) fn new(what: &'static str) -> Self {
        Self {
            what,
            current: None,
        }
    }

    fn failed(&mut self, error: &rusqlite::Error) {
        match &mut self.current {
            None => {
                tracing::warn!(error = %error, "{} failed; retrying", self.what);
                self.current = Some((1, Instant::now()));
            }
            Some((failures, logged_at)) => {
                *failures += 1;
                if logged_at.elapsed() >= Self::REPEAT {
                    tracing::warn!(error = %error, failures = *failures, "{} still failing", self.what);
                    *logged_at = Instant::now();
                }
            }
        }
    }

    fn ended(&mut self) {
        if let Some((failures, _)) = self.current.take() {
            tracing::info!(failures, "{} works again", self.what);
        }
    }
}

/// What one `PRAGMA wal_checkpoint` reported.
struct Checkpointed {
    /// Another checkpoint (or, for the stronger modes, the writer) was in the way.
    busy: bool,
    /// Frames in the WAL.
    frames: i64,
    /// Of those, how many are now in the database file.
    copied: i64,
}

fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Checkpointed> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(Checkpointed {
            busy: r.get::<_, i64>(0)? != 0,
            frames: r.get(1)?,
            copied: r.get(2)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames now in the WAL, as a passive checkpoint from another connection reports them.
    fn wal_frames(path: &Path) -> i64 {
        checkpoint(&Connection::open(path).unwrap(), "PASSIVE")
            .unwrap()
            .frames
    }

    #[test]
    fn a_long_wal_starts_over_after_the_writers_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restart.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (v BLOB NOT NULL);",
            )
            .unwrap();
        // Past RESTART_FRAMES: every row fills most of a 4 KiB page.
        for _ in 0..RESTART_FRAMES / 500 + 1 {
            writer
                .execute_batch(
                    "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                     WHERE i < 500) INSERT INTO t SELECT randomblob(3000) FROM n; COMMIT;",
                )
                .unwrap();
        }
        let restart = WalRestart::default();
        let checkpointer = Checkpointer::start(&path, restart.clone()).unwrap();
        let asked = std::time::Instant::now();
        while !restart.wanted() {
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "no restart asked"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        restart.checkpoint_from_writer(
            &writer,
            &mut FailureStreak::new("writer-side WAL checkpoint"),
        );
        assert!(
            !restart.wanted(),
            "every frame was copied, so the request is done"
        );
        writer
            .execute("INSERT INTO t VALUES (randomblob(10))", [])
            .unwrap();
        let frames = wal_frames(&path);
        assert!(frames < 10, "the WAL started over: {frames} frames");
        checkpointer.stop();
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, (RESTART_FRAMES / 500 + 1) * 500 + 1);
    }
}
