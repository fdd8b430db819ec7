-- Type patterns narrow `events_client_type_seq` to their literal prefix with the range
-- [prefix, prefix || chr(127)). Under a linguistic collation (en_US, ICU) that range is not the
-- prefix's, and such a pattern matched nothing; byte order ("C") makes it hold on any database.
-- Only equality and that range compare event types, so no answer changes otherwise. Rebuilds
-- `events_client_type_seq` on every partition.
ALTER TABLE events ALTER COLUMN event_type TYPE TEXT COLLATE "C";
