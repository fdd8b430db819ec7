//! The event-type policy (`ANNALS_EVENT_TYPE_POLICY`, seed 003's convention
//! `<service>.<resource>.<verb_past_tense>`).
//!
//! `open` (the default) accepts any valid type and reports a type that breaks the convention
//! as a warning (the API sends it in a `Warning` header); `convention` refuses such a type.
//! The convention: at least three dot-separated segments, each lower-case letters, digits and
//! `_` starting with a letter; the last one (or its last `_` word) a past-tense verb — ending
//! in `ed`, or one of `IRREGULAR_PAST` (`paid`, `sent`, `built`, …).
//!
//! Seed-000 ApiEvents are exempt: their types are the seed's fixed REQUEST/RESPONSE/ERROR.

/// Irregular past participles accepted as the last segment (English verbs whose past
/// participle does not end in `ed`, plus their common prefixed forms). Sorted: it is
/// binary-searched for every ingested event.
pub const IRREGULAR_PAST: &[&str] = &[
    "arisen",
    "awoken",
    "beaten",
    "become",
    "been",
    "begun",
    "bent",
    "bet",
    "bid",
    "bitten",
    "bled",
    "blown",
    "bought",
    "bound",
    "broadcast",
    "broken",
    "brought",
    "built",
    "burnt",
    "burst",
    "cast",
    "caught",
    "chosen",
    "clung",
    "come",
    "cost",
    "crept",
    "cut",
    "dealt",
    "done",
    "drawn",
    "dreamt",
    "driven",
    "drunk",
    "dug",
    "dwelt",
    "eaten",
    "fallen",
    "fed",
    "felt",
    "fled",
    "flown",
    "forbidden",
    "forecast",
    "forgiven",
    "forgotten",
    "fought",
    "found",
    "frozen",
    "given",
    "gone",
    "got",
    "gotten",
    "ground",
    "grown",
    "had",
    "heard",
    "held",
    "hidden",
    "hit",
    "hung",
    "hurt",
    "kept",
    "knelt",
    "known",
    "laid",
    "lain",
    "learnt",
    "led",
    "left",
    "lent",
    "let",
    "lit",
    "lost",
    "made",
    "meant",
    "met",
    "mislaid",
    "misread",
    "mistaken",
    "overcome",
    "overdrawn",
    "overpaid",
    "overridden",
    "overrun",
    "overseen",
    "overtaken",
    "overthrown",
    "overwritten",
    "paid",
    "prepaid",
    "proven",
    "put",
    "quit",
    "read",
    "rebuilt",
    "recast",
    "redone",
    "remade",
    "repaid",
    "reread",
    "rerun",
    "resent",
    "reset",
    "retaken",
    "rewound",
    "rewritten",
    "rid",
    "ridden",
    "risen",
    "run",
    "rung",
    "said",
    "sat",
    "seen",
    "sent",
    "set",
    "sewn",
    "shaken",
    "shed",
    "shone",
    "shot",
    "shown",
    "shrunk",
    "shut",
    "slain",
    "slept",
    "slid",
    "sold",
    "sought",
    "sown",
    "spent",
    "spilt",
    "split",
    "spoken",
    "spread",
    "sprung",
    "spun",
    "stolen",
    "stood",
    "struck",
    "stuck",
    "stung",
    "sung",
    "sunk",
    "swept",
    "swollen",
    "sworn",
    "swum",
    "swung",
    "taken",
    "taught",
    "thought",
    "thrown",
    "told",
    "torn",
    "unbound",
    "undergone",
    "understood",
    "undertaken",
    "undone",
    "unset",
    "unwound",
    "upheld",
    "upset",
    "withdrawn",
    "withheld",
    "woken",
    "won",
    "worn",
    "wound",
    "woven",
    "written",
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventTypePolicy {
    /// Any valid type; a convention break is only a warning.
    #[default]
    Open,
    /// A type must follow the convention.
    Convention,
}

/// What the policy says about one event type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Accepted, with this warning for the client.
    Warned(String),
    /// Refused, for this reason.
    Refused(String),
}

impl EventTypePolicy {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(Self::Open),
            "convention" => Ok(Self::Convention),
            other => Err(format!(
                "unknown event type policy '{other}': use open or convention"
            )),
        }
    }

    pub fn judge(self, event_type: &str) -> Verdict {
        match (convention_problem(event_type), self) {
            (None, _) => Verdict::Accepted,
            (Some(problem), Self::Open) => Verdict::Warned(format!(
                "event_type '{event_type}' does not follow <service>.<resource>.<verb_past_tense>: {problem}"
            )),
            (Some(problem), Self::Convention) => Verdict::Refused(format!(
                "must follow <service>.<resource>.<verb_past_tense> (ANNALS_EVENT_TYPE_POLICY=convention): {problem}"
            )),
        }
    }
}

/// Why `event_type` breaks the convention, or `None` when it follows it.
/// Runs on every ingested event, so it reads the name once and allocates only to explain a
/// problem. The problems are reported in this order: too few segments, then the first malformed
/// segment, then a last segment that is not a past-tense verb.
pub fn convention_problem(event_type: &str) -> Option<String> {
    // Byte by byte: a well-formed name is ASCII, and any other byte fails its segment.
    let bytes = event_type.as_bytes();
    let mut count = 1;
    let mut start = 0; // of the current segment
    let mut malformed = None; // the first malformed segment's range
    for end in 0..=bytes.len() {
        if end < bytes.len() && bytes[end] != b'.' {
            continue;
        }
        let segment = &bytes[start..end];
        let well_formed = segment.first().is_some_and(u8::is_ascii_lowercase)
            && segment
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed && malformed.is_none() {
            malformed = Some(start..end);
        }
        if end < bytes.len() {
            count += 1;
            start = end + 1;
        }
    }
    if count < 3 {
        return Some(format!(
            "it has {count} dot-separated segment(s); at least 3 are needed, e.g. billing.invoice.paid"
        ));
    }
    if let Some(range) = malformed {
        return Some(format!(
            "segment '{}' must be lower-case letters, digits and _, starting with a letter",
            &event_type[range]
        ));
    }
    // Every byte is ASCII here, so `start` is a character boundary.
    let last = &event_type[start..];
    let verb = last.rsplit('_').next().unwrap_or(last);
    if verb.ends_with("ed") || IRREGULAR_PAST.binary_search(&verb).is_ok() {
        None
    } else {
        Some(format!(
            "the last segment '{last}' is not a past-tense verb (ending in -ed, or an irregular one like paid, sent, built)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irregular_verbs_are_sorted_for_binary_search() {
        assert!(IRREGULAR_PAST.is_sorted_by(|a, b| a < b));
    }

    #[test]
    fn the_seed_examples_follow_the_convention() {
        for ok in [
            "iam.user.created",
            "billing.invoice.drafted",
            "billing.invoice.paid",
            "mail.message.sent",
            "ci.image.built",
            "iam.user.password_reset",
            "shop.v2.order.line_item.added",
        ] {
            assert_eq!(convention_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn breaks_are_explained() {
        for (bad, why) in [
            ("user_login", "segment(s)"),
            ("billing.invoice", "segment(s)"),
            ("Billing.invoice.paid", "lower-case"),
            ("billing.invoice.pay", "past-tense"),
            ("billing.invoice.2paid", "lower-case"),
            ("billing..paid", "lower-case"),
            ("ns:billing.invoice.paid", "lower-case"),
            ("billing.invoice.päid", "lower-case"),
            ("billing.invoice.paid.", "lower-case"),
            ("", "1 dot-separated segment(s)"),
            ("a.b", "2 dot-separated segment(s)"),
        ] {
            let problem = convention_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }

    #[test]
    fn explanations_name_the_first_problem_exactly() {
        let segment = |s: &str| {
            format!(
                "segment '{s}' must be lower-case letters, digits and _, starting with a letter"
            )
        };
        for (bad, why) in [
            (
                "a.b",
                String::from(
                    "it has 2 dot-separated segment(s); at least 3 are needed, e.g. billing.invoice.paid",
                ),
            ),
            // Too few segments is reported before a malformed one.
            (
                "Bad",
                String::from(
                    "it has 1 dot-separated segment(s); at least 3 are needed, e.g. billing.invoice.paid",
                ),
            ),
            ("billing.Invoice.Paid", segment("Invoice")),
            ("billing.invoice.päid", segment("päid")),
            ("billing..paid", segment("")),
            (".billing.invoice.paid", segment("")),
            ("billing.invoice.paid.", segment("")),
            ("9lives.cat.landed", segment("9lives")),
            (
                "iam.user.password_reset_request",
                String::from(
                    "the last segment 'password_reset_request' is not a past-tense verb (ending in -ed, or an irregular one like paid, sent, built)",
                ),
            ),
        ] {
            assert_eq!(convention_problem(bad), Some(why), "{bad}");
        }
        assert_eq!(convention_problem("shop.v2.order.line_item.added"), None);
        assert_eq!(convention_problem("iam.user.password_reset"), None);
    }

    #[test]
    fn open_warns_and_convention_refuses() {
        assert_eq!(
            EventTypePolicy::Open.judge("iam.user.created"),
            Verdict::Accepted
        );
        assert!(
            matches!(EventTypePolicy::Open.judge("login"), Verdict::Warned(w) if w.contains("'login'"))
        );
        assert!(matches!(
            EventTypePolicy::Convention.judge("login"),
            Verdict::Refused(_)
        ));
        assert_eq!(
            EventTypePolicy::parse(" Convention ").unwrap(),
            EventTypePolicy::Convention
        );
        assert!(EventTypePolicy::parse("strict").is_err());
    }
}
