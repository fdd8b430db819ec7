-- The Merkle tree over events in seq order (see integrity::tiles): its state, its tiles and
-- the signed checkpoints. Retention never deletes from these tables.
CREATE TABLE merkle_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    base_seq INTEGER NOT NULL,
    size     INTEGER NOT NULL
);
INSERT INTO merkle_state (id, base_seq, size) VALUES (1, 0, 0);

CREATE TABLE merkle_tiles (
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hashes BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

CREATE TABLE merkle_checkpoints (
    tree_size  INTEGER PRIMARY KEY,
    origin     TEXT    NOT NULL,
    root       BLOB    NOT NULL,
    signed_at  INTEGER NOT NULL,
    public_key BLOB    NOT NULL,
    signature  BLOB    NOT NULL
);
