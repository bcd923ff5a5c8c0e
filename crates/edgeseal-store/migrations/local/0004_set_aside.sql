-- Readings journaled (by an earlier version) that can never be sealed, such as a
-- time outside 0000-9999: kept with the reason, never retried.
CREATE TABLE IF NOT EXISTS set_aside (
    id         INTEGER PRIMARY KEY,
    stream     TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    value      REAL,
    unit       TEXT,
    label      TEXT,
    media_type TEXT,
    blob       BLOB,
    reason     TEXT    NOT NULL
);
