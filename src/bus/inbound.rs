//! Verifying inbound webhooks: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) and Stripe (`Stripe-Signature: t=…,v1=…`), each within a five-minute
//! window of the signed timestamp so a captured request can't be replayed later.

use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use sha2::Sha256;

/// How far a signed timestamp may be from now, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a webhook was not accepted, said for the sender's operator.
pub type Refusal = String;

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, Refusal> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the {name} header is missing"))
}

fn fresh(timestamp: &str, now: i64) -> Result<i64, Refusal> {
    let t: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| String::from("the signed timestamp is not a number of seconds"))?;
    if (now - t).abs() > TOLERANCE_SECS {
        return Err(format!(
            "the signed timestamp is more than {TOLERANCE_SECS} s from the server's clock"
        ));
    }
    Ok(t)
}

/// A Standard Webhooks request: its `webhook-id` when the signature is good.
pub fn standard_webhooks(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<String, Refusal> {
    let id = header(headers, "webhook-id")?;
    let timestamp = fresh(header(headers, "webhook-timestamp")?, now)?;
    let signature = header(headers, "webhook-signature")?;
    if super::signing::verify(secret, id, timestamp, body, signature) {
        Ok(id.to_string())
    } else {
        Err(String::from("no webhook-signature matches the body"))
    }
}

/// A Stripe request (`Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`); the HMAC is keyed by the
/// secret's text as Stripe gives it.
pub fn stripe(secret: &str, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), Refusal> {
    let value = header(headers, "stripe-signature")?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", s)) => signatures.push(s),
            _ => {}
        }
    }
    let t = timestamp.ok_or_else(|| String::from("Stripe-Signature has no t="))?;
    fresh(t, now)?;
    for signature in signatures {
        let Ok(given) = hex::decode(signature) else {
            continue;
        };
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(String::from(
        "no v1 signature in Stripe-Signature matches the body",
    ))
}

/// The `Stripe-Signature` value Stripe would send for `body` at `t` (for tests and tools).
pub fn stripe_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn stripe_signatures_are_checked_and_must_be_fresh() {
        let secret = "whsec_test_secret_value";
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let now = 1_700_000_000;
        let good = headers(&[("stripe-signature", stripe_signature(secret, now - 10, body))]);
        assert!(stripe(secret, &good, body, now).is_ok());
        assert!(stripe("whsec_other_secret", &good, body, now).is_err());
        assert!(stripe(secret, &good, b"{}", now).is_err());
        assert!(
            stripe(secret, &good, body, now + 1000)
                .unwrap_err()
                .contains("clock")
        );
        assert!(
            stripe(secret, &HeaderMap::new(), body, now)
                .unwrap_err()
                .contains("missing")
        );
    }

    #[test]
    fn standard_webhooks_are_checked_and_must_be_fresh() {
        let secret = crate::domain::bus::new_secret();
        let body = b"{}";
        let now = 1_700_000_000;
        let signature = super::super::signing::sign(&[&secret], "msg_1", now, body);
        let good = headers(&[
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", signature),
        ]);
        assert_eq!(
            standard_webhooks(&secret, &good, body, now + 5).unwrap(),
            "msg_1"
        );
        assert!(standard_webhooks(&secret, &good, b"[]", now).is_err());
        assert!(standard_webhooks(&secret, &good, body, now + 301).is_err());
    }
}
