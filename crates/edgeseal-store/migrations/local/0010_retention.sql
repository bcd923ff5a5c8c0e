-- Retention: where each of this agent's streams stood at a moment (the newest stored batch,
-- noted as time passes), so batches stored longer ago than the stream keeps can be cut off
-- under a signed record; and that record until the store (or ingest) has applied it.
CREATE TABLE IF NOT EXISTS retention_marks (
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    hash   BLOB    NOT NULL,
    at_ms  INTEGER NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE IF NOT EXISTS retention_records (
    stream   TEXT    NOT NULL PRIMARY KEY,
    from_seq INTEGER NOT NULL,
    record   BLOB    NOT NULL,
    applied  INTEGER NOT NULL DEFAULT 0
);
-- Grants given, written to the store too (a peer that reads the store finds them there).
ALTER TABLE grants_out ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
