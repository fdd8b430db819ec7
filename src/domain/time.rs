//! `Timestamp`: an instant in UTC with microsecond precision.
//!
//! Stored as microseconds since the Unix epoch (an `i64`) so both stores compare and index it as a
//! plain integer; rendered as RFC 3339 in UTC (`Z`), with only as many fractional digits as needed.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The clock read straight as microseconds (every request takes one for its audit record):
    /// `chrono::Utc::now()` would build a calendar date and take it apart again.
    pub fn now() -> Self {
        use std::time::{SystemTime, UNIX_EPOCH};
        Self(match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => since.as_micros() as i64,
            Err(before) => -(before.duration().as_micros() as i64),
        })
    }

    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This instant moved by whole days (negative: into the past).
    /// This instant `by` later (saturating).
    pub fn plus(self, by: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(by.as_micros()).unwrap_or(i64::MAX)),
        )
    }

    pub fn plus_days(self, days: i64) -> Self {
        Self(self.0.saturating_add(days.saturating_mul(86_400_000_000)))
    }

    /// The first instant RFC 3339 can write in UTC: 0000-01-01T00:00:00Z.
    const FIRST_MICROS: i64 = -62_167_219_200_000_000;
    /// The last: 9999-12-31T23:59:59.999999Z.
    const LAST_MICROS: i64 = 253_402_300_800_000_000 - 1;

    /// A parsed instant, if its UTC form has a four-digit year. An offset or a leap second can
    /// carry a time written within 0000–9999 out of it (`9999-12-31T23:59:59-01:00` is in the
    /// year 10000 in UTC), and such an instant would be rendered as `+10000-…`, which no RFC
    /// 3339 reader takes, nor this server's own `from`/`to`.
    fn within_years(micros: i64, text: &str) -> Result<Self, String> {
        if (Self::FIRST_MICROS..=Self::LAST_MICROS).contains(&micros) {
            Ok(Self(micros))
        } else {
            Err(format!(
                "'{}' falls outside the years 0000 to 9999 once in UTC, which RFC 3339 can't write",
                truncate_for_message(text)
            ))
        }
    }

    /// Parses an RFC 3339 / ISO 8601 date-time that carries its offset (`Z` or `±hh:mm`).
    /// A time without an offset is refused: it would mean a different instant on every server.
    /// So is one whose UTC form leaves the years 0000–9999 (`within_years`).
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        Self::rfc3339(text).unwrap_or_else(|| {
            Err(format!(
                "'{}' is not an RFC 3339 date-time with an offset, e.g. 2026-11-21T10:00:00Z",
                truncate_for_message(text)
            ))
        })
    }

    /// `None` if `text` is not RFC 3339 with an offset; else the instant, or why its year is
    /// refused (a reason callers that try other forms next must not lose).
    fn rfc3339(text: &str) -> Option<Result<Self, String>> {
        let parsed = DateTime::parse_from_rfc3339(text).ok()?;
        Some(Self::within_years(
            parsed.with_timezone(&Utc).timestamp_micros(),
            text,
        ))
    }

    /// Parses an ISO 8601 date-time as the seed-000 model does: RFC 3339 with an offset, or a
    /// local date-time without one (`2026-11-21T10:00:00`, `T` or space), which is taken as UTC.
    pub fn parse_iso8601(text: &str) -> Result<Self, String> {
        if let Some(parsed) = Self::rfc3339(text) {
            return parsed;
        }
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(local) = chrono::NaiveDateTime::parse_from_str(text, format) {
                return Self::within_years(local.and_utc().timestamp_micros(), text);
            }
        }
        Err(format!(
            "'{}' is not an ISO 8601 date-time, e.g. 2026-11-21T10:00:00Z",
            truncate_for_message(text)
        ))
    }

    /// Parses a query bound: an RFC 3339 date-time, or a plain date (`2026-11-21`, midnight UTC).
    pub fn parse_bound(text: &str) -> Result<Self, String> {
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
            return Self::within_years(midnight.and_utc().timestamp_micros(), text);
        }
        Self::parse_rfc3339(text)
    }

    pub fn to_rfc3339(self) -> String {
        match DateTime::<Utc>::from_timestamp_micros(self.0) {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            None => String::from("invalid-time"),
        }
    }
}

/// Shortens user input quoted back in an error message so a huge value can't bloat the response.
pub fn truncate_for_message(text: &str) -> String {
    const MAX: usize = 64;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_agrees_with_chrono() {
        let before = Utc::now().timestamp_micros();
        let now = Timestamp::now().as_micros();
        let after = Utc::now().timestamp_micros();
        assert!(
            (before..=after).contains(&now),
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn round_trips_with_offsets_and_fractions() {
        let t = Timestamp::parse_rfc3339("2026-11-21T11:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00Z");
        let t = Timestamp::parse_rfc3339("2026-11-21T10:00:00.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00.123456Z");
    }

    #[test]
    fn only_instants_with_a_four_digit_utc_year_are_taken() {
        for (text, utc) in [
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"),
            ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
            ("9999-12-31T23:59:59+01:00", "9999-12-31T22:59:59Z"),
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),
        ] {
            assert_eq!(Timestamp::parse_rfc3339(text).unwrap().to_rfc3339(), utc);
        }
        for text in [
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:60Z",
            "0000-01-01T00:00:00+01:00",
        ] {
            let refused = Timestamp::parse_rfc3339(text).unwrap_err();
            assert!(
                refused.contains("outside the years 0000 to 9999"),
                "{refused}"
            );
        }
        assert!(Timestamp::parse_iso8601("9999-12-31T23:59:60").is_err());
        let refused = Timestamp::parse_iso8601("9999-12-31T23:59:59-01:00").unwrap_err();
        assert!(refused.contains("outside the years"), "{refused}");
        assert!(Timestamp::parse_iso8601("9999-12-31T23:59:59").is_ok());
        assert!(Timestamp::parse_bound("9999-12-31T23:59:59-01:00").is_err());
        for date in ["+10000-01-01", "-0001-12-31"] {
            let refused = Timestamp::parse_bound(date).unwrap_err();
            assert!(refused.contains("outside the years"), "{date}: {refused}");
        }
        assert!(Timestamp::parse_bound("0000-01-01").is_ok());
    }

    #[test]
    fn refuses_times_without_offset_and_garbage() {
        assert!(Timestamp::parse_rfc3339("2026-11-21T10:00:00").is_err());
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn iso8601_takes_local_times_as_utc() {
        let t = Timestamp::parse_iso8601("2026-11-21T10:00:00.5").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00.500Z");
        let t = Timestamp::parse_iso8601("2026-11-21 10:00:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00Z");
        assert!(Timestamp::parse_iso8601("2026-11-21T25:00:00").is_err());
        assert!(Timestamp::parse_iso8601("noon").is_err());
    }

    #[test]
    fn bounds_accept_plain_dates() {
        let t = Timestamp::parse_bound("2026-11-21").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T00:00:00Z");
    }
}
