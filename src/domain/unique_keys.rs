//! JSON parsed with unique object keys.
//!
//! JSON lets an object name a key twice (RFC 8259 only says the names *should* be unique), and
//! parsers disagree on what that means: `serde_json` keeps the last value, many others the
//! first. An audit trail can't take `{"event_type": "a.b.created", "event_type": "a.b.deleted"}`
//! and store one of the two in silence: what a client's own checks saw and what Annals recorded
//! would differ. So every JSON document a client sends is parsed here, and a repeated key is
//! refused with its path.
//!
//! Invariants:
//! - The result is exactly what `serde_json::from_slice::<Value>` gives for a document without
//!   repeated keys (same numbers, same strings, same key order); the check costs one map lookup
//!   per key, which the insert does anyway.
//! - The path is worked out only on the way out of a refused document, so an accepted one pays
//!   nothing for it.
//! - Numbers keep their exact text (serde_json's `arbitrary_precision`): an audit trail stores
//!   `12345678901234567890123` or `0.10000000000000000555` as sent, not as the nearest `f64`.
//!   serde_json hands such a number to a visitor as a one-entry map under `NUMBER_TOKEN`; a
//!   client object with that very key becomes the number it names, as in serde_json's own
//!   `Value` (harmless: the client could have sent the number).

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use super::nul;

/// The key under which serde_json (with `arbitrary_precision`) passes a number's text to a
/// visitor, as the one entry of a map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// What a client is told of a repeated key, next to its path.
pub const DUPLICATE_KEY_MESSAGE: &str = "is given more than once in one object; send each key once (readers disagree on which value counts)";

/// Why a document was not taken.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON (or too deep for the parser): `serde_json`'s own error, with line and column.
    Syntax(serde_json::Error),
    /// An object names a key twice: the key's path, object keys joined with `.` and array
    /// positions as numbers (`events.3.data.note`).
    DuplicateKey { path: String },
}

/// Parses `bytes` as one JSON document whose objects each name a key at most once.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    let trail = Trail::default();
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict(&trail)
        .deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if trail.duplicate.get() => {
            let mut path = trail.path.take();
            path.reverse();
            Err(JsonError::DuplicateKey {
                path: path.join("."),
            })
        }
        Err(e) => Err(JsonError::Syntax(e)),
    }
}

/// What a refused document leaves behind: whether a key was repeated, and its path, innermost
/// segment first (each enclosing value adds its own as the error passes through it).
#[derive(Default)]
struct Trail {
    duplicate: Cell<bool>,
    path: RefCell<Vec<String>>,
}

impl Trail {
    /// Adds the segment the error is passing through, if the error is a repeated key.
    fn passing(&self, segment: impl FnOnce() -> String) {
        if self.duplicate.get() {
            self.path.borrow_mut().push(segment());
        }
    }
}

/// The visitor (and seed) that builds a `Value` like `serde_json`'s own, refusing repeated keys.
#[derive(Clone, Copy)]
struct Strict<'t>(&'t Trail);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.0.passing(|| items.len().to_string());
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.is_empty() && key == NUMBER_TOKEN {
                return number(&access.next_value::<String>()?).map_err(de::Error::custom);
            }
            match map.entry(key) {
                Entry::Occupied(entry) => {
                    self.0.duplicate.set(true);
                    self.0.passing(|| nul::shown(entry.key()));
                    return Err(de::Error::custom("a key is repeated"));
                }
                Entry::Vacant(entry) => match access.next_value_seed(self) {
                    Ok(value) => {
                        entry.insert(value);
                    }
                    Err(e) => {
                        self.0.passing(|| nul::shown(entry.key()));
                        return Err(e);
                    }
                },
            }
        }
        Ok(Value::Object(map))
    }
}

/// The longest number text taken: far more digits than any integer type or decimal a client
/// sends, and well inside PostgreSQL's `numeric` (which an unbounded one could overflow).
const MAX_NUMBER_CHARS: usize = 100;

/// A number as sent, if it is one a reader can take: at most `MAX_NUMBER_CHARS` long and
/// within the range of an `f64`, neither overflowing (`1e400`, which the parser refused before
/// it kept the text) nor vanishing (`1e-400`). PostgreSQL writes `jsonb` numbers out in full,
/// so `1e100000` or `1e-100000` would come back as a 100 001-digit number, or not be stored.
fn number(text: &str) -> Result<Value, String> {
    let mantissa = text.split(['e', 'E']).next().unwrap_or_default();
    let is_zero = !mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
    let in_range = text
        .parse::<f64>()
        .is_ok_and(|v| v.is_finite() && (v != 0.0 || is_zero));
    if text.len() > MAX_NUMBER_CHARS || !in_range {
        return Err(format!(
            "number out of range (at most {MAX_NUMBER_CHARS} characters, magnitude 1e-307 to \
             1.7e308, or 0)"
        ));
    }
    text.parse::<Number>()
        .map(Value::Number)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn duplicate_path(text: &str) -> Option<String> {
        match from_slice(text.as_bytes()) {
            Err(JsonError::DuplicateKey { path }) => Some(path),
            Err(JsonError::Syntax(e)) => panic!("{text}: {e}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn a_repeated_key_is_named_by_its_path() {
        assert_eq!(
            duplicate_path(r#"{"event_type": "a.b.created", "event_type": "a.b.deleted"}"#),
            Some(String::from("event_type"))
        );
        assert_eq!(
            duplicate_path(r#"{"events": [{"a": 1}, {"data": {"x": {"n": 1, "n": 1}}}]}"#),
            Some(String::from("events.1.data.x.n"))
        );
        assert_eq!(
            duplicate_path(r#"[[1], [{"k\u0000": 1, "k\u0000": 2}]]"#),
            Some(String::from("1.0.k\\u0000"))
        );
        // The same key in different objects, or differently escaped text, is no repetition.
        assert_eq!(
            duplicate_path(r#"{"a": {"a": 1}, "b": [{"a": 1}, {"a": 2}]}"#),
            None
        );
        assert_eq!(
            duplicate_path(r#"{"\u0061": 1, "b": 2}"#),
            None,
            "one a, one b"
        );
        assert_eq!(
            duplicate_path(r#"{"\u0061": 1, "a": 2}"#),
            Some(String::from("a")),
            "an escape spells the same key"
        );
    }

    #[test]
    fn what_is_not_json_is_a_syntax_error() {
        let long = format!("[0.{}]", "1".repeat(MAX_NUMBER_CHARS));
        for text in [
            "",
            "{",
            r#"{"a": 1} x"#,
            r#"{"a": 1,}"#,
            "[1e400]",
            "[1e-400]",
            "[-1e100000]",
            &long,
            "nul",
        ] {
            assert!(
                matches!(from_slice(text.as_bytes()), Err(JsonError::Syntax(_))),
                "{text}"
            );
        }
        let inside = from_slice(br#"{"a": {"b": [1, tru]}}"#);
        assert!(matches!(inside, Err(JsonError::Syntax(_))), "{inside:?}");
    }

    #[test]
    fn numbers_keep_the_text_they_were_sent_in() {
        for text in [
            "12345678901234567890123",
            "-9223372036854775809",
            "0.1000000000000000055511151231257827",
            "-0",
            "1.0",
            "1.5e+308",
            "0.0e-999",
            "2.5e-300",
        ] {
            let value = from_slice(format!(r#"{{"n": {text}}}"#).as_bytes()).unwrap();
            assert_eq!(value["n"].to_string(), text);
        }
        // An exponent is written the one way serde_json writes it, with the same value.
        assert_eq!(from_slice(b"[1E2]").unwrap()[0].to_string(), "1e+2");
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|n| json!(n)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn documents_without_repeated_keys_parse_as_serde_json_parses_them(value in any_json()) {
            let text = serde_json::to_vec(&value).unwrap();
            let expected: Value = serde_json::from_slice(&text).unwrap();
            let parsed = from_slice(&text).unwrap();
            prop_assert_eq!(&parsed, &expected);
            prop_assert_eq!(serde_json::to_vec(&parsed).unwrap(), serde_json::to_vec(&expected).unwrap());
        }
    }
}
