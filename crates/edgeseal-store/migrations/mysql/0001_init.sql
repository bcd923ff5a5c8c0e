-- Sealed batches: ciphertext plus the header's clear metadata, for range queries.
CREATE TABLE IF NOT EXISTS batches (
    device   VARBINARY(16) NOT NULL,
    stream   VARCHAR(64)   NOT NULL,
    seq      BIGINT        NOT NULL,
    first_ts BIGINT        NOT NULL,
    last_ts  BIGINT        NOT NULL,
    count    INT           NOT NULL,
    epoch    BIGINT        NOT NULL,
    hash     VARBINARY(32) NOT NULL,
    sealed   LONGBLOB      NOT NULL,
    PRIMARY KEY (device, stream, seq),
    INDEX batches_by_time (device, stream, last_ts)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    device VARBINARY(16) NOT NULL,
    stream VARCHAR(64)   NOT NULL,
    seq    BIGINT        NOT NULL,
    sealed BLOB          NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
