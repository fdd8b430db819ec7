//! Identifier newtypes that validate on construction: `ClientId` and `EventType`.

use std::fmt;

/// Characters allowed in event types and topic-pattern literals. ASCII only, so that a literal
/// prefix plus `0x7f` is an exclusive upper bound for range scans on the type index.
pub fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

/// The tenant an event, key or log row belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_owned(text.to_string())
    }

    /// `parse` of a string the caller no longer needs: kept as it is, not copied.
    pub fn parse_owned(text: String) -> Result<Self, String> {
        // The characters first: they are ASCII, so the length in bytes is then the length in
        // characters that the message speaks of.
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'))
        {
            return Err(String::from(
                "may contain only ASCII letters, digits and . _ - : @",
            ));
        }
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters long", Self::MAX_LEN));
        }
        Ok(Self(text))
    }

    /// The service's own client (`SYSTEM_CLIENT`): system security events are its events. No
    /// key can name it (`parse` refuses its `$`), so only admins read them or subscribe to them.
    pub fn system() -> Self {
        Self(String::from(super::security::SYSTEM_CLIENT))
    }

    /// A client id read back from a store or asked for by a reader: `parse`, or the system
    /// client.
    pub fn parse_stored(text: String) -> Result<Self, String> {
        if text == super::security::SYSTEM_CLIENT {
            Ok(Self(text))
        } else {
            Self::parse_owned(text)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: a width or alignment asked for (`{:<20}`) is honoured.
        f.pad(&self.0)
    }
}

/// The name of what happened, e.g. `billing.invoice.paid` (seed 003) or `user_action` (seed 002).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub const MAX_LEN: usize = 255;

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_owned(text.to_string())
    }

    /// `parse` of a string the caller no longer needs: kept as it is, not copied.
    pub fn parse_owned(text: String) -> Result<Self, String> {
        if !text.chars().all(is_type_char) {
            return Err(String::from(
                "may contain only ASCII letters, digits and . _ - : / (no spaces or wildcards)",
            ));
        }
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters long", Self::MAX_LEN));
        }
        if text.starts_with('.') || text.ends_with('.') || text.contains("..") {
            return Err(String::from("dot-separated segments must not be empty"));
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types() {
        for ok in ["billing.invoice.paid", "user_action", "a", "ns:thing/x-y"] {
            assert!(EventType::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "has space",
            "billing.*",
            "é",
            &"x".repeat(256),
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad}");
        }
        // 255 characters, but not ASCII ones: the characters are what is wrong.
        let refused = EventType::parse(&"é".repeat(255)).unwrap_err();
        assert!(refused.contains("ASCII letters"), "{refused}");
    }

    #[test]
    fn client_ids() {
        assert!(ClientId::parse("my-client").is_ok());
        assert!(ClientId::parse("").is_err());
        assert!(ClientId::parse("a b").is_err());
        assert!(ClientId::parse(&"c".repeat(129)).is_err());
        let refused = ClientId::parse(&"é".repeat(100)).unwrap_err();
        assert!(refused.contains("ASCII letters"), "{refused}");
    }
}
