-- Sealed batches: ciphertext plus the header's clear metadata, for range queries.
CREATE TABLE IF NOT EXISTS batches (
    device   BLOB    NOT NULL,
    stream   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    epoch    INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    sealed   BLOB    NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX IF NOT EXISTS batches_by_time ON batches (device, stream, last_ts);
CREATE TABLE IF NOT EXISTS checkpoints (
    device BLOB    NOT NULL,
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    sealed BLOB    NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
