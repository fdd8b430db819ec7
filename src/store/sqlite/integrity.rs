//! The Merkle tree on SQLite (`IntegrityStore`): reads on the read pool; the tree's writes
//! (tiles, state, checkpoints) on the writer thread, between two groups, each in its own
//! transaction.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::query::EVENT_COLUMNS;
use crate::domain::StoredEvent;
use crate::integrity::checkpoint::Checkpoint;
use crate::integrity::tiles::TileId;
use crate::store::StoreError;
use crate::store::copy::BATCH_BYTES;
use crate::store::integrity::{
    CHECKPOINT_COLUMNS, IntegrityStore, TreeState, checkpoint_from_columns,
};

fn read_state(conn: &rusqlite::Connection) -> rusqlite::Result<TreeState> {
    conn.query_row(
        "SELECT base_seq, size FROM merkle_state WHERE id = 1",
        [],
        |r| {
            Ok(TreeState {
                base: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
            })
        },
    )
}

#[async_trait]
impl IntegrityStore for SqliteStore {
    async fn tree_state(&self) -> Result<TreeState, StoreError> {
        self.read(|conn| Ok(read_state(conn)?)).await
    }

    async fn read_tiles(&self, ids: Vec<TileId>) -> Result<Vec<(TileId, Vec<u8>)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT hashes FROM merkle_tiles WHERE level = ?1 AND idx = ?2")?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                let tile: Option<Vec<u8>> = stmt
                    .query_row(params![id.level, id.index as i64], |r| r.get(0))
                    .optional()?;
                if let Some(tile) = tile {
                    found.push((id, tile));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn extend_tree(
        &self,
        from: TreeState,
        to: TreeState,
        tiles: Vec<(TileId, Vec<u8>)>,
    ) -> Result<bool, StoreError> {
        self.write(move |tx| {
            if read_state(tx)? != from {
                return Ok(false);
            }
            let mut put = tx.prepare_cached(
                "INSERT INTO merkle_tiles (level, idx, hashes) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (level, idx) DO UPDATE SET hashes = excluded.hashes",
            )?;
            for (id, hashes) in &tiles {
                put.execute(params![id.level, id.index as i64, hashes])?;
            }
            tx.execute(
                "UPDATE merkle_state SET base_seq = ?1, size = ?2 WHERE id = 1",
                params![to.base, to.size as i64],
            )?;
            Ok(true)
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let mut events = Vec::new();
            let mut bytes = 0;
            for event in stmt.query_map(params![after, limit as i64], super::row_to_event)? {
                let event = event?;
                bytes += event.data.len() + event.headers.len();
                events.push(event);
                if bytes > BATCH_BYTES {
                    break;
                }
            }
            Ok(events)
        })
        .await
    }

    async fn add_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO merkle_checkpoints ({CHECKPOINT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tree_size) DO NOTHING"
                ),
                params![
                    checkpoint.origin,
                    checkpoint.tree_size as i64,
                    checkpoint.root.as_slice(),
                    checkpoint.signed_at.as_micros(),
                    checkpoint.public_key.as_slice(),
                    checkpoint.signature.as_slice(),
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM merkle_checkpoints \
                     WHERE tree_size < ?1 ORDER BY tree_size DESC LIMIT ?2"
                ))?;
                let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
                let rows = stmt.query_map(params![before, limit as i64], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(o, s, r, t, k, g)| checkpoint_from_columns(o, s, r, t, k, g))
            .collect()
    }
}
