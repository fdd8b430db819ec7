//! Request and response bodies in the audit log (`ANNALS_AUDIT_BODIES=true`, seed 002's "full
//! request context"): a tee on the request body that keeps a copy of what the handler reads,
//! and the rendering of a captured body into what is stored.
//!
//! Invariants:
//! - Capturing never changes what the handler sees, and never holds more than `CAPTURE_LIMIT`
//!   bytes per body, whatever its size.
//! - Only JSON is kept, and only after masking (`ANNALS_MASK_FIELDS`), then cut to
//!   `KEEP_LIMIT` bytes: a body that can't be parsed (too large, not JSON) is described by its
//!   size, never stored raw, so a secret can't slip through unmasked.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde_json::Value;

use crate::domain::masking::MaskPolicy;

/// Bytes of a body read for masking; a larger body is described, not kept.
pub const CAPTURE_LIMIT: usize = 64 * 1024;
/// Bytes of a masked body kept in the audit record.
pub const KEEP_LIMIT: usize = 4 * 1024;

/// What a tee has seen of a body: its first `CAPTURE_LIMIT` bytes and its full length.
#[derive(Debug, Default)]
pub struct Captured {
    pub prefix: Vec<u8>,
    pub total: usize,
}

impl Captured {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len();
        let room = CAPTURE_LIMIT.saturating_sub(self.prefix.len());
        self.prefix.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A request body that copies what passes through it into a shared `Captured`.
pub struct TeeBody {
    inner: Body,
    seen: Arc<Mutex<Captured>>,
}

impl TeeBody {
    pub fn new(inner: Body) -> (Self, Arc<Mutex<Captured>>) {
        let seen = Arc::new(Mutex::new(Captured::default()));
        (
            Self {
                inner,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Ok(mut seen) = self.seen.lock()
        {
            seen.push(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the audit record keeps of a body: masked JSON cut to `KEEP_LIMIT`, or a description.
/// `None` for an empty body.
pub fn render(captured: &Captured, mask: &MaskPolicy) -> Option<String> {
    if captured.total == 0 {
        return None;
    }
    if captured.total > captured.prefix.len() {
        return Some(format!(
            "[{} bytes: too large to mask, not kept]",
            captured.total
        ));
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(&captured.prefix) else {
        return Some(format!("[{} bytes, not JSON: not kept]", captured.total));
    };
    mask.mask(&mut value);
    let mut text = value.to_string();
    if text.len() > KEEP_LIMIT {
        let mut cut = KEEP_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("…[truncated]");
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(bytes: &[u8]) -> Captured {
        let mut c = Captured::default();
        for chunk in bytes.chunks(1000) {
            c.push(chunk);
        }
        c
    }

    #[test]
    fn json_is_masked_and_cut() {
        let mask = MaskPolicy::new("password", false);
        let body = br#"{"user": "al", "password": "hunter2", "nested": [{"Password": "x"}]}"#;
        let kept = render(&captured(body), &mask).unwrap();
        assert!(
            !kept.contains("hunter2") && !kept.contains("\"x\""),
            "{kept}"
        );
        assert!(kept.contains("\"user\":\"al\""));
        let big = serde_json::json!({"blob": "y".repeat(10_000)}).to_string();
        let kept = render(&captured(big.as_bytes()), &mask).unwrap();
        assert!(kept.len() < KEEP_LIMIT + 20 && kept.ends_with("[truncated]"));
    }

    #[test]
    fn other_bodies_are_described_not_kept() {
        let mask = MaskPolicy::new("password", false);
        assert_eq!(render(&captured(b""), &mask), None);
        let kept = render(&captured(b"password=hunter2"), &mask).unwrap();
        assert!(kept.contains("not JSON") && !kept.contains("hunter2"));
        let huge = serde_json::json!({"password": "hunter2", "blob": "z".repeat(CAPTURE_LIMIT)})
            .to_string();
        let c = captured(huge.as_bytes());
        assert_eq!(c.prefix.len(), CAPTURE_LIMIT, "capture is bounded");
        let kept = render(&c, &mask).unwrap();
        assert!(kept.contains("too large") && !kept.contains("hunter2"));
    }
}
