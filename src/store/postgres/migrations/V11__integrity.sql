-- The Merkle tree over events in seq order (see integrity::tiles): its state, its tiles and
-- the signed checkpoints. Retention never deletes from these tables.
CREATE TABLE merkle_state (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    base_seq BIGINT NOT NULL,
    size     BIGINT NOT NULL
);
INSERT INTO merkle_state (id, base_seq, size) VALUES (1, 0, 0);

CREATE TABLE merkle_tiles (
    level  SMALLINT NOT NULL,
    idx    BIGINT   NOT NULL,
    hashes BYTEA    NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE merkle_checkpoints (
    tree_size  BIGINT PRIMARY KEY,
    origin     TEXT   NOT NULL,
    root       BYTEA  NOT NULL,
    signed_at  BIGINT NOT NULL,
    public_key BYTEA  NOT NULL,
    signature  BYTEA  NOT NULL
);
