//! API keys: issuing, hashing, verifying, and the management operations the CLI (`annals keys`)
//! and the HTTP admin API share.
//!
//! Key text: `ank_<key_id>_<secret>` — `key_id` is 16 hex digits (public, the lookup prefix),
//! `secret` is 256 random bits in base64url. The store keeps SHA-256(secret) only; a random
//! 256-bit secret needs no slow hash.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Principal;
use crate::domain::access::{KeyPatch, KeyRecord, KeySelector, KeyView, LastAdmin, Scope, Scopes};
use crate::domain::{ClientId, Timestamp};
use crate::error::ApiError;
use crate::store::{Store, StoreError};

const KEY_PREFIX: &str = "ank_";
/// How long a looked-up key record is trusted before it is read again. Changes made through
/// this process, or announced by the store (PostgreSQL: any node), invalidate it at once;
/// changes by another process on SQLite (the CLI) apply within this.
const CACHE_TTL: Duration = Duration::from_secs(1);
const CACHE_MAX_ENTRIES: usize = 10_000;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Splits key text into `(key_id, secret)`.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((id, secret))
}

/// What a new key should be.
#[derive(Clone, Debug)]
pub struct NewKeyRequest {
    pub client_id: ClientId,
    pub name: String,
    pub scopes: Scopes,
    pub rate_limit: Option<u32>,
    pub expires_at: Option<Timestamp>,
}

/// A freshly issued key: `key` is the only time the secret is ever visible.
#[derive(Clone, Debug)]
pub struct IssuedKey {
    pub key: String,
    pub record: KeyRecord,
}

/// A new key as `POST /v1/keys` and `annals keys create --json` show it: the key's view plus,
/// this once, the key itself.
#[derive(serde::Serialize)]
pub struct IssuedKeyView {
    #[serde(flatten)]
    key_view: KeyView,
    key: String,
    message: &'static str,
}

impl IssuedKey {
    pub fn view(&self) -> IssuedKeyView {
        IssuedKeyView {
            key_view: self.record.view(),
            key: self.key.clone(),
            message: "Store the key now: it is not shown again",
        }
    }
}

/// Resolves presented key text to a `Principal`.
pub struct Authenticator {
    store: Arc<dyn Store>,
    static_key_hash: Option<[u8; 32]>,
    /// The principal `ANNALS_API_KEY` acts as.
    static_principal: Principal,
    cache: RwLock<HashMap<String, CacheEntry>>,
}

/// When a key id was looked up, and what was found (`None`: no such key).
type CacheEntry = (Instant, Option<Arc<CachedKey>>);

/// A stored key as the cache holds it, with the principal it authenticates as, built once.
struct CachedKey {
    record: KeyRecord,
    principal: Principal,
}

/// How presented key text is answered: already known, or after reading its key id.
enum Answer<'k> {
    Known(Result<Principal, ApiError>),
    Lookup { key_id: &'k str, secret: &'k str },
}

fn invalid_key() -> ApiError {
    ApiError::unauthorized("the API key is not valid")
}

/// Checks `secret` against the key found for its id (`None`: no such key).
fn verify(found: Option<&CachedKey>, secret: &str) -> Result<Principal, ApiError> {
    let found = found.ok_or_else(invalid_key)?;
    let record = &found.record;
    if !bool::from(sha256(secret.as_bytes()).ct_eq(&record.secret_hash)) {
        return Err(invalid_key());
    }
    if !record.is_active {
        return Err(ApiError::unauthorized("the API key is disabled"));
    }
    if record.expires_at.is_some_and(|t| t <= Timestamp::now()) {
        return Err(ApiError::unauthorized("the API key has expired"));
    }
    Ok(found.principal.clone())
}

impl Authenticator {
    /// `static_key` is `ANNALS_API_KEY`: an admin key for `static_client`.
    pub fn new(
        store: Arc<dyn Store>,
        static_key: Option<&str>,
        static_client: ClientId,
        static_rate_limit: Option<u32>,
    ) -> Self {
        Self {
            store,
            static_key_hash: static_key.map(|k| sha256(k.as_bytes())),
            static_principal: Principal::new(
                None,
                String::from("ANNALS_API_KEY"),
                static_client,
                Scopes::new(Scope::ALL.to_vec()),
                static_rate_limit,
            ),
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub async fn authenticate(&self, presented: Option<&str>) -> Result<Principal, ApiError> {
        match self.answer_now(presented) {
            Answer::Known(result) => result,
            Answer::Lookup { key_id, secret } => {
                verify(self.load(key_id).await?.as_deref(), secret)
            }
        }
    }

    /// As `authenticate` when the answer needs no store read (the static key, a cached key,
    /// malformed text); `None` when the key must be looked up first.
    pub fn authenticate_now(&self, presented: Option<&str>) -> Option<Result<Principal, ApiError>> {
        match self.answer_now(presented) {
            Answer::Known(result) => Some(result),
            Answer::Lookup { .. } => None,
        }
    }

    fn answer_now<'k>(&self, presented: Option<&'k str>) -> Answer<'k> {
        let Some(presented) = presented.filter(|k| !k.is_empty()) else {
            return Answer::Known(Err(ApiError::unauthorized(
                "an API key is required: send it as X-API-Key or Authorization: Bearer",
            )));
        };
        if let Some(expected) = &self.static_key_hash
            && bool::from(sha256(presented.as_bytes()).ct_eq(expected))
        {
            return Answer::Known(Ok(self.static_principal.clone()));
        }
        let Some((key_id, secret)) = split_key(presented) else {
            return Answer::Known(Err(invalid_key()));
        };
        match self.cache.read().expect("key cache lock").get(key_id) {
            Some((at, cached)) if at.elapsed() < CACHE_TTL => {
                Answer::Known(verify(cached.as_deref(), secret))
            }
            _ => Answer::Lookup { key_id, secret },
        }
    }

    /// Reads a key from the store into the cache.
    async fn load(&self, key_id: &str) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let record = self
            .store
            .find_key(key_id.to_string())
            .await
            .map_err(ApiError::from_store)?
            .map(|record| {
                let principal = Principal::new(
                    Some(record.key_id.clone()),
                    record.name.clone(),
                    record.client_id.clone(),
                    record.scopes.clone(),
                    record.rate_limit,
                );
                Arc::new(CachedKey { record, principal })
            });
        let mut cache = self.cache.write().expect("key cache lock");
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(key_id.to_string(), (Instant::now(), record.clone()));
        Ok(record)
    }

    /// Clears the cache whenever the store reports a key change (on PostgreSQL: made on any
    /// node), so a disabled, deleted or edited key stops working everywhere at once.
    pub fn watch_key_changes(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let mut changes = self.store.key_changes();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            // A lagged receiver missed some changes: clearing the cache covers them too.
            while let Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) =
                changes.recv().await
            {
                match this.upgrade() {
                    Some(auth) => auth.invalidate(),
                    None => break,
                }
            }
        })
    }

    /// Forgets cached records so a change made in this process applies to the next request.
    pub fn invalidate(&self) {
        self.cache.write().expect("key cache lock").clear();
    }
}

/// A new key: random id and secret, the record that holds the secret's hash, and the text
/// shown once.
fn issue(request: NewKeyRequest) -> IssuedKey {
    let key_id = hex::encode(random_bytes::<8>());
    let secret = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
    let record = KeyRecord {
        key_id: key_id.clone(),
        client_id: request.client_id,
        name: request.name,
        scopes: request.scopes,
        rate_limit: request.rate_limit,
        is_active: true,
        created_at: Timestamp::now(),
        expires_at: request.expires_at,
        secret_hash: sha256(secret.as_bytes()),
    };
    IssuedKey {
        key: format!("{KEY_PREFIX}{key_id}_{secret}"),
        record,
    }
}

/// Key management shared by `annals keys …` and the admin HTTP API.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    authenticator: Option<Arc<Authenticator>>,
}

impl KeyService {
    pub fn new(store: Arc<dyn Store>, authenticator: Option<Arc<Authenticator>>) -> Self {
        Self {
            store,
            authenticator,
        }
    }

    pub async fn create(&self, request: NewKeyRequest) -> Result<IssuedKey, StoreError> {
        let issued = issue(request);
        self.store.insert_key(issued.record.clone()).await?;
        Ok(issued)
    }

    pub async fn list(&self, client: Option<ClientId>) -> Result<Vec<KeyRecord>, StoreError> {
        self.store.list_keys(client).await
    }

    pub async fn delete(
        &self,
        selector: KeySelector,
        last_admin: LastAdmin,
    ) -> Result<Vec<String>, StoreError> {
        let deleted = self.store.delete_keys(selector, last_admin).await?;
        self.invalidate();
        Ok(deleted)
    }

    pub async fn toggle(&self, selector: KeySelector) -> Result<Vec<KeyRecord>, StoreError> {
        let toggled = self.store.toggle_keys(selector).await?;
        self.invalidate();
        Ok(toggled)
    }

    pub async fn update(
        &self,
        key_id: String,
        patch: KeyPatch,
        last_admin: LastAdmin,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let updated = self.store.update_key(key_id, patch, last_admin).await?;
        self.invalidate();
        Ok(updated)
    }

    /// What the HTTP API's key changes may do to the last admin key: with a static
    /// `ANNALS_API_KEY` there is always a way back in, so anything; without one, an admin
    /// must not lock every administrator out.
    pub fn last_admin_over_http(&self) -> LastAdmin {
        match &self.authenticator {
            Some(a) if a.static_key_hash.is_some() => LastAdmin::MayGo,
            _ => LastAdmin::Keep,
        }
    }

    fn invalidate(&self) {
        if let Some(a) = &self.authenticator {
            a.invalidate();
        }
    }

    /// On an empty store with no static key, issues the first admin key (DESIGN.md
    /// "Configuration"). Returns it so the caller can print it once. Starts that race (nodes
    /// of a new PostgreSQL database) make one key between them: the store inserts it only into
    /// an empty key table, atomically.
    pub async fn bootstrap_admin(
        &self,
        client: &ClientId,
    ) -> Result<Option<IssuedKey>, StoreError> {
        let issued = issue(NewKeyRequest {
            client_id: client.clone(),
            name: String::from("initial admin key"),
            scopes: Scopes::new(Scope::ALL.to_vec()),
            rate_limit: None,
            expires_at: None,
        });
        let inserted = self.store.insert_first_key(issued.record.clone()).await?;
        Ok(inserted.then_some(issued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_splits_only_when_well_formed() {
        assert_eq!(
            split_key("ank_0123456789abcdef_se_cr-et"),
            Some(("0123456789abcdef", "se_cr-et"))
        );
        assert_eq!(split_key("ank_0123_secret"), None);
        assert_eq!(split_key("ank_0123456789abcdeg_secret"), None);
        assert_eq!(split_key("0123456789abcdef_secret"), None);
        assert_eq!(split_key("ank_0123456789abcdef_"), None);
    }

    #[tokio::test]
    async fn only_a_key_not_yet_cached_needs_the_store() {
        let (_dir, store) = crate::store::sqlite::scratch_store();
        let static_key = "static-key-0123456789abcdef";
        let auth = Arc::new(Authenticator::new(
            store.clone(),
            Some(static_key),
            ClientId::parse("default").unwrap(),
            None,
        ));
        let keys = KeyService::new(store.clone(), Some(auth.clone()));
        let issued = keys
            .create(NewKeyRequest {
                client_id: ClientId::parse("c1").unwrap(),
                name: String::from("k"),
                scopes: Scopes::parse_list("events:write").unwrap(),
                rate_limit: None,
                expires_at: None,
            })
            .await
            .unwrap();
        let unauthorized = |answer: Option<Result<Principal, ApiError>>| matches!(answer, Some(Err(e)) if e.status == axum::http::StatusCode::UNAUTHORIZED);
        // Answered at once: the static key, no key, malformed text.
        assert!(matches!(
            auth.authenticate_now(Some(static_key)),
            Some(Ok(_))
        ));
        assert!(unauthorized(auth.authenticate_now(None)));
        assert!(unauthorized(auth.authenticate_now(Some("ank_nonsense"))));
        // An issued key is read from the store once, then answered from the cache.
        assert!(auth.authenticate_now(Some(&issued.key)).is_none());
        let principal = auth.authenticate(Some(&issued.key)).await.unwrap();
        assert_eq!(principal.client_id.as_str(), "c1");
        let cached = auth.authenticate_now(Some(&issued.key));
        assert!(matches!(cached, Some(Ok(p)) if p.client_id.as_str() == "c1"));
        // The cached record still checks the secret.
        let wrong = format!("ank_{}_wrong-secret", issued.record.key_id);
        assert!(unauthorized(auth.authenticate_now(Some(&wrong))));
        // An unknown key id is remembered as unknown, so a flood of them reads the store once.
        let unknown = "ank_0123456789abcdef_secret";
        assert!(auth.authenticate_now(Some(unknown)).is_none());
        assert!(auth.authenticate(Some(unknown)).await.is_err());
        assert!(unauthorized(auth.authenticate_now(Some(unknown))));
        store.shutdown().await;
    }
}
