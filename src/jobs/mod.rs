//! Background jobs that run inside `annals serve` on a schedule (no separate worker process).

pub mod retention;

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Runs `job` every `period` (the first run at once) until the handle is aborted: the shape of
/// every in-memory recorder's flusher.
pub fn every<F, Fut>(period: Duration, mut job: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            job().await;
        }
    })
}
