//! Background jobs that run inside `annals serve` on a schedule (no separate worker process).

pub mod retention;
