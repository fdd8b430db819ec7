//! Authentication and authorization: API keys (`keys.rs`), and the `Principal` a request acts as.
//!
//! Invariants:
//! - Secrets are never stored or logged; only SHA-256 digests are, and digests are compared in
//!   constant time.
//! - Every handler that reads events passes `Principal::read_scope()` to the store, so a key
//!   without `admin` can only ever see its own client's rows.

pub mod keys;
pub mod rate_limit;

pub use keys::{Authenticator, IssuedKey, KeyService, NewKeyRequest};

use std::sync::Arc;

use crate::domain::ClientId;
use crate::domain::access::{Scope, Scopes};
use crate::error::ApiError;

/// Who is calling: the key's client and scopes. Built once per key and shared (an `Arc`), so
/// handing it to a request, a handler and the audit record copies nothing.
#[derive(Clone, Debug)]
pub struct Principal(Arc<Caller>);

/// What a `Principal` knows about its key.
#[derive(Debug)]
pub struct Caller {
    /// `None` for the static `ANNALS_API_KEY`.
    pub key_id: Option<String>,
    pub key_name: String,
    pub client_id: ClientId,
    pub scopes: Scopes,
    pub rate_limit: Option<u32>,
    /// The key's rate-limit bucket: `key:<key id>`, `key:static` for `ANNALS_API_KEY`.
    pub rate_bucket: String,
}

impl std::ops::Deref for Principal {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

impl Principal {
    pub fn new(
        key_id: Option<String>,
        key_name: String,
        client_id: ClientId,
        scopes: Scopes,
        rate_limit: Option<u32>,
    ) -> Self {
        let rate_bucket = format!("key:{}", key_id.as_deref().unwrap_or("static"));
        Self(Arc::new(Caller {
            key_id,
            key_name,
            client_id,
            scopes,
            rate_limit,
            rate_bucket,
        }))
    }

    /// The key id as security events name it (`static` for `ANNALS_API_KEY`).
    pub fn key_label(&self) -> &str {
        self.key_id.as_deref().unwrap_or("static")
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this API key lacks the '{scope}' scope"
            )))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.scopes.is_admin()
    }

    /// The client filter for reads: admins may name any client (or none: all); everyone else
    /// is held to their own, and naming another client is refused.
    pub fn read_scope(&self, requested: Option<ClientId>) -> Result<Option<ClientId>, ApiError> {
        match (self.is_admin(), requested) {
            (true, requested) => Ok(requested),
            (false, None) => Ok(Some(self.client_id.clone())),
            (false, Some(c)) if c == self.client_id => Ok(Some(c)),
            (false, Some(_)) => Err(ApiError::forbidden(
                "only an admin key may read another client's data",
            )
            .with_field("client_id")),
        }
    }

    /// May this key write an event for `client`?
    pub fn may_write_for(&self, client: &ClientId) -> bool {
        self.is_admin() || *client == self.client_id
    }
}
