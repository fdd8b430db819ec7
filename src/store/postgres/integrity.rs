//! The Merkle tree on PostgreSQL (`IntegrityStore`): reads on the pool; an extension is one
//! transaction that locks `merkle_state`, checks it is still the state the keeper started
//! from, and writes the tiles and the new state — so of two nodes' keepers racing for one
//! size, one writes and the other finds the state moved and starts again.

use async_trait::async_trait;

use super::query::EVENT_COLUMNS;
use super::{PostgresStore, row_to_event, unavailable};
use crate::domain::StoredEvent;
use crate::integrity::checkpoint::Checkpoint;
use crate::integrity::tiles::TileId;
use crate::store::StoreError;
use crate::store::copy::BATCH_BYTES;
use crate::store::integrity::{
    CHECKPOINT_COLUMNS, IntegrityStore, TreeState, checkpoint_from_columns,
};

fn state_from(row: &tokio_postgres::Row) -> TreeState {
    TreeState {
        base: row.get(0),
        size: row.get::<_, i64>(1) as u64,
    }
}

#[async_trait]
impl IntegrityStore for PostgresStore {
    async fn tree_state(&self) -> Result<TreeState, StoreError> {
        let db = self.client().await?;
        let row = db
            .query_one("SELECT base_seq, size FROM merkle_state WHERE id = 1", &[])
            .await
            .map_err(unavailable)?;
        Ok(state_from(&row))
    }

    async fn read_tiles(&self, ids: Vec<TileId>) -> Result<Vec<(TileId, Vec<u8>)>, StoreError> {
        let db = self.client().await?;
        let levels: Vec<i16> = ids.iter().map(|t| i16::from(t.level)).collect();
        let indexes: Vec<i64> = ids.iter().map(|t| t.index as i64).collect();
        let rows = db
            .query(
                "SELECT t.level, t.idx, t.hashes FROM merkle_tiles t \
                 JOIN UNNEST($1::smallint[], $2::bigint[]) AS w(level, idx) \
                 ON t.level = w.level AND t.idx = w.idx",
                &[&levels, &indexes],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| {
                let id = TileId {
                    level: r.get::<_, i16>(0) as u8,
                    index: r.get::<_, i64>(1) as u64,
                };
                (id, r.get(2))
            })
            .collect())
    }

    async fn extend_tree(
        &self,
        from: TreeState,
        to: TreeState,
        tiles: Vec<(TileId, Vec<u8>)>,
    ) -> Result<bool, StoreError> {
        let mut db = self.client().await?;
        let tx = db.transaction().await.map_err(unavailable)?;
        let row = tx
            .query_one(
                "SELECT base_seq, size FROM merkle_state WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(unavailable)?;
        if state_from(&row) != from {
            return Ok(false);
        }
        let levels: Vec<i16> = tiles.iter().map(|(t, _)| i16::from(t.level)).collect();
        let indexes: Vec<i64> = tiles.iter().map(|(t, _)| t.index as i64).collect();
        let hashes: Vec<&[u8]> = tiles.iter().map(|(_, h)| h.as_slice()).collect();
        tx.execute(
            "INSERT INTO merkle_tiles (level, idx, hashes) \
             SELECT * FROM UNNEST($1::smallint[], $2::bigint[], $3::bytea[]) \
             ON CONFLICT (level, idx) DO UPDATE SET hashes = EXCLUDED.hashes",
            &[&levels, &indexes, &hashes],
        )
        .await
        .map_err(unavailable)?;
        tx.execute(
            "UPDATE merkle_state SET base_seq = $1, size = $2 WHERE id = 1",
            &[&to.base, &(to.size as i64)],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let db = self.client().await?;
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2");
        let rows = db
            .query(&sql, &[&after, &(limit as i64)])
            .await
            .map_err(unavailable)?;
        let mut events = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in &rows {
            let event = row_to_event(row);
            bytes += event.data.len() + event.headers.len();
            events.push(event);
            if bytes > BATCH_BYTES {
                break;
            }
        }
        Ok(events)
    }

    async fn add_checkpoint(&self, checkpoint: Checkpoint) -> Result<(), StoreError> {
        let db = self.client().await?;
        db.execute(
            &format!(
                "INSERT INTO merkle_checkpoints ({CHECKPOINT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tree_size) DO NOTHING"
            ),
            &[
                &checkpoint.origin,
                &(checkpoint.tree_size as i64),
                &checkpoint.root.as_slice(),
                &checkpoint.signed_at.as_micros(),
                &checkpoint.public_key.as_slice(),
                &checkpoint.signature.as_slice(),
            ],
        )
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn checkpoints(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let db = self.client().await?;
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = db
            .query(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM merkle_checkpoints \
                     WHERE tree_size < $1 ORDER BY tree_size DESC LIMIT $2"
                ),
                &[&before, &(limit as i64)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                checkpoint_from_columns(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
            })
            .collect()
    }
}
