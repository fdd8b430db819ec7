//! A single pass over raw JSON bytes that measures nesting depth before anything is parsed, so a
//! deeply nested body is refused with a clear message instead of exhausting the parser's stack.

/// Default maximum nesting of objects and arrays in a request body.
pub const MAX_JSON_DEPTH: usize = 64;

/// Returns the deepest nesting level in `bytes`, stopping early once `limit` is exceeded.
/// Brackets inside strings (including escaped quotes) are ignored. Malformed JSON is not
/// detected here; the parser reports it.
pub fn depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nesting_outside_strings_only() {
        assert!(!depth_exceeds(br#"{"a":{"b":[1,2]}}"#, 3));
        assert!(depth_exceeds(br#"{"a":{"b":[1,2]}}"#, 2));
        assert!(!depth_exceeds(br#"{"a":"[[[[[[\"{{{{"}"#, 1));
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert!(depth_exceeds(deep.as_bytes(), MAX_JSON_DEPTH));
    }
}
