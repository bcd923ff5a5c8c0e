-- Sealed batches: ciphertext plus the header's clear metadata, for range queries.
CREATE TABLE IF NOT EXISTS batches (
    device   BYTEA   NOT NULL,
    stream   TEXT    NOT NULL,
    seq      BIGINT  NOT NULL,
    first_ts BIGINT  NOT NULL,
    last_ts  BIGINT  NOT NULL,
    count    INTEGER NOT NULL,
    epoch    BIGINT  NOT NULL,
    hash     BYTEA   NOT NULL,
    sealed   BYTEA   NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX IF NOT EXISTS batches_by_time ON batches (device, stream, last_ts);
CREATE TABLE IF NOT EXISTS checkpoints (
    device BYTEA  NOT NULL,
    stream TEXT   NOT NULL,
    seq    BIGINT NOT NULL,
    sealed BYTEA  NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
