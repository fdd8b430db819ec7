//! `EventFormat`: the wire format an event arrived in. Every event lives in the one event table
//! in the Annals envelope's columns; the format is kept beside it so the event can be read back
//! in its own shape (an `ApiEvent` as the seed-000 camelCase object, a CloudEvent exactly as it
//! came, including binary data).
//!
//! Invariant: the stored code of each variant never changes (it is a column value).

/// How an event was submitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EventFormat {
    /// The Annals envelope (`POST /v1/events`, `/events`, batches).
    #[default]
    Annals,
    /// A seed-000 `ApiEvent` (`POST /v1/api-events`).
    ApiEvent,
    /// A CloudEvent whose `data` is stored as JSON (a JSON value, or the text of a text event).
    CloudEvent,
    /// A CloudEvent whose `data` was binary: `data` holds its base64 text (`data_base64`).
    CloudEventBase64,
}

impl EventFormat {
    /// The value stored in the `format` column.
    pub fn code(self) -> i16 {
        match self {
            Self::Annals => 0,
            Self::ApiEvent => 1,
            Self::CloudEvent => 2,
            Self::CloudEventBase64 => 3,
        }
    }

    /// Reads a stored code; an unknown code (written by a newer version) reads as the envelope.
    pub fn from_code(code: i64) -> Self {
        match code {
            1 => Self::ApiEvent,
            2 => Self::CloudEvent,
            3 => Self::CloudEventBase64,
            _ => Self::Annals,
        }
    }

    /// The name shown in an event's `format` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Annals => "annals",
            Self::ApiEvent => "api_event",
            Self::CloudEvent | Self::CloudEventBase64 => "cloudevents",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for f in [
            EventFormat::Annals,
            EventFormat::ApiEvent,
            EventFormat::CloudEvent,
            EventFormat::CloudEventBase64,
        ] {
            assert_eq!(EventFormat::from_code(f.code().into()), f);
        }
        assert_eq!(EventFormat::from_code(99), EventFormat::Annals);
    }
}
