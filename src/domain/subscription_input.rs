//! A subscription request body (`POST` or `PATCH /v1/subscriptions`) parsed field by field, and
//! the address rule that keeps webhooks off private networks (`forbidden_address`), which the
//! delivery client applies again to every address it connects to.
//!
//! Invariants: every bad field is reported at once, by name; a subscription built or changed
//! here delivers to exactly one of a webhook URL and a callback method.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::bus::{
    DEFAULT_MAX_RETRIES, MAX_CONFIG_BYTES, MAX_NAME_LEN, MAX_RETRIES, MAX_URL_LEN, Subscription,
    new_secret,
};
use super::envelope::{FieldError, json_kind};
use super::time::Timestamp;
use super::topic::TopicPattern;

/// Why an address may not be a webhook's, or `None` when it may. Loopback, private,
/// carrier-grade NAT, link-local (cloud metadata), "this network", multicast, broadcast and
/// documentation ranges, in IPv4 and IPv6 forms (IPv4-mapped and -compatible included).
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
                // IPv4-compatible (::a.b.c.d), deprecated but still routed by some stacks.
                forbidden_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
                forbidden_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation address")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if o[0] == 0 {
        Some("a 'this network' address (0.0.0.0/8)")
    } else if ip.is_private() {
        Some("a private address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a carrier-grade NAT address (100.64.0.0/10)")
    } else if ip.is_link_local() {
        Some("a link-local address (169.254.0.0/16, cloud metadata)")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("a multicast, reserved or broadcast address")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("a documentation or benchmarking address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("an IETF protocol assignment address (192.0.0.0/24)")
    } else {
        None
    }
}

/// Checks a webhook URL: absolute `http` or `https`, a host, no credentials, no fragment, and,
/// unless `allow_private`, no literal address in a forbidden range. Host names are checked
/// when a delivery connects (their addresses may change).
pub fn parse_webhook_url(text: &str, allow_private: bool) -> Result<String, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("is not an absolute URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(String::from("must be an http:// or https:// URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(String::from(
            "must not carry credentials; use the signature headers to authenticate deliveries",
        ));
    }
    if url.fragment().is_some() {
        return Err(String::from("must not have a #fragment"));
    }
    let host = match url.host() {
        Some(host) => host,
        None => return Err(String::from("must name a host")),
    };
    let literal = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            if !allow_private
                && (name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost"))
            {
                return Err(String::from(
                    "must not point at localhost (set ANNALS_WEBHOOK_ALLOW_PRIVATE=true to allow private addresses)",
                ));
            }
            None
        }
    };
    if let Some(ip) = literal
        && !allow_private
        && let Some(why) = forbidden_address(ip)
    {
        return Err(format!(
            "points at {why} ({ip}); webhooks go to public addresses only unless ANNALS_WEBHOOK_ALLOW_PRIVATE=true"
        ));
    }
    Ok(url.to_string())
}

/// A callback method name: letters, digits and `_ . : -`, at most 100 characters.
fn parse_callback(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters long"));
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(String::from(
            "may contain only ASCII letters, digits and _ . : -",
        ));
    }
    Ok(text.to_string())
}

/// The fields a request set; `Some(None)` is a field set to `null`.
#[derive(Debug, Default)]
pub struct SubscriptionInput {
    pub subscriber_name: Option<String>,
    pub topic_pattern: Option<TopicPattern>,
    pub webhook_url: Option<Option<String>>,
    pub callback_method: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub config: Option<Option<String>>,
    pub max_retries: Option<i32>,
    /// Only an admin may set it; the API layer checks that.
    pub client_id: Option<Option<String>>,
}

const FIELDS: &str = "subscriber_name, topic_pattern, webhook_url, callback_method, is_active, subscription_config, max_retries, client_id";

impl SubscriptionInput {
    /// Parses a request body's fields; every bad one is reported.
    pub fn parse(map: &Map<String, Value>, allow_private: bool) -> Result<Self, Vec<FieldError>> {
        let mut input = Self::default();
        let mut errors = Vec::new();
        for (field, value) in map {
            let text = || {
                value
                    .as_str()
                    .ok_or_else(|| format!("must be a string, not {}", json_kind(value)))
            };
            let nullable = |parse: &dyn Fn(&str) -> Result<String, String>| match value {
                Value::Null => Ok(None),
                Value::String(s) => parse(s).map(Some),
                other => Err(format!(
                    "must be a string or null, not {}",
                    json_kind(other)
                )),
            };
            let result: Result<(), String> = match field.as_str() {
                "subscriber_name" => text().and_then(|s| {
                    let s = s.trim();
                    if s.is_empty() || s.chars().count() > MAX_NAME_LEN {
                        Err(format!("must be 1 to {MAX_NAME_LEN} characters long"))
                    } else if s.chars().any(char::is_control) {
                        Err(String::from("must not contain control characters"))
                    } else {
                        input.subscriber_name = Some(s.to_string());
                        Ok(())
                    }
                }),
                "topic_pattern" => text().and_then(|s| {
                    if s.len() > MAX_NAME_LEN {
                        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
                    }
                    TopicPattern::parse(s).map(|p| input.topic_pattern = Some(p))
                }),
                "webhook_url" => nullable(&|s| parse_webhook_url(s, allow_private))
                    .map(|u| input.webhook_url = Some(u)),
                "callback_method" => {
                    nullable(&parse_callback).map(|c| input.callback_method = Some(c))
                }
                "is_active" => value
                    .as_bool()
                    .map(|b| input.is_active = Some(b))
                    .ok_or_else(|| format!("must be true or false, not {}", json_kind(value))),
                "subscription_config" => match value {
                    Value::Null => {
                        input.config = Some(None);
                        Ok(())
                    }
                    Value::Object(_) => {
                        let text = value.to_string();
                        if text.len() > MAX_CONFIG_BYTES {
                            Err(format!("must be at most {} KiB", MAX_CONFIG_BYTES / 1024))
                        } else {
                            input.config = Some(Some(text));
                            Ok(())
                        }
                    }
                    other => Err(format!(
                        "must be a JSON object or null, not {}",
                        json_kind(other)
                    )),
                },
                "max_retries" => match value.as_i64() {
                    Some(n) if (0..=i64::from(MAX_RETRIES)).contains(&n) => {
                        input.max_retries = Some(n as i32);
                        Ok(())
                    }
                    _ => Err(format!("must be a whole number from 0 to {MAX_RETRIES}")),
                },
                "client_id" => match value {
                    Value::Null => {
                        input.client_id = Some(None);
                        Ok(())
                    }
                    Value::String(s) => super::ClientId::parse(s).map(|c| {
                        input.client_id = Some(Some(c.as_str().to_string()));
                    }),
                    other => Err(format!(
                        "must be a string or null, not {}",
                        json_kind(other)
                    )),
                },
                _ => Err(format!("unknown field; allowed: {FIELDS}")),
            };
            if let Err(message) = result {
                errors.push(FieldError::new(field.clone(), message));
            }
        }
        if errors.is_empty() {
            Ok(input)
        } else {
            Err(errors)
        }
    }

    /// A new subscription owned by `owner` (`None`: every client's events).
    pub fn into_new(self, owner: Option<String>) -> Result<Subscription, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.subscriber_name.is_none() {
            errors.push(FieldError::new("subscriber_name", "is required"));
        }
        if self.topic_pattern.is_none() {
            errors.push(FieldError::new("topic_pattern", "is required"));
        }
        let webhook_url = self.webhook_url.flatten();
        let callback_method = self.callback_method.flatten();
        if let Some(e) = one_target(&webhook_url, &callback_method) {
            errors.push(e);
        }
        let (Some(subscriber_name), Some(topic_pattern), true) =
            (self.subscriber_name, self.topic_pattern, errors.is_empty())
        else {
            return Err(errors);
        };
        let now = Timestamp::now();
        Ok(Subscription {
            id: Uuid::now_v7(),
            client_id: owner,
            subscriber_name,
            topic_pattern,
            webhook_url,
            callback_method,
            is_active: self.is_active.unwrap_or(true),
            config: self.config.flatten(),
            max_retries: self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            secret: new_secret(),
            previous_secret: None,
            previous_secret_until: None,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// Applies the fields set to `existing` (the owner is the caller's to change).
    pub fn apply(self, existing: &mut Subscription) -> Result<(), Vec<FieldError>> {
        let mut next = existing.clone();
        if let Some(name) = self.subscriber_name {
            next.subscriber_name = name;
        }
        if let Some(pattern) = self.topic_pattern {
            next.topic_pattern = pattern;
        }
        if let Some(url) = self.webhook_url {
            next.webhook_url = url;
        }
        if let Some(method) = self.callback_method {
            next.callback_method = method;
        }
        if let Some(active) = self.is_active {
            next.is_active = active;
            if active {
                next.disabled_reason = None;
            }
        }
        if let Some(config) = self.config {
            next.config = config;
        }
        if let Some(retries) = self.max_retries {
            next.max_retries = retries;
        }
        if let Some(e) = one_target(&next.webhook_url, &next.callback_method) {
            return Err(vec![e]);
        }
        next.updated_at = Timestamp::now();
        *existing = next;
        Ok(())
    }
}

fn one_target(
    webhook_url: &Option<String>,
    callback_method: &Option<String>,
) -> Option<FieldError> {
    match (webhook_url, callback_method) {
        (Some(_), Some(_)) => Some(FieldError::new(
            "callback_method",
            "a subscription has either a webhook_url or a callback_method, not both",
        )),
        (None, None) => Some(FieldError::new(
            "webhook_url",
            "is required unless callback_method is given",
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<SubscriptionInput, Vec<FieldError>> {
        SubscriptionInput::parse(body.as_object().unwrap(), false)
    }

    #[test]
    fn forbidden_ranges_in_both_families() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "ff02::1",
        ] {
            assert!(
                forbidden_address(ip.parse().unwrap()).is_some(),
                "{ip} must be refused"
            );
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(forbidden_address(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn webhook_urls_are_checked() {
        assert!(parse_webhook_url("https://hooks.example.com/x?y=1", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "/relative",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/",
            "http://0x7f.1/",
            "https://example.com/#frag",
        ] {
            assert!(parse_webhook_url(bad, false).is_err(), "{bad}");
        }
        assert!(parse_webhook_url("http://127.0.0.1:8080/", true).is_ok());
    }

    #[test]
    fn a_new_subscription_needs_a_name_a_pattern_and_one_target() {
        let errors = parse(json!({})).unwrap().into_new(None).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["subscriber_name", "topic_pattern", "webhook_url"]);
        let both = parse(json!({
            "subscriber_name": "n", "topic_pattern": "a.#",
            "webhook_url": "https://example.com/", "callback_method": "m"
        }))
        .unwrap()
        .into_new(None)
        .unwrap_err();
        assert_eq!(both[0].field, "callback_method");
        let ok =
            parse(json!({"subscriber_name": "n", "topic_pattern": "a.#", "callback_method": "m"}))
                .unwrap()
                .into_new(Some("c".into()))
                .unwrap();
        assert!(ok.is_pull() && ok.is_active && ok.max_retries == DEFAULT_MAX_RETRIES);
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = parse(json!({
            "subscriber_name": "", "topic_pattern": "a..b", "webhook_url": 3,
            "is_active": "yes", "subscription_config": [], "max_retries": 99, "extra": 1
        }))
        .unwrap_err();
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "extra",
                "is_active",
                "max_retries",
                "subscriber_name",
                "subscription_config",
                "topic_pattern",
                "webhook_url"
            ]
        );
    }

    #[test]
    fn a_patch_keeps_one_target() {
        let mut s = parse(json!({"subscriber_name": "n", "topic_pattern": "#", "webhook_url": "https://example.com/"}))
            .unwrap()
            .into_new(None)
            .unwrap();
        let to_callback = parse(json!({"webhook_url": null, "callback_method": "m"})).unwrap();
        to_callback.apply(&mut s).unwrap();
        assert!(s.is_pull());
        let neither = parse(json!({"callback_method": null})).unwrap();
        assert!(neither.apply(&mut s).is_err());
        assert_eq!(s.callback_method.as_deref(), Some("m"));
    }
}
