//! `TopicPattern`: dot-separated event-type patterns where `*` matches exactly one segment and
//! `#` matches zero or more (`billing.invoice.*`, `billing.#`). Used by event queries now and by
//! subscriptions later; this is the only implementation of the matching rule.

use super::names::is_type_char;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    segments: Vec<Segment>,
}

impl TopicPattern {
    pub const MAX_LEN: usize = 255;

    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters long", Self::MAX_LEN));
        }
        let mut segments = Vec::new();
        for part in text.split('.') {
            let segment = match part {
                "*" => Segment::One,
                "#" => Segment::Any,
                "" => return Err(String::from("dot-separated segments must not be empty")),
                literal if literal.chars().all(|c| is_type_char(c) && c != '.') => {
                    Segment::Literal(literal.to_string())
                }
                _ => {
                    return Err(String::from(
                        "a segment is `*`, `#` or ASCII letters, digits and _ - : / (a `#` in a query string is written %23)",
                    ));
                }
            };
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The pattern's text as a `&String`, for APIs that take a reference to a sized value.
    pub fn as_str_ref(&self) -> &String {
        &self.text
    }

    /// True when the pattern has no wildcard, i.e. it matches exactly one type.
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The literal text every matching type starts with (the segments before the first wildcard,
    /// without a trailing dot so `billing.#` still covers `billing` itself). Empty if the pattern
    /// starts with a wildcard. `type_range` bounds it.
    pub fn literal_prefix(&self) -> String {
        let literals: Vec<&str> = self
            .segments
            .iter()
            .map_while(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        literals.join(".")
    }

    /// `[low, high)` in byte order, holding every type the pattern can match: the literal prefix,
    /// and the prefix followed by U+007F, above every character a type may hold. With no prefix
    /// (`low` empty) it holds every type. Stores narrow an index with it before `matches`; it
    /// holds only where text compares by bytes.
    pub fn type_range(&self) -> (String, String) {
        let low = self.literal_prefix();
        let high = format!("{low}\u{7f}");
        (low, high)
    }

    /// A POSIX regular expression equivalent to `matches`, applied to `'.' || event_type` (the
    /// leading dot makes every segment dot-prefixed). For stores that filter in SQL.
    pub fn to_dotted_regex(&self) -> String {
        let mut re = String::from("^");
        for segment in &self.segments {
            match segment {
                // Literals hold only [A-Za-z0-9_:/-], none special in a regex outside brackets.
                Segment::Literal(l) => {
                    re.push_str("\\.");
                    re.push_str(l);
                }
                Segment::One => re.push_str("\\.[^.]+"),
                Segment::Any => re.push_str("(\\.[^.]+)*"),
            }
        }
        re.push('$');
        re
    }

    pub fn matches(&self, event_type: &str) -> bool {
        let parts: Vec<&str> = event_type.split('.').collect();
        matches_from(&self.segments, &parts)
    }
}

fn matches_from(pattern: &[Segment], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((Segment::Any, rest)) => {
            // `#` absorbs 0..=n segments; patterns are short, so trying each split is cheap.
            (0..=parts.len()).any(|skip| matches_from(rest, &parts[skip..]))
        }
        Some((segment, rest)) => match parts.split_first() {
            None => false,
            Some((part, remaining)) => {
                let head_ok = match segment {
                    Segment::One => true,
                    Segment::Literal(l) => l == part,
                    Segment::Any => unreachable!("handled above"),
                };
                head_ok && matches_from(rest, remaining)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        TopicPattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn star_is_exactly_one_segment() {
        assert!(m("billing.invoice.*", "billing.invoice.paid"));
        assert!(!m("billing.invoice.*", "billing.invoice"));
        assert!(!m("billing.invoice.*", "billing.invoice.paid.late"));
        assert!(m("*.user.created", "iam.user.created"));
    }

    #[test]
    fn hash_is_zero_or_more_segments() {
        assert!(m("billing.#", "billing"));
        assert!(m("billing.#", "billing.invoice.paid"));
        assert!(!m("billing.#", "billingx.invoice"));
        assert!(m("#.paid", "billing.invoice.paid"));
        assert!(m("#", "anything.at.all"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(!m("a.#.z", "a.b.c"));
    }

    #[test]
    fn exact_patterns_and_prefixes() {
        let p = TopicPattern::parse("billing.invoice.paid").unwrap();
        assert!(p.is_exact());
        assert!(p.matches("billing.invoice.paid"));
        assert_eq!(
            TopicPattern::parse("billing.invoice.*")
                .unwrap()
                .literal_prefix(),
            "billing.invoice"
        );
        assert_eq!(TopicPattern::parse("#.paid").unwrap().literal_prefix(), "");
    }

    #[test]
    fn dotted_regex_shape() {
        assert_eq!(
            TopicPattern::parse("billing.#").unwrap().to_dotted_regex(),
            r"^\.billing(\.[^.]+)*$"
        );
        assert_eq!(
            TopicPattern::parse("*.user.created")
                .unwrap()
                .to_dotted_regex(),
            r"^\.[^.]+\.user\.created$"
        );
    }

    #[test]
    fn rejects_malformed_patterns() {
        for bad in ["", "a..b", "bill*", "a b", "a.#x"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
