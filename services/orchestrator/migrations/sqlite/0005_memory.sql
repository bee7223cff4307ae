-- Long-term memory (src/memory.rs): notes a tenant's runs remember and
-- recall by full-text search. Additive: a replica of the previous version
-- neither reads nor writes these.
--
-- `agent` is '' for a note every agent of the tenant recalls, or the one
-- agent profile that recalls it. `tags` is a JSON array of strings. Text
-- and tags are redacted before they are stored. Times are microseconds
-- since the Unix epoch; `expire_time` NULL: the note does not expire.
--
-- `seq` is the rowid the full-text index refers to: declared, so that it
-- never changes (VACUUM may renumber an undeclared rowid, which would
-- point the index at the wrong notes).
CREATE TABLE memory_notes (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL DEFAULT '',
    text        TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    create_time BIGINT NOT NULL,
    expire_time BIGINT
);

-- A tenant's notes newest first (the per-tenant limit keeps the newest).
CREATE INDEX memory_notes_by_tenant ON memory_notes (tenant, create_time, id);
-- Pruning: aged notes, expired notes.
CREATE INDEX memory_notes_by_age ON memory_notes (create_time);
CREATE INDEX memory_notes_expiry ON memory_notes (expire_time)
    WHERE expire_time IS NOT NULL;

-- The full-text index over text and tags (FTS5, external content: the
-- words are indexed, the text is read from memory_notes). Porter stemming
-- over Unicode words, diacritics folded, so "deployed" finds "deploy" and
-- "café" finds "cafe", as the English configuration does on PostgreSQL.
CREATE VIRTUAL TABLE memory_notes_fts USING fts5 (
    text,
    tags,
    content = 'memory_notes',
    content_rowid = 'seq',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

-- Kept in step with memory_notes by triggers, in the writing transaction.
CREATE TRIGGER memory_notes_fts_insert AFTER INSERT ON memory_notes BEGIN
    INSERT INTO memory_notes_fts (rowid, text, tags)
        VALUES (new.seq, new.text, new.tags);
END;

CREATE TRIGGER memory_notes_fts_delete AFTER DELETE ON memory_notes BEGIN
    INSERT INTO memory_notes_fts (memory_notes_fts, rowid, text, tags)
        VALUES ('delete', old.seq, old.text, old.tags);
END;

CREATE TRIGGER memory_notes_fts_update AFTER UPDATE ON memory_notes BEGIN
    INSERT INTO memory_notes_fts (memory_notes_fts, rowid, text, tags)
        VALUES ('delete', old.seq, old.text, old.tags);
    INSERT INTO memory_notes_fts (rowid, text, tags)
        VALUES (new.seq, new.text, new.tags);
END;
