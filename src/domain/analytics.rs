//! Analytics types: the rollups the writers keep and the latency histogram ingest feeds.
//!
//! Invariants:
//! - Event counts are kept per minute and per hour of an event's `occurred_at` (its `timestamp`,
//!   or when it was received if it had none), by client, type and source, as the same rows the
//!   writers add in the events' own transaction: a rollup never counts an event that was not
//!   committed, nor misses one that was. Buckets are Unix seconds, floored (also before 1970).
//! - `EventCounts` emits its rows sorted, so concurrent writers (PostgreSQL nodes) upsert the same
//!   rows in the same order.
//! - Latencies go into log-linear slots (`latency_slot`): 8 per power of two, so a slot is at
//!   most 12.5% wide and a percentile read from slots is within that of the true value. Slot
//!   counts add up, so histograms merge by summing rows.

use std::collections::BTreeMap;
use std::time::Duration;

use super::bus::DeliveryStatus;
use super::{NewEvent, Timestamp};

pub const MINUTE_SECS: i64 = 60;
pub const HOUR_SECS: i64 = 3600;
pub const DAY_SECS: i64 = 86_400;

/// `secs` floored to a multiple of `width` (also for negative times).
pub fn floor_to(secs: i64, width: i64) -> i64 {
    secs - secs.rem_euclid(width)
}

/// `secs` raised to a multiple of `width`.
pub fn ceil_to(secs: i64, width: i64) -> i64 {
    let floor = floor_to(secs, width);
    if floor == secs { secs } else { floor + width }
}

/// The Unix second an instant falls in (floored).
pub fn unix_secs(at: Timestamp) -> i64 {
    at.as_micros().div_euclid(1_000_000)
}

/// Which rollup table a count is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollup {
    Minute,
    Hour,
}

impl Rollup {
    pub fn width(self) -> i64 {
        match self {
            Self::Minute => MINUTE_SECS,
            Self::Hour => HOUR_SECS,
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            Self::Minute => "event_counts_minute",
            Self::Hour => "event_counts_hour",
        }
    }
}

/// One rollup row's key and the number of events it adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountRow<'a> {
    pub client_id: &'a str,
    /// The bucket's first second.
    pub bucket: i64,
    pub event_type: &'a str,
    /// `""` for events without a source.
    pub source: &'a str,
    pub count: i64,
}

/// A group's events counted per minute and per hour: what a writer adds to the rollups.
#[derive(Default)]
pub struct EventCounts<'a> {
    minutes: BTreeMap<(&'a str, i64, &'a str, &'a str), i64>,
}

impl<'a> EventCounts<'a> {
    pub fn add(
        &mut self,
        client_id: &'a str,
        occurred_at: Timestamp,
        event_type: &'a str,
        source: Option<&'a str>,
    ) {
        let minute = floor_to(unix_secs(occurred_at), MINUTE_SECS);
        *self
            .minutes
            .entry((client_id, minute, event_type, source.unwrap_or("")))
            .or_default() += 1;
    }

    /// Adds `count` events of one minute's bucket (`minute` already floored).
    pub fn add_minute(
        &mut self,
        client_id: &'a str,
        minute: i64,
        event_type: &'a str,
        source: &'a str,
        count: i64,
    ) {
        *self
            .minutes
            .entry((client_id, minute, event_type, source))
            .or_default() += count;
    }

    /// Adds another set of counts to this one.
    pub fn merge(&mut self, other: &EventCounts<'a>) {
        for (&key, &count) in &other.minutes {
            *self.minutes.entry(key).or_default() += count;
        }
    }

    /// Counts a stored event (`received_at` stands in for a missing `occurred_at`, as in the
    /// stored row).
    pub fn add_event(&mut self, event: &'a NewEvent, received_at: Timestamp) {
        self.add(
            event.client_id.as_str(),
            event.occurred_at.unwrap_or(received_at),
            event.event_type.as_str(),
            event.source.as_deref(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// The rows of one rollup, sorted by key.
    pub fn rows(&self, rollup: Rollup) -> Vec<CountRow<'a>> {
        let mut buckets: BTreeMap<(&'a str, i64, &'a str, &'a str), i64> = BTreeMap::new();
        for (&(client_id, minute, event_type, source), &count) in &self.minutes {
            let bucket = floor_to(minute, rollup.width());
            *buckets
                .entry((client_id, bucket, event_type, source))
                .or_default() += count;
        }
        buckets
            .into_iter()
            .map(
                |((client_id, bucket, event_type, source), count)| CountRow {
                    client_id,
                    bucket,
                    event_type,
                    source,
                    count,
                },
            )
            .collect()
    }
}

/// What a count query groups by besides time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    EventType,
    Source,
    Client,
}

impl GroupBy {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "event_type" | "type" => Ok(Self::EventType),
            "source" => Ok(Self::Source),
            "client_id" | "client" => Ok(Self::Client),
            _ => Err(String::from("must be one of event_type, source, client_id")),
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            Self::EventType => "event_type",
            Self::Source => "source",
            Self::Client => "client_id",
        }
    }

    pub fn name(self) -> &'static str {
        self.column()
    }
}

/// A count read from one rollup table: rows with `from <= bucket < to` (seconds, multiples of
/// the table's width), summed per `width`-second period (0: all in one) and per event type,
/// and per `group` when it is not the type.
#[derive(Clone, Debug)]
pub struct CountQuery {
    /// `None` = every client (admin only).
    pub client_id: Option<String>,
    pub rollup: Rollup,
    pub from: i64,
    pub to: i64,
    /// Period the rows are summed over, a multiple of the rollup's width; 0 = the whole range.
    pub width: i64,
    pub source: Option<String>,
    pub group: Option<GroupBy>,
}

/// One summed row of a `CountQuery`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The period's first second (the query's `from` when `width` is 0).
    pub period: i64,
    pub event_type: String,
    /// The `group` column's value, when grouped by something other than the type.
    pub group: Option<String>,
    pub count: i64,
}

/// Most rows a count query may sum into before it is refused as too broad.
pub const MAX_COUNTED_ROWS: usize = 500_000;

/// The slot a latency falls in: values under 8 µs have a slot each; above, each power of two is
/// split in 8.
pub fn latency_slot(latency: Duration) -> u16 {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if us < 8 {
        return us as u16;
    }
    let power = 63 - us.leading_zeros() as u64; // ≥ 3
    let sub = (us >> (power - 3)) & 7;
    ((power - 2) * 8 + sub) as u16
}

/// The smallest latency (µs) in `slot`.
pub fn slot_floor_us(slot: u16) -> u64 {
    let slot = u64::from(slot);
    if slot < 8 {
        return slot;
    }
    let power = slot / 8 + 2;
    let sub = slot % 8;
    (8 + sub) << (power - 3)
}

/// The slot past the last one a `u64` of microseconds can fall in.
pub const LATENCY_SLOTS: u16 = (63 - 2) * 8 + 8;

/// A latency histogram: how many measurements fell in each slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    slots: BTreeMap<u16, u64>,
}

impl Histogram {
    pub fn add(&mut self, slot: u16, count: u64) {
        *self.slots.entry(slot).or_default() += count;
    }

    pub fn count(&self) -> u64 {
        self.slots.values().sum()
    }

    /// The value (µs) below which `quantile` of the measurements fall: the middle of the slot
    /// that holds the measurement of that rank. `None` when empty.
    pub fn quantile_us(&self, quantile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&slot, &count) in &self.slots {
            seen += count;
            if seen >= rank {
                let low = slot_floor_us(slot) as f64;
                let high = if slot + 1 >= LATENCY_SLOTS {
                    low
                } else {
                    slot_floor_us(slot + 1) as f64
                };
                return Some(if slot < 8 { low } else { (low + high) / 2.0 });
            }
        }
        None
    }

    /// The upper end (µs) of the highest slot with a measurement.
    pub fn max_us(&self) -> Option<u64> {
        let (&slot, _) = self.slots.iter().next_back()?;
        Some(if slot + 1 >= LATENCY_SLOTS {
            slot_floor_us(slot)
        } else {
            slot_floor_us(slot + 1)
                .saturating_sub(1)
                .max(slot_floor_us(slot))
        })
    }
}

/// One stored latency row: measurements of `client_id`'s appends in the hour starting at
/// `hour` that fell in `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyRow {
    pub client_id: String,
    pub hour: i64,
    pub slot: u16,
    pub count: i64,
}

/// Deliveries still to go, and those in the dead-letter queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub processing: i64,
    pub failed: i64,
    /// When the oldest delivery still waiting (pending or processing) was queued.
    pub oldest_waiting: Option<Timestamp>,
}

impl DeliveryCounts {
    /// Takes one status's count and its oldest delivery's `created_at`.
    pub fn add(&mut self, status: &str, count: i64, oldest: Option<Timestamp>) {
        let waiting = match DeliveryStatus::parse(status) {
            Ok(DeliveryStatus::Pending) => {
                self.pending += count;
                true
            }
            Ok(DeliveryStatus::Processing) => {
                self.processing += count;
                true
            }
            Ok(DeliveryStatus::Failed) => {
                self.failed += count;
                false
            }
            Ok(DeliveryStatus::Completed) | Err(_) => false,
        };
        if waiting && let Some(at) = oldest {
            self.oldest_waiting = Some(self.oldest_waiting.map_or(at, |o| o.min(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_floor_also_before_1970() {
        assert_eq!(floor_to(119, 60), 60);
        assert_eq!(floor_to(-1, 60), -60);
        assert_eq!(floor_to(-60, 60), -60);
        assert_eq!(ceil_to(61, 60), 120);
        assert_eq!(ceil_to(-61, 60), -60);
        assert_eq!(unix_secs(Timestamp::from_micros(-1)), -1);
    }

    #[test]
    fn counts_add_up_per_minute_and_per_hour_in_key_order() {
        let at = |secs: i64| Timestamp::from_micros(secs * 1_000_000);
        let mut counts = EventCounts::default();
        counts.add("b", at(7200 + 5), "t", None);
        counts.add("a", at(3600 + 61), "x", Some("s"));
        counts.add("a", at(3600 + 1), "x", Some("s"));
        counts.add("a", at(3600 + 2), "x", Some("s"));
        counts.add("a", at(3600 + 3), "y", Some("s"));
        let minutes = counts.rows(Rollup::Minute);
        let keys: Vec<_> = minutes
            .iter()
            .map(|r| (r.client_id, r.bucket, r.event_type, r.count))
            .collect();
        assert_eq!(
            keys,
            [
                ("a", 3600, "x", 2),
                ("a", 3600, "y", 1),
                ("a", 3660, "x", 1),
                ("b", 7200, "t", 1)
            ]
        );
        let hours: Vec<_> = counts
            .rows(Rollup::Hour)
            .iter()
            .map(|r| (r.client_id, r.bucket, r.event_type, r.source, r.count))
            .collect();
        assert_eq!(
            hours,
            [
                ("a", 3600, "x", "s", 3),
                ("a", 3600, "y", "s", 1),
                ("b", 7200, "t", "", 1)
            ]
        );
    }

    #[test]
    fn quantiles_come_from_the_slot_holding_that_rank() {
        let mut h = Histogram::default();
        for us in 1..=100u64 {
            h.add(latency_slot(Duration::from_micros(us * 1000)), 1);
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.13, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.13, "{p99}");
        assert!(h.max_us().unwrap() >= 100_000);
        assert_eq!(Histogram::default().quantile_us(0.5), None);
    }

    proptest! {
        #[test]
        fn a_latency_falls_within_its_slot(us in 0u64..u64::MAX / 2) {
            let slot = latency_slot(Duration::from_micros(us));
            prop_assert!(slot < LATENCY_SLOTS);
            prop_assert!(slot_floor_us(slot) <= us);
            prop_assert!(us < slot_floor_us(slot + 1));
            // At most 12.5% wide.
            if slot >= 8 {
                prop_assert!((slot_floor_us(slot + 1) - slot_floor_us(slot)) * 8 <= slot_floor_us(slot));
            }
        }
    }
}
