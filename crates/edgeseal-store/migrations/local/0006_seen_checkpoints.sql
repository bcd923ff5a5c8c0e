-- The newest signed checkpoint this agent wrote or verified, per stream: a
-- store that later holds none, or only older ones, has lost checkpoint rows.
CREATE TABLE IF NOT EXISTS seen_checkpoints (
    device BLOB    NOT NULL,
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (device, stream)
);
