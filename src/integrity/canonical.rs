//! The canonical form of a stored event: the bytes its Merkle leaf hashes.
//!
//! One JSON object, no whitespace, keys in byte order, every stored field present (`null` when
//! absent): `client_id`, `correlation_id`, `data`, `event_id`, `event_type`, `format` (the
//! stored code), `headers`, `id`, `ip_address`, `occurred_at` and `received_at` (microseconds
//! since the Unix epoch), `partition_key`, `seq`, `source`, `status`, `subject`, `user_id`.
//!
//! Invariant: the form depends only on what the event *means*, never on how a store renders it.
//! PostgreSQL's `jsonb` reorders keys, drops whitespace and writes `1e2` as `100`; SQLite keeps
//! the text as sent. So `data` and `headers` are parsed and written again with sorted keys, and
//! each number as its exact decimal value in one spelling (`1.50`, `1.5` and `15e-1` are all
//! `1.5`; `100` and `1e2` are `100`) — never through an `f64`, so a 23-digit id changed in its
//! last digit changes the hash.

use serde_json::Value;

use super::merkle::{Hash, leaf_hash};
use crate::domain::StoredEvent;

/// The event's canonical bytes.
pub fn canonical_event(event: &StoredEvent) -> String {
    let mut out = String::with_capacity(event.data.len() + event.headers.len() + 256);
    out.push('{');
    let text = |out: &mut String, value: Option<&str>| match value {
        Some(v) => write_string(out, v),
        None => out.push_str("null"),
    };
    // Keys in byte order, written out by hand so the order is visible here.
    out.push_str("\"client_id\":");
    write_string(&mut out, &event.client_id);
    out.push_str(",\"correlation_id\":");
    text(&mut out, event.correlation_id.as_deref());
    out.push_str(",\"data\":");
    write_json_text(&mut out, &event.data);
    out.push_str(",\"event_id\":");
    text(&mut out, event.event_id.as_deref());
    out.push_str(",\"event_type\":");
    write_string(&mut out, &event.event_type);
    out.push_str(",\"format\":");
    out.push_str(&event.format.code().to_string());
    out.push_str(",\"headers\":");
    write_json_text(&mut out, &event.headers);
    out.push_str(",\"id\":");
    write_string(&mut out, &event.id.hyphenated().to_string());
    out.push_str(",\"ip_address\":");
    text(&mut out, event.ip_address.as_deref());
    out.push_str(",\"occurred_at\":");
    out.push_str(&event.occurred_at.as_micros().to_string());
    out.push_str(",\"partition_key\":");
    text(&mut out, event.partition_key.as_deref());
    out.push_str(",\"received_at\":");
    out.push_str(&event.received_at.as_micros().to_string());
    out.push_str(",\"seq\":");
    out.push_str(&event.seq.to_string());
    out.push_str(",\"source\":");
    text(&mut out, event.source.as_deref());
    out.push_str(",\"status\":");
    text(&mut out, event.status.as_deref());
    out.push_str(",\"subject\":");
    text(&mut out, event.subject.as_deref());
    out.push_str(",\"user_id\":");
    text(&mut out, event.user_id.as_deref());
    out.push('}');
    out
}

/// The event's Merkle leaf hash, `SHA-256(0x00 ‖ canonical event)`.
pub fn event_leaf(event: &StoredEvent) -> Hash {
    leaf_hash(canonical_event(event).as_bytes())
}

/// Stored JSON text in canonical form; text that is not JSON (which no store writes) is kept as
/// a JSON string, so the hash still covers it.
fn write_json_text(out: &mut String, text: &str) {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => write_value(out, &value),
        Err(_) => write_string(out, text),
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&canonical_number(&n.to_string())),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

/// A JSON number's exact decimal value in one spelling: no leading or trailing zeros, plain
/// digits while the value has at most 100 of them before and 6 zeros after the point, else
/// `<digits>e<exponent>`. Zero is `0`, whatever its sign.
pub fn canonical_number(text: &str) -> String {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = int.chars().chain(frac.chars()).collect();
    let mut exponent = exponent - frac.len() as i64;
    let leading = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..leading);
    if digits.is_empty() {
        return String::from("0");
    }
    while digits.ends_with('0') {
        digits.pop();
        exponent += 1;
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    let len = digits.len() as i64;
    if exponent >= 0 && len + exponent <= 100 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', exponent as usize));
    } else if exponent < 0 && len + exponent > 0 {
        let point = (len + exponent) as usize;
        out.push_str(&digits[..point]);
        out.push('.');
        out.push_str(&digits[point..]);
    } else if exponent < 0 && len + exponent > -6 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-(len + exponent)) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits);
        out.push('e');
        out.push_str(&exponent.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventFormat, Timestamp};

    fn event(data: &str, headers: &str) -> StoredEvent {
        StoredEvent {
            seq: 7,
            id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            client_id: String::from("acme"),
            event_type: String::from("billing.invoice.paid"),
            user_id: Some(String::from("u\"1")),
            data: data.to_owned(),
            event_id: None,
            source: Some(String::from("billing")),
            subject: None,
            occurred_at: Timestamp::from_micros(1_700_000_000_123_456),
            received_at: Timestamp::from_micros(1_700_000_001_000_000),
            correlation_id: None,
            status: None,
            ip_address: None,
            headers: headers.to_owned(),
            partition_key: None,
            format: EventFormat::Annals,
        }
    }

    #[test]
    fn the_form_is_fixed() {
        assert_eq!(
            canonical_event(&event(r#"{"b": 1, "a": [true, null, "x"]}"#, "{}")),
            r#"{"client_id":"acme","correlation_id":null,"data":{"a":[true,null,"x"],"b":1},"event_id":null,"event_type":"billing.invoice.paid","format":0,"headers":{},"id":"01234567-89ab-cdef-0123-456789abcdef","ip_address":null,"occurred_at":1700000000123456,"partition_key":null,"received_at":1700000001000000,"seq":7,"source":"billing","status":null,"subject":null,"user_id":"u\"1"}"#
        );
    }

    #[test]
    fn renderings_of_one_value_hash_alike() {
        let sent = event(
            r#"{"z": {"y": 1.50, "x": 1e2}, "a": "\u00e9", "n": -0, "big": 12345678901234567890123}"#,
            r#"{"X-B": "2", "X-A": "1"}"#,
        );
        // How PostgreSQL's jsonb writes the same values back.
        let jsonb = event(
            r#"{"a": "é", "n": 0, "z": {"x": 100, "y": 1.50}, "big": 12345678901234567890123}"#,
            r#"{"X-A": "1", "X-B": "2"}"#,
        );
        assert_eq!(event_leaf(&sent), event_leaf(&jsonb));
        let changed = event(
            r#"{"a": "é", "n": 0, "z": {"x": 100, "y": 1.50}, "big": 12345678901234567890124}"#,
            r#"{"X-A": "1", "X-B": "2"}"#,
        );
        assert_ne!(event_leaf(&sent), event_leaf(&changed));
        let mut other_time = sent.clone();
        other_time.received_at = Timestamp::from_micros(1);
        assert_ne!(event_leaf(&sent), event_leaf(&other_time));
    }

    #[test]
    fn numbers_have_one_spelling() {
        for (text, canonical) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.000", "0"),
            ("1", "1"),
            ("100", "100"),
            ("1e2", "100"),
            ("1E+2", "100"),
            ("1.50", "1.5"),
            ("15e-1", "1.5"),
            ("-0.0015", "-0.0015"),
            ("0.0000001", "1e-7"),
            ("1e22", "10000000000000000000000"),
            ("1e300", "1e300"),
            ("12345678901234567890123", "12345678901234567890123"),
            ("1.7976931348623157e308", "17976931348623157e292"),
        ] {
            assert_eq!(canonical_number(text), canonical, "{text}");
        }
    }
}
