//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, keyed by the base64 bytes after a secret's
//! `whsec_`; several signatures (during a secret rotation) are separated by spaces.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header's value for `body`, one `v1,` entry per secret.
pub fn sign(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| format!("v1,{}", STANDARD.encode(mac(secret, id, timestamp, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `header` holds a valid `v1` signature of `body` under `secret` (compared in constant
/// time). For inbound webhooks and for tests.
pub fn verify(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let key = secret_bytes(secret);
    header.split(' ').any(|entry| {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        feed(&mut mac, id, timestamp, body);
        mac.verify_slice(&given).is_ok()
    })
}

fn secret_bytes(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

fn feed(mac: &mut Hmac<Sha256>, id: &str, timestamp: i64, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
}

fn mac(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&secret_bytes(secret)).expect("HMAC takes any key length");
    feed(&mut mac, id, timestamp, body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example in the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&[secret], id, 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify(secret, id, 1614265330, body, &signature));
        assert!(!verify(secret, id, 1614265331, body, &signature));
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (a, b) = ("whsec_AAAAAAAA", "whsec_BBBBBBBB");
        let header = sign(&[a, b], "msg_1", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(a, "msg_1", 1, b"{}", &header));
        assert!(verify(b, "msg_1", 1, b"{}", &header));
        assert!(!verify("whsec_CCCCCCCC", "msg_1", 1, b"{}", &header));
    }
}
