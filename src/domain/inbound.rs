//! Inbound webhook integrations (seed 004's `WEBHOOK_RECEIVED`): a third party's webhooks to
//! `POST /v1/inbound/{name}` are verified as the integration says, then recorded as events of
//! its client.
//!
//! Invariants: an integration always has a way to verify (`Verification`); the HMAC kinds always
//! have a secret.

use serde_json::{Map, Value, json};

use super::envelope::{FieldError, json_kind};
use super::names::{ClientId, EventType};
use super::time::Timestamp;

/// How an inbound webhook proves it comes from the integration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (Standard Webhooks), keyed by a
    /// `whsec_` secret.
    StandardWebhooks,
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, keyed by the secret's text.
    Stripe,
    /// An Annals API key of the integration's client with `events:write`.
    ApiKey,
}

impl Verification {
    pub const ALL: [Self; 3] = [Self::StandardWebhooks, Self::Stripe, Self::ApiKey];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => "standard_webhooks",
            Self::Stripe => "stripe",
            Self::ApiKey => "api_key",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| String::from("must be standard_webhooks, stripe or api_key"))
    }
}

#[derive(Clone, Debug)]
pub struct Integration {
    pub name: String,
    pub client_id: String,
    pub verification: Verification,
    pub secret: Option<String>,
    /// The type its webhooks are recorded as.
    pub event_type: String,
    pub created_at: Timestamp,
}

impl Integration {
    /// Its JSON form; the secret only when `with_secret` (on creation).
    pub fn view(&self, with_secret: bool) -> Value {
        let mut view = json!({
            "name": self.name,
            "client_id": self.client_id,
            "verification": self.verification.as_str(),
            "event_type": self.event_type,
            "created_at": self.created_at.to_rfc3339(),
        });
        if with_secret {
            view["secret"] = json!(self.secret);
        }
        view
    }

    /// Parses `POST /v1/integrations`. A Standard Webhooks integration without a `secret` gets a
    /// new one; Stripe's comes from Stripe and is required; an API-key one has none.
    pub fn parse(map: &Map<String, Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let (mut name, mut client, mut verification, mut secret, mut event_type) =
            (None, None, None, None, None);
        for (field, value) in map {
            let text = || {
                value
                    .as_str()
                    .ok_or_else(|| format!("must be a string, not {}", json_kind(value)))
            };
            let result: Result<(), String> = match field.as_str() {
                "name" => text().and_then(parse_name).map(|n| name = Some(n)),
                "client_id" => text()
                    .and_then(ClientId::parse)
                    .map(|c| client = Some(c.as_str().to_string())),
                "verification" => text()
                    .and_then(Verification::parse)
                    .map(|v| verification = Some(v)),
                "secret" => text().and_then(|s| {
                    if s.len() < 16
                        || s.len() > 256
                        || s.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        Err(String::from("must be 16 to 256 characters without spaces"))
                    } else {
                        secret = Some(s.to_string());
                        Ok(())
                    }
                }),
                "event_type" => text()
                    .and_then(EventType::parse)
                    .map(|t| event_type = Some(t.as_str().to_string())),
                _ => Err(String::from(
                    "unknown field; allowed: name, client_id, verification, secret, event_type",
                )),
            };
            if let Err(message) = result {
                errors.push(FieldError::new(field.clone(), message));
            }
        }
        for (missing, present) in [
            ("name", name.is_some()),
            ("client_id", client.is_some()),
            ("verification", verification.is_some()),
        ] {
            if !present && !errors.iter().any(|e| e.field == missing) {
                errors.push(FieldError::new(missing, "is required"));
            }
        }
        match (verification, &secret) {
            (Some(Verification::Stripe), None) if !errors.iter().any(|e| e.field == "secret") => {
                errors.push(FieldError::new(
                    "secret",
                    "is required: the endpoint's signing secret from Stripe (whsec_…)",
                ))
            }
            (Some(Verification::ApiKey), Some(_)) => errors.push(FieldError::new(
                "secret",
                "an api_key integration is verified by an Annals key, not a secret",
            )),
            (Some(Verification::StandardWebhooks), Some(s)) if !valid_whsec(s) => {
                errors.push(FieldError::new(
                    "secret",
                    "must be a Standard Webhooks secret: whsec_ and base64",
                ))
            }
            _ => {}
        }
        let (Some(name), Some(client_id), Some(verification), true) =
            (name, client, verification, errors.is_empty())
        else {
            return Err(errors);
        };
        let secret = match verification {
            Verification::StandardWebhooks => Some(secret.unwrap_or_else(super::bus::new_secret)),
            _ => secret,
        };
        let event_type =
            event_type.unwrap_or_else(|| format!("inbound.{}.received", name.to_ascii_lowercase()));
        Ok(Self {
            name,
            client_id,
            verification,
            secret,
            event_type,
            created_at: Timestamp::now(),
        })
    }
}

fn valid_whsec(secret: &str) -> bool {
    use base64::Engine;
    secret.strip_prefix("whsec_").is_some_and(|b| {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .is_ok_and(|k| !k.is_empty())
    })
}

/// An integration name: 1 to 100 ASCII letters, digits, `_` or `-` (`STRIPE`, `EMAIL_PROVIDER`).
pub fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 100
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(String::from(
            "must be 1 to 100 ASCII letters, digits, _ or -",
        ));
    }
    Ok(text.to_string())
}
