//! `WriteQueue`: a queue bounded both in jobs and in bytes between request handlers and a
//! store's single writer.
//!
//! Invariants:
//! - `try_submit` never waits: a full queue (by count or by bytes) is reported at once so the
//!   handler can answer `503` + `Retry-After`.
//! - A job's byte reservation is held until the writer drops the job, so the bytes bound covers
//!   everything accepted and not yet written.
//! - Jobs are received in submission order; a writer drains whatever is waiting into one group.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The queue is full, or its writer has stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueFull {
    Full,
    Closed,
}

/// How full a write queue is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Jobs (appends and other writes) waiting.
    pub jobs: usize,
    pub max_jobs: usize,
    /// Bytes of event data waiting.
    pub bytes: usize,
    pub max_bytes: usize,
}

/// A job in the queue with its byte reservation.
pub struct Queued<T> {
    pub job: T,
    bytes: OwnedSemaphorePermit,
}

/// Held while a dequeued job's data is still in memory; dropping it frees the bytes.
pub struct Reservation(#[allow(dead_code)] OwnedSemaphorePermit);

impl<T> Queued<T> {
    pub fn into_parts(self) -> (T, Reservation) {
        (self.job, Reservation(self.bytes))
    }
}

pub struct WriteQueue<T> {
    tx: mpsc::Sender<Queued<T>>,
    bytes: Arc<Semaphore>,
    byte_capacity: usize,
}

impl<T> Clone for WriteQueue<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            byte_capacity: self.byte_capacity,
        }
    }
}

impl<T> WriteQueue<T> {
    pub fn new(max_jobs: usize, max_bytes: usize) -> (Self, mpsc::Receiver<Queued<T>>) {
        let byte_capacity = max_bytes.clamp(1, u32::MAX as usize);
        let (tx, rx) = mpsc::channel(max_jobs.max(1));
        (
            Self {
                tx,
                bytes: Arc::new(Semaphore::new(byte_capacity)),
                byte_capacity,
            },
            rx,
        )
    }

    /// How full the queue is now.
    pub fn depth(&self) -> QueueDepth {
        QueueDepth {
            jobs: self.tx.max_capacity() - self.tx.capacity(),
            max_jobs: self.tx.max_capacity(),
            bytes: self.byte_capacity - self.bytes.available_permits(),
            max_bytes: self.byte_capacity,
        }
    }

    pub fn try_submit(&self, job: T, bytes: usize) -> Result<(), QueueFull> {
        // A job larger than the whole budget still goes through when the queue is empty.
        let want = bytes.clamp(1, self.byte_capacity) as u32;
        let permit = match self.bytes.clone().try_acquire_many_owned(want) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueFull::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(QueueFull::Full),
        };
        self.tx
            .try_send(Queued { job, bytes: permit })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => QueueFull::Full,
                mpsc::error::TrySendError::Closed(_) => QueueFull::Closed,
            })
    }
}

/// What a writer thread waiting for work got.
pub enum Waited<T> {
    Group(Vec<Queued<T>>),
    /// Nothing arrived within the wait's time limit.
    Idle,
    /// The queue is closed and empty.
    Closed,
}

/// Blocks for the next job, then takes whatever else is already waiting, up to `max_jobs`. For
/// a writer running on its own thread. With `idle`, gives up after that long without work, so
/// the writer can do deferred work while the queue is quiet.
pub fn next_group_blocking<T>(
    rx: &mut mpsc::Receiver<Queued<T>>,
    max_jobs: usize,
    idle: Option<std::time::Duration>,
) -> Waited<T> {
    use std::task::{Context, Poll, Wake, Waker};

    /// Wakes the waiting thread when a job is sent.
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    let deadline = idle.map(|idle| std::time::Instant::now() + idle);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match rx.poll_recv(&mut cx) {
            Poll::Ready(Some(first)) => return Waited::Group(group_after(first, rx, max_jobs)),
            Poll::Ready(None) => return Waited::Closed,
            // Parking wakes early on unpark (a job) or spuriously; either way the loop polls again.
            Poll::Pending => match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Waited::Idle;
                    }
                    std::thread::park_timeout(left);
                }
            },
        }
    }
}

/// `next_group_blocking` for a writer task on the async runtime.
pub async fn next_group<T>(
    rx: &mut mpsc::Receiver<Queued<T>>,
    max_jobs: usize,
) -> Option<Vec<Queued<T>>> {
    let first = rx.recv().await?;
    Some(group_after(first, rx, max_jobs))
}

/// `first` and whatever else is already waiting, up to `max_jobs`: a group never waits for
/// more work, so a lone request is committed at once.
fn group_after<T>(
    first: Queued<T>,
    rx: &mut mpsc::Receiver<Queued<T>>,
    max_jobs: usize,
) -> Vec<Queued<T>> {
    let mut group = vec![first];
    while group.len() < max_jobs {
        match rx.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_and_bytes() {
        let (q, mut rx) = WriteQueue::<u32>::new(2, 100);
        assert_eq!(q.try_submit(1, 10), Ok(()));
        assert_eq!(q.try_submit(2, 10), Ok(()));
        assert_eq!(q.try_submit(3, 10), Err(QueueFull::Full));
        let Waited::Group(group) = next_group_blocking(&mut rx, 10, None) else {
            panic!("expected the two jobs");
        };
        assert_eq!(group.iter().map(|j| j.job).collect::<Vec<_>>(), [1, 2]);
        drop(group);
        assert_eq!(q.try_submit(4, 90), Ok(()));
        assert_eq!(q.try_submit(5, 20), Err(QueueFull::Full), "bytes bound");
        drop(rx);
        assert_eq!(q.try_submit(6, 1), Err(QueueFull::Closed));
    }

    #[test]
    fn a_thread_waits_until_a_job_its_time_limit_or_a_closed_queue() {
        let (q, mut rx) = WriteQueue::<u32>::new(8, 100);
        let short = std::time::Duration::from_millis(20);
        assert!(matches!(
            next_group_blocking(&mut rx, 8, Some(short)),
            Waited::Idle
        ));
        let sender = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                q.try_submit(7, 1).unwrap();
            })
        };
        // A job sent while the writer waits, without a time limit, wakes it.
        match next_group_blocking(&mut rx, 8, None) {
            Waited::Group(group) => {
                assert_eq!(group.iter().map(|j| j.job).collect::<Vec<_>>(), [7])
            }
            _ => panic!("expected the job"),
        }
        sender.join().unwrap();
        drop(q);
        assert!(matches!(
            next_group_blocking(&mut rx, 8, Some(short)),
            Waited::Closed
        ));
    }

    #[test]
    fn oversized_job_passes_when_budget_is_free() {
        let (q, _rx) = WriteQueue::<u32>::new(4, 100);
        assert_eq!(q.try_submit(1, 1000), Ok(()));
        assert_eq!(q.try_submit(2, 1), Err(QueueFull::Full));
    }
}
