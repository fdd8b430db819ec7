//! The HTTP client webhooks go out through, guarded against server-side request forgery.
//!
//! Invariants:
//! - Unless `allow_private`, no request connects to a forbidden address
//!   (`domain::subscription_input::forbidden_address`): host names are resolved by
//!   `GuardedResolver`, which drops forbidden addresses from what the connector may use, so the
//!   check applies to the address actually connected to (a name that resolves to a public
//!   address once and a private one later — DNS rebinding — is checked each time); literal
//!   addresses, which skip resolution, are checked before the request is made.
//! - Redirects are not followed, proxies from the environment are not used, and a response
//!   body is read up to `MAX_RESPONSE_BYTES`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::subscription_input::forbidden_address;

/// Most response bytes read (and kept in the integration log).
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Resolves names with the system resolver and keeps only allowed addresses.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| forbidden_address(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = found
                    .first()
                    .and_then(|a| {
                        forbidden_address(a.ip()).map(|why| format!("{} is {why}", a.ip()))
                    })
                    .unwrap_or_else(|| String::from("no address found"));
                return Err(format!("'{host}' resolves to no allowed address ({why})").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The outgoing client and its address rule.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    allow_private: bool,
}

/// What a receiver answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The first `MAX_RESPONSE_BYTES` of the body, as text.
    pub body: String,
    /// `Retry-After`, if it gave one (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
}

/// Installs `ring` as the process's rustls crypto provider, which every reqwest client (built
/// with `rustls-no-provider`) takes; a second call, or another provider already installed,
/// changes nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl WebhookClient {
    pub fn new(allow_private: bool, timeout: Duration) -> anyhow::Result<Self> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("Annals-Webhooks/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
        })
    }

    /// POSTs `body` to `url` with `headers`; `Err` is a reason the call made no answer.
    pub async fn post(
        &self,
        url: &str,
        headers: reqwest::header::HeaderMap,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
        if !self.allow_private {
            let literal = match parsed.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            };
            if let Some(ip) = literal
                && let Some(why) = forbidden_address(ip)
            {
                return Err(format!("refused: {ip} is {why}"));
            }
        }
        let response = self
            .client
            .post(parsed)
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_capped(response).await;
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

/// A failed call's reason, with its causes (reqwest's own message is only the outermost).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut message = String::from(kind);
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The first `MAX_RESPONSE_BYTES` of a body; the rest is not read.
async fn read_capped(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn parse_retry_after(text: &str) -> Option<Duration> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(text.trim()).ok()?;
    let delay = at.signed_duration_since(chrono::Utc::now());
    Some(delay.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(80) && d <= Duration::from_secs(90));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_before_any_connection() {
        let client = WebhookClient::new(false, Duration::from_secs(2)).unwrap();
        for url in [
            "http://127.0.0.1:9/",
            "http://[::1]:9/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:10.0.0.1]/",
        ] {
            let e = client
                .post(url, Default::default(), b"{}".to_vec())
                .await
                .unwrap_err();
            assert!(e.starts_with("refused"), "{url}: {e}");
        }
        // A name that resolves to loopback is refused by the resolver.
        let e = client
            .post("http://localhost:9/", Default::default(), b"{}".to_vec())
            .await
            .unwrap_err();
        assert!(e.contains("no allowed address"), "{e}");
    }
}
