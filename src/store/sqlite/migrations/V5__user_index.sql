-- Events by user, kept behind the writer instead of as an index of `events`.
--
-- With many users every event lands on its own leaf of a `(client_id, user_id, seq)` index, so
-- each group commit rewrote one random page per event; that was a third of the writer's work.
-- The writer now appends events alone and copies their `(client_id, user_id, seq)` into
-- `user_index` in large sorted batches (user_index.rs), where many events share a page.
-- `user_index_progress.through_seq` says how far the copy has got, in the same transaction as
-- the copy: events above it (the tail) are found by scanning them, so no event is ever missing
-- from a query by user.
CREATE TABLE user_index (
    u_client TEXT    NOT NULL,
    u_user   TEXT    NOT NULL,
    u_seq    INTEGER NOT NULL,
    PRIMARY KEY (u_client, u_user, u_seq)
) WITHOUT ROWID;

CREATE TABLE user_index_progress (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL
);

-- Read in key order from the old index itself: no sort, whatever the store's size.
INSERT INTO user_index (u_client, u_user, u_seq)
    SELECT client_id, user_id, seq FROM events INDEXED BY events_client_user_seq
    WHERE user_id IS NOT NULL ORDER BY 1, 2, 3;
INSERT INTO user_index_progress (id, through_seq)
    SELECT 1, last_seq FROM event_sequence WHERE id = 1;
DROP INDEX events_client_user_seq;
