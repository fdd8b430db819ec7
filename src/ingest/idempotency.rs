//! Idempotency planning shared by every store's writer: given a batch and the idempotency keys
//! already stored for it, decide for each event whether to insert it, answer with a stored id,
//! or refuse the batch.
//!
//! The key is `(client_id, source or "", event_id)`; events without `event_id` are always new.
//! Same key and same content hash → a duplicate (the original id); same key and different
//! content → a conflict. A repeat inside the batch is stored once.

use std::collections::HashMap;

use uuid::Uuid;

use crate::domain::NewEvent;
use crate::store::AppendedItem;

/// The idempotency key of an event, if it has one.
pub fn key_of(event: &NewEvent) -> Option<(&str, &str, &str)> {
    let event_id = event.event_id.as_deref()?;
    Some((
        event.client_id.as_str(),
        event.source.as_deref().unwrap_or(""),
        event_id,
    ))
}

/// What a stored key points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub event_id: Uuid,
    pub content_hash: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Insert,
    /// Already stored under this id.
    Existing(Uuid),
    /// The same as an earlier event of this batch.
    SameAsIndex(usize),
}

impl Plan {
    /// The answer for an event that needs no insert (`None` for `Insert`): the stored id, or the
    /// id already given to the earlier event of the batch it repeats.
    pub fn resolved(self, earlier: &[AppendedItem]) -> Option<AppendedItem> {
        match self {
            Plan::Insert => None,
            Plan::Existing(id) => Some(AppendedItem {
                id,
                duplicate: true,
            }),
            Plan::SameAsIndex(first) => Some(AppendedItem {
                id: earlier[first].id,
                duplicate: true,
            }),
        }
    }
}

/// Plans a batch against `stored` (the stored keys among the batch's keys). `Err` holds the
/// indexes of conflicting events; nothing of the batch may then be written.
pub fn plan<'a>(
    events: &'a [NewEvent],
    stored: &HashMap<(&'a str, &'a str, &'a str), StoredKey>,
) -> Result<Vec<Plan>, Vec<usize>> {
    let mut plans = Vec::with_capacity(events.len());
    let mut conflicts = Vec::new();
    let mut in_batch: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let Some(key) = key_of(event) else {
            plans.push(Plan::Insert);
            continue;
        };
        if let Some(&first) = in_batch.get(&key) {
            if events[first].content_hash == event.content_hash {
                plans.push(Plan::SameAsIndex(first));
            } else {
                conflicts.push(index);
                plans.push(Plan::Insert);
            }
            continue;
        }
        match stored.get(&key) {
            Some(s) if s.content_hash == event.content_hash => {
                plans.push(Plan::Existing(s.event_id))
            }
            Some(_) => {
                conflicts.push(index);
                plans.push(Plan::Insert);
            }
            None => {
                in_batch.insert(key, index);
                plans.push(Plan::Insert);
            }
        }
    }
    if conflicts.is_empty() {
        Ok(plans)
    } else {
        Err(conflicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::envelope::test_event as ev;
    use serde_json::json;

    #[test]
    fn plans_new_duplicate_repeat_and_conflict() {
        let events = vec![
            ev(json!({"event_type": "a", "event_id": "1"})),
            ev(json!({"event_type": "a", "event_id": "old"})),
            ev(json!({"event_type": "a", "event_id": "1"})),
            ev(json!({"event_type": "a"})),
            ev(json!({"event_type": "a", "event_id": "1", "source": "other"})),
        ];
        let old = Uuid::now_v7();
        let mut stored = HashMap::new();
        stored.insert(
            ("c", "", "old"),
            StoredKey {
                event_id: old,
                content_hash: events[1].content_hash,
            },
        );
        assert_eq!(
            plan(&events, &stored),
            Ok(vec![
                Plan::Insert,
                Plan::Existing(old),
                Plan::SameAsIndex(0),
                Plan::Insert,
                Plan::Insert
            ])
        );
        let changed = vec![
            ev(json!({"event_type": "b", "event_id": "old"})),
            ev(json!({"event_type": "a", "event_id": "x"})),
            ev(json!({"event_type": "b", "event_id": "x"})),
        ];
        assert_eq!(plan(&changed, &stored), Err(vec![0, 2]));
    }
}
