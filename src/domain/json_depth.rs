//! A single pass over raw JSON bytes that measures nesting depth before anything is parsed, so a
//! deeply nested body is refused with a clear message instead of exhausting the parser's stack.

/// Default maximum nesting of objects and arrays in a request body.
pub const MAX_JSON_DEPTH: usize = 64;

/// What `depth_exceeds` looks for outside strings (`OTHER`: nothing).
const OTHER: u8 = 0;
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
/// Every byte's class, so the scan skips the bytes between brackets and quotes with one table
/// lookup each (it runs on every request body).
const CLASS: [u8; 256] = {
    let mut class = [OTHER; 256];
    class[b'"' as usize] = QUOTE;
    class[b'{' as usize] = OPEN;
    class[b'[' as usize] = OPEN;
    class[b'}' as usize] = CLOSE;
    class[b']' as usize] = CLOSE;
    class
};

/// Returns whether the nesting of objects and arrays in `bytes` goes deeper than `limit`,
/// stopping as soon as it does. Brackets inside strings (including escaped quotes) are ignored.
/// Malformed JSON is not detected here; the parser reports it.
pub fn depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match CLASS[bytes[i] as usize] {
            OTHER => {}
            QUOTE => {
                // To the closing quote; a backslash escapes the byte after it. Strings are most
                // of a body's bytes, so they are skipped a vector at a time.
                // An unterminated string runs to the end: nothing after it can nest.
                i += 1;
                loop {
                    let rest = bytes.get(i..).unwrap_or_default();
                    let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
                        return false;
                    };
                    i += at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            OPEN => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            _ => depth = depth.saturating_sub(1),
        }
        i += 1;
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

    /// The scan byte by byte, as the definition to compare the vectorised skip with.
    fn depth_exceeds_bytewise(bytes: &[u8], limit: usize) -> bool {
        let (mut depth, mut i) = (0usize, 0);
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > limit {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        false
    }

    proptest::proptest! {
        #[test]
        fn skipping_strings_a_vector_at_a_time_changes_no_answer(
            bytes in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\a ".to_vec()), 0..64),
            limit in 0usize..6,
        ) {
            proptest::prop_assert_eq!(
                depth_exceeds(&bytes, limit),
                depth_exceeds_bytewise(&bytes, limit)
            );
        }
    }

    #[test]
    fn escapes_and_unterminated_strings_do_not_confuse_the_count() {
        // An escaped backslash ends before the quote, which then closes the string.
        assert!(depth_exceeds(br#"{"a":"\\","b":[[1]]}"#, 2));
        assert!(!depth_exceeds(br#"{"a":"\\","b":[[1]]}"#, 3));
        // An escaped quote does not close the string: the brackets after it are text.
        assert!(!depth_exceeds(br#"{"a":"\"[[[[","b":1}"#, 1));
        // A trailing backslash or an unterminated string stops the scan without a panic.
        assert!(!depth_exceeds(br#"{"a":"\"#, 1));
        assert!(!depth_exceeds(br#"{"a":"[[[["#, 1));
        assert!(depth_exceeds(b"[[", 1));
        assert!(!depth_exceeds(b"]]]][", 1));
        assert!(!depth_exceeds(b"", 0));
    }
}
