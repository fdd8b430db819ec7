//! API-key records and scopes: what a key is allowed to do and for which client.
//!
//! The secret itself never appears here: a record holds only the SHA-256 of it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::names::ClientId;
use super::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "events:write")]
    EventsWrite,
    #[serde(rename = "events:read")]
    EventsRead,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::EventsWrite, Scope::EventsRead, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::EventsRead => "events:read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!("unknown scope '{text}'; scopes are events:write, events:read, admin")
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A set of scopes, stored as a comma-separated list.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn new(mut scopes: Vec<Scope>) -> Self {
        scopes.sort();
        scopes.dedup();
        Self(scopes)
    }

    /// Parses `events:write,events:read` (commas and/or spaces).
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let scopes = text
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(String::from("at least one scope is required"));
        }
        Ok(Self::new(scopes))
    }

    /// `admin` holds every other scope.
    pub fn allows(&self, scope: Scope) -> bool {
        self.0.contains(&Scope::Admin) || self.0.contains(&scope)
    }

    pub fn is_admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    pub fn to_list(&self) -> String {
        self.0
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A stored API key (never the secret).
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// Public identifier, also the lookup prefix inside the key text.
    pub key_id: String,
    pub client_id: ClientId,
    pub name: String,
    pub scopes: Scopes,
    /// Requests per minute; `None` means the server default.
    pub rate_limit: Option<u32>,
    pub is_active: bool,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// SHA-256 of the secret part of the key.
    pub secret_hash: [u8; 32],
}

/// A key as the management API and CLI show it: never the secret or its hash.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyView {
    pub key_id: String,
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<&'static str>,
    /// Requests per minute; `null` means the server default.
    pub rate_limit: Option<u32>,
    pub is_active: bool,
    pub created_at: String,
    pub expires_at: Option<String>,
}

impl KeyRecord {
    pub fn view(&self) -> KeyView {
        KeyView {
            key_id: self.key_id.clone(),
            client_id: self.client_id.as_str().to_string(),
            name: self.name.clone(),
            scopes: self.scopes.iter().map(Scope::as_str).collect(),
            rate_limit: self.rate_limit,
            is_active: self.is_active,
            created_at: self.created_at.to_rfc3339(),
            expires_at: self.expires_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// Changes to a key; `None` leaves a field as it is. `rate_limit: Some(None)` returns the key to
/// the server default, `expires_at: Some(None)` makes it never expire.
#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub scopes: Option<Scopes>,
    pub rate_limit: Option<Option<u32>>,
    pub is_active: Option<bool>,
    pub expires_at: Option<Option<Timestamp>>,
}

/// A key name: 1 to 200 characters, not blank, without control characters. A name is shown
/// in `annals keys list` on an operator's terminal, where a newline would forge a row and an
/// escape sequence would drive the terminal.
pub fn parse_key_name(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 200 {
        return Err(String::from("must be 1 to 200 characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(String::from(
            "must not contain control characters (newlines, tabs, escapes)",
        ));
    }
    Ok(trimmed.to_string())
}

/// What a rate limit out of range (or not whole) is told.
pub const RATE_LIMIT_RANGE: &str =
    "must be a whole number between 1 and 1000000 requests per minute";

/// Requests per minute a key may make: 1 to 1 000 000.
pub fn parse_rate_limit(value: u64) -> Result<u32, String> {
    if (1..=1_000_000).contains(&value) {
        Ok(value as u32)
    } else {
        Err(String::from(RATE_LIMIT_RANGE))
    }
}

/// Whether a key change may leave no key that can administer the service over HTTP (active,
/// unexpired, with `admin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastAdmin {
    /// Refuse such a change: the HTTP API, when the server has no static `ANNALS_API_KEY` to
    /// fall back on (an admin disabling or deleting the last admin key would lock out every
    /// administrator).
    Keep,
    /// Allow it: the CLI, run by the operator on the host, is itself the way back.
    MayGo,
}

/// Which keys a management command acts on (seed 002: `--client-id` acts on all of a client's).
#[derive(Clone, Debug)]
pub enum KeySelector {
    KeyId(String),
    Client(ClientId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert_eq!(parse_key_name("  deploy bot ").as_deref(), Ok("deploy bot"));
        assert!(parse_key_name("   ").is_err());
        assert!(parse_key_name(&"n".repeat(201)).is_err());
        for bad in ["a\nb", "a\tb", "\u{1b}[2Jwiped", "a\u{7f}", "a\u{85}b"] {
            let e = parse_key_name(bad).unwrap_err();
            assert!(e.contains("control characters"), "{bad:?}: {e}");
        }
        assert!(parse_key_name("Zoë's key — prod").is_ok());
    }

    #[test]
    fn scope_lists() {
        let s = Scopes::parse_list("events:read, events:write,events:read").unwrap();
        assert_eq!(s.to_list(), "events:write,events:read");
        assert!(s.allows(Scope::EventsRead));
        assert!(!s.allows(Scope::Admin));
        assert!(
            Scopes::parse_list("admin")
                .unwrap()
                .allows(Scope::EventsWrite)
        );
        assert!(Scopes::parse_list("root").is_err());
        assert!(Scopes::parse_list(" , ").is_err());
    }
}
