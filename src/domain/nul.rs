//! The NUL character (U+0000) in what a client sends.
//!
//! PostgreSQL stores no NUL in `text` and no `\u0000` in `jsonb`, so an event, a key name or a
//! security report holding one failed inside the store (a 500 or a 503). Annals refuses it at the
//! edge instead, on both stores alike, with a 422 that names where it was: every JSON body once
//! parsed (`api::extract::parse_json`), every query string (`api::query_params::parse_pairs`:
//! a filter can't look for it either), and every event once more before it is queued
//! (`NewEvent::nul_field`), for bodies that are not JSON (binary CloudEvents).

use std::sync::LazyLock;

use memchr::memmem;
use serde_json::Value;

/// The message for a field that holds U+0000.
pub const NUL_MESSAGE: &str = "must not contain the NUL character (U+0000)";

/// Whether JSON text holds a `\u0000` escape, the only way JSON spells U+0000. Cheap enough
/// for every body: one SIMD search, and a look back at the backslashes before a match (an even
/// run means the backslash is itself escaped, as in `"\\u0000"`). The searcher is built once:
/// building one per body cost more than the search.
pub fn json_has_nul(json: &[u8]) -> bool {
    static ESCAPE: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(br"\u0000"));
    ESCAPE.find_iter(json).any(|at| {
        let backslashes = json[..=at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        backslashes % 2 == 1
    })
}

/// `text` fit for an error's `field`: each U+0000 written as JSON writes it, `\u0000`.
pub fn shown(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

/// The path of the first key or string in `value` that holds U+0000: object keys joined with
/// `.`, array positions as numbers (`events.3.data.note`).
pub fn nul_path(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut Vec<String>) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                path.push(i.to_string());
                let found = walk(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(key, item)| {
                path.push(shown(key));
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = Vec::new();
    walk(value, &mut path).then(|| path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_an_unescaped_escape_is_a_nul() {
        assert!(json_has_nul(br#"{"a":"x\u0000y"}"#));
        assert!(json_has_nul(br#"{"a":"\\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"\\\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a":"u0000 \u0001"}"#));
    }

    #[test]
    fn the_path_names_the_key_or_string() {
        assert_eq!(nul_path(&json!({"a": 1, "b": "ok"})), None);
        assert_eq!(
            nul_path(&json!({"events": [{"user_id": "u"}, {"data": {"note": "a\u{0}b"}}]})),
            Some(String::from("events.1.data.note"))
        );
        assert_eq!(
            nul_path(&json!({"data": {"k\u{0}": 1}})),
            Some(String::from("data.k\\u0000"))
        );
        assert_eq!(nul_path(&json!("\u{0}")), Some(String::new()));
    }
}
