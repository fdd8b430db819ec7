//! Signed checkpoints: a tree size and its head, signed with the node's Ed25519 key.
//!
//! The signed text (the *note*) is
//! ```text
//! <origin>\n<tree size>\n<tree head, base64>\n<signed at, µs since the Unix epoch>\n
//! ```
//! the first three lines as in the C2SP `tlog-checkpoint` format. A verifier that pins the
//! public key (`key_id` is the first 8 bytes of its SHA-256, in hex) can check a checkpoint
//! without trusting the server, and a consistency proof shows a later checkpoint extends it.
//!
//! The key: `ANNALS_SIGNING_KEY` (32 bytes as hex or base64), else the key file
//! (`ANNALS_SIGNING_KEY_FILE`, by default next to a SQLite store, `<store>.signing-key`, or
//! `./annals.signing-key` on PostgreSQL), made on first start with mode 0600. Nodes sharing a
//! PostgreSQL database should share the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::merkle::Hash;
use crate::domain::Timestamp;

/// A checkpoint as stored and served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
    pub signed_at: Timestamp,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The signed text.
    pub fn note(&self) -> String {
        note(&self.origin, self.tree_size, &self.root, self.signed_at)
    }

    /// Whether the signature is the public key's over the note.
    pub fn signature_holds(&self) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.public_key) else {
            return false;
        };
        key.verify(
            self.note().as_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public_key)
    }

    /// The JSON answer.
    pub fn view(&self) -> CheckpointView {
        CheckpointView {
            origin: self.origin.clone(),
            tree_size: self.tree_size,
            root_hash: hex::encode(self.root),
            signed_at: self.signed_at.to_rfc3339(),
            key_id: self.key_id(),
            public_key: BASE64.encode(self.public_key),
            signature: BASE64.encode(self.signature),
            note: self.note(),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct CheckpointView {
    pub origin: String,
    pub tree_size: u64,
    /// Hex.
    pub root_hash: String,
    pub signed_at: String,
    pub key_id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public_key: String,
    /// Base64 of the 64-byte Ed25519 signature over `note`.
    pub signature: String,
    pub note: String,
}

fn note(origin: &str, size: u64, root: &Hash, at: Timestamp) -> String {
    format!(
        "{origin}\n{size}\n{}\n{}\n",
        BASE64.encode(root),
        at.as_micros()
    )
}

/// A public key given as text: 32 bytes in base64 (as checkpoints show it) or hex, and a valid
/// Ed25519 point.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = BASE64
        .decode(text)
        .ok()
        .filter(|b| b.len() == 32)
        .or_else(|| hex::decode(text).ok())
        .ok_or_else(|| String::from("must be 32 bytes in base64 or hex"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| String::from("must be 32 bytes in base64 or hex"))?;
    VerifyingKey::from_bytes(&key).map_err(|_| String::from("is not an Ed25519 public key"))?;
    Ok(key)
}

/// The first 8 bytes of the key's SHA-256, in hex.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// The node's signing key and the log's name.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    origin: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &key_id(&self.public_key()))
            .field("origin", &self.origin)
            .finish()
    }
}

impl Signer {
    pub fn from_seed(seed: [u8; 32], origin: impl Into<String>) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
            origin: origin.into(),
        }
    }

    /// The key from `ANNALS_SIGNING_KEY`'s text (32 bytes, hex or base64).
    pub fn from_text(text: &str, origin: impl Into<String>) -> anyhow::Result<Self> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .or_else(|| BASE64.decode(text).ok())
            .context("ANNALS_SIGNING_KEY must be 32 bytes in hex or base64")?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("ANNALS_SIGNING_KEY must be 32 bytes in hex or base64"))?;
        Ok(Self::from_seed(seed, origin))
    }

    /// The key in `path`, made there (mode 0600, never over an existing file) if there is none.
    pub fn from_file(path: &Path, origin: impl Into<String>) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_text(&text, origin)
                .with_context(|| format!("signing key file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                if let Err(e) = write_new_key(path, &seed) {
                    // Another process made it first: use theirs.
                    if path.exists() {
                        return Self::from_file(path, origin);
                    }
                    return Err(e);
                }
                tracing::info!(path = %path.display(), key_id = %key_id(&SigningKey::from_bytes(&seed).verifying_key().to_bytes()), "made a checkpoint signing key");
                Ok(Self::from_seed(seed, origin))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs the tree head of `tree_size` leaves, now.
    pub fn sign(&self, tree_size: u64, root: Hash) -> Checkpoint {
        let signed_at = Timestamp::now();
        let text = note(&self.origin, tree_size, &root, signed_at);
        Checkpoint {
            origin: self.origin.clone(),
            tree_size,
            root,
            signed_at,
            public_key: self.public_key(),
            signature: self.key.sign(text.as_bytes()).to_bytes(),
        }
    }
}

fn write_new_key(path: &Path, seed: &[u8; 32]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("making the signing key file {}", path.display()))?;
    file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Where the key file is by default: beside a SQLite store, or in the working directory.
pub fn default_key_file(sqlite_path: Option<&Path>) -> PathBuf {
    match sqlite_path {
        Some(store) => {
            let mut name = store.as_os_str().to_owned();
            name.push(".signing-key");
            PathBuf::from(name)
        }
        None => PathBuf::from("annals.signing-key"),
    }
}

/// Checks the log's name is usable before anything starts.
pub fn check_origin(origin: &str) -> anyhow::Result<()> {
    if origin.is_empty() || origin.len() > 200 || origin.chars().any(char::is_control) {
        bail!("ANNALS_LOG_ORIGIN must be 1 to 200 characters without control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_verifies_and_a_changed_one_does_not() {
        let signer = Signer::from_seed([7; 32], "annals.test");
        let cp = signer.sign(42, [9; 32]);
        assert!(cp.signature_holds());
        assert!(cp.note().starts_with("annals.test\n42\n"));
        let mut bent = cp.clone();
        bent.tree_size = 43;
        assert!(!bent.signature_holds());
        let mut bent = cp.clone();
        bent.root[0] ^= 1;
        assert!(!bent.signature_holds());
        let mut bent = cp;
        bent.public_key = Signer::from_seed([8; 32], "x").public_key();
        assert!(!bent.signature_holds());
    }

    #[test]
    fn public_keys_parse_from_base64_or_hex_and_nothing_else() {
        let key = Signer::from_seed([5; 32], "o").public_key();
        assert_eq!(parse_public_key(&BASE64.encode(key)), Ok(key));
        assert_eq!(parse_public_key(&hex::encode(key)), Ok(key));
        assert!(parse_public_key("short").is_err());
        assert!(parse_public_key(&BASE64.encode([1u8; 31])).is_err());
        assert!(parse_public_key("").is_err());
    }

    #[test]
    fn the_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let first = Signer::from_file(&path, "o").unwrap();
        let again = Signer::from_file(&path, "o").unwrap();
        assert_eq!(first.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(Signer::from_file(&path, "o").is_err());
        let text = hex::encode([3u8; 32]);
        assert_eq!(
            Signer::from_text(&text, "o").unwrap().public_key(),
            Signer::from_text(&BASE64.encode([3u8; 32]), "o")
                .unwrap()
                .public_key()
        );
    }
}
