-- Long-term memory (src/memory.rs): notes a tenant's runs remember and
-- recall by full-text search. Additive: a replica of the previous version
-- neither reads nor writes these.
--
-- `agent` is '' for a note every agent of the tenant recalls, or the one
-- agent profile that recalls it. `tags` is a JSON array of strings. Text
-- and tags are redacted before they are stored. Times are microseconds
-- since the Unix epoch; `expire_time` NULL: the note does not expire.
--
-- `search` is the note's words (English stemming, so "deployed" finds
-- "deploy", as Porter stemming does on SQLite): the text weighted A, the
-- tags B. Generated, so it can never disagree with the text.
CREATE TABLE memory_notes (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL DEFAULT '',
    text        TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    create_time BIGINT NOT NULL,
    expire_time BIGINT,
    search      TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, text), 'A')
        || setweight(to_tsvector('english'::regconfig, tags), 'B')
    ) STORED
);

-- A tenant's notes newest first (the per-tenant limit keeps the newest).
CREATE INDEX memory_notes_by_tenant ON memory_notes (tenant, create_time, id);
-- Pruning: aged notes, expired notes.
CREATE INDEX memory_notes_by_age ON memory_notes (create_time);
CREATE INDEX memory_notes_expiry ON memory_notes (expire_time)
    WHERE expire_time IS NOT NULL;
-- Full-text search.
CREATE INDEX memory_notes_search ON memory_notes USING GIN (search);
