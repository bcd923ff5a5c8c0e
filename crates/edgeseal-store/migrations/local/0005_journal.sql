-- The journal of accepted readings not yet sealed, as encoded runs: one row per
-- stream (and kind or unit) and commit, its body in the batch body codec
-- (format.md), its readings at positions first_pos.. of the stream's accepted
-- readings. A stream's readings before streams.sealed_pos are sealed; a row
-- wholly before it is deleted in the transaction that seals its last reading.
-- It replaces pending_readings (a row per reading), whose rows are moved here
-- when state.db is opened.
CREATE TABLE IF NOT EXISTS journal (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    stream    TEXT    NOT NULL,
    first_pos INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    body      BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_stream ON journal (stream, first_pos);
ALTER TABLE streams ADD COLUMN sealed_pos INTEGER NOT NULL DEFAULT 0;
