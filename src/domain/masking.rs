//! Masking before storage (DESIGN.md, `ANNALS_MASK_FIELDS`, `ANNALS_ANONYMIZE_IP`): values under
//! sensitive key names become `"***"` at any depth of `data` and `headers` (inside arrays too),
//! and IP addresses can be truncated. Idempotency hashes the request as sent, before masking,
//! so a retried masked event is still a duplicate.

use std::net::IpAddr;

use serde_json::Value;

pub const MASKED: &str = "***";
pub const DEFAULT_MASK_FIELDS: &str = "password,secret,token,authorization,api_key,card_number";

#[derive(Clone, Debug, Default)]
pub struct MaskPolicy {
    /// Lower-case key names whose values are replaced (a handful: a scan that compares lengths
    /// first beats hashing every key of every event).
    fields: Vec<String>,
    anonymize_ip: bool,
}

impl MaskPolicy {
    /// `fields` is a comma-separated list, matched case-insensitively.
    pub fn new(fields: &str, anonymize_ip: bool) -> Self {
        Self {
            fields: {
                let mut names: Vec<String> = fields
                    .split(',')
                    .map(|f| f.trim().to_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect();
                names.sort();
                names.dedup();
                names
            },
            anonymize_ip,
        }
    }

    /// Replaces every value whose key is a masked name, at any depth.
    pub fn mask(&self, value: &mut Value) {
        if self.fields.is_empty() {
            return;
        }
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if self.is_masked(key) {
                        *inner = Value::String(String::from(MASKED));
                    } else {
                        self.mask(inner);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.mask(item)),
            _ => {}
        }
    }

    /// Is `key` a masked name? It runs on every key of every ingested event, so an ASCII key is
    /// compared in place; only other keys are lower-cased (Unicode rules) first.
    fn is_masked(&self, key: &str) -> bool {
        if key.is_ascii() {
            self.fields
                .iter()
                .any(|f| f.len() == key.len() && f.eq_ignore_ascii_case(key))
        } else {
            let lower = key.to_lowercase();
            self.fields.contains(&lower)
        }
    }

    /// Zeroes the last IPv4 octet or the last 80 IPv6 bits when anonymization is on.
    pub fn ip(&self, ip: IpAddr) -> IpAddr {
        if !self.anonymize_ip {
            return ip;
        }
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::from([a, b, c, 0])
            }
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[6..].fill(0);
                IpAddr::from(octets)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_at_any_depth_and_inside_arrays_case_insensitively() {
        let policy = MaskPolicy::new(DEFAULT_MASK_FIELDS, false);
        let mut v = json!({"user": {"Password": "p", "name": "n"}, "cards": [{"card_number": "4111"}, {"ok": 1}], "TOKEN": {"nested": 1}});
        policy.mask(&mut v);
        assert_eq!(
            v,
            json!({"user": {"Password": "***", "name": "n"}, "cards": [{"card_number": "***"}, {"ok": 1}], "TOKEN": "***"})
        );
    }

    #[test]
    fn masked_names_match_whole_keys_in_any_case() {
        let policy = MaskPolicy::new(" Token, pässword ,token,,", false);
        for key in [
            "token",
            "TOKEN",
            "ToKeN",
            "PÄSSWORD",
            "Pässword",
            "to\u{212A}en",
        ] {
            assert!(policy.is_masked(key), "{key}");
        }
        for key in ["tokens", "toke", "access_token", "password", "", "tökén"] {
            assert!(!policy.is_masked(key), "{key}");
        }
        assert!(!MaskPolicy::new("", false).is_masked("token"));
    }

    #[test]
    fn anonymizes_ips_only_when_asked() {
        let on = MaskPolicy::new("", true);
        assert_eq!(
            on.ip("203.0.113.77".parse().unwrap()).to_string(),
            "203.0.113.0"
        );
        assert_eq!(
            on.ip("2001:db8:1:2:3:4:5:6".parse().unwrap()).to_string(),
            "2001:db8:1::"
        );
        let off = MaskPolicy::new("", false);
        assert_eq!(
            off.ip("203.0.113.77".parse().unwrap()).to_string(),
            "203.0.113.77"
        );
    }
}
