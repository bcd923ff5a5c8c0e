-- The agent's own durable state (state.db in the data directory).
-- Per stream: the next sequence number, the hash of the last sealed batch and the key epoch.
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT    PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    head     BLOB    NOT NULL,
    epoch    INTEGER NOT NULL
);
-- Readings accepted but not yet sealed (the open batch of each stream).
CREATE TABLE IF NOT EXISTS pending_readings (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    value      REAL,
    unit       TEXT,
    label      TEXT,
    media_type TEXT,
    blob       BLOB
);
-- Sealed batches not yet acknowledged by the store.
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    epoch    INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    sealed   BLOB    NOT NULL
);
-- Batches the store refused (a different batch already holds the number). Kept, never dropped.
CREATE TABLE IF NOT EXISTS rejected (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    reason TEXT    NOT NULL,
    sealed BLOB    NOT NULL
);
-- The highest authentic head this agent has seen per stream: the reader's memory against rollback.
CREATE TABLE IF NOT EXISTS seen_heads (
    device BLOB    NOT NULL,
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    hash   BLOB    NOT NULL,
    ts     INTEGER NOT NULL,
    PRIMARY KEY (device, stream)
);
