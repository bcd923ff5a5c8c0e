-- Signed retention records: batches of a stream numbered below from_seq were removed on purpose.
CREATE TABLE IF NOT EXISTS retention (
    device   VARBINARY(16) NOT NULL,
    stream   VARCHAR(64)   NOT NULL,
    from_seq BIGINT        NOT NULL,
    sealed   BLOB          NOT NULL,
    PRIMARY KEY (device, stream, from_seq)
);
-- One row per stream, kept by triggers, so listing streams reads no batch (clear metadata, like the columns it sums).
CREATE TABLE IF NOT EXISTS streams (
    device   VARBINARY(16) NOT NULL,
    stream   VARCHAR(64)   NOT NULL,
    batches  BIGINT        NOT NULL,
    readings BIGINT        NOT NULL,
    first_ts BIGINT        NOT NULL,
    last_ts  BIGINT        NOT NULL,
    head     BIGINT        NOT NULL,
    -- The longest a batch lasts (last_ts - first_ts): a time range's reads end at its end plus this.
    max_span BIGINT        NOT NULL DEFAULT 0,
    PRIMARY KEY (device, stream)
);
INSERT IGNORE INTO streams (device, stream, batches, readings, first_ts, last_ts, head, max_span)
    SELECT device, stream, COUNT(*), SUM(count), MIN(first_ts), MAX(last_ts), MAX(seq),
           LEAST(MAX(CAST(last_ts AS DECIMAL(20)) - first_ts), 4611686018427387903) FROM batches
    GROUP BY device, stream;
CREATE TRIGGER streams_on_insert AFTER INSERT ON batches FOR EACH ROW
    INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head, max_span)
        VALUES (NEW.device, NEW.stream, 1, NEW.count, NEW.first_ts, NEW.last_ts, NEW.seq,
                LEAST(CAST(NEW.last_ts AS DECIMAL(20)) - NEW.first_ts, 4611686018427387903))
        ON DUPLICATE KEY UPDATE batches = batches + 1, readings = readings + NEW.count,
            first_ts = LEAST(first_ts, NEW.first_ts), last_ts = GREATEST(last_ts, NEW.last_ts),
            head = GREATEST(head, NEW.seq),
            max_span = GREATEST(max_span, LEAST(CAST(NEW.last_ts AS DECIMAL(20)) - NEW.first_ts, 4611686018427387903));
CREATE TRIGGER streams_on_delete AFTER DELETE ON batches FOR EACH ROW
    UPDATE streams SET batches = batches - 1, readings = readings - OLD.count
        WHERE device = OLD.device AND stream = OLD.stream;
-- Grants, as owners sign them (HPKE-wrapped to the peer): the newest of each owner, stream and
-- peer, so a peer that reads this store finds its grant even if the broker never brought it.
CREATE TABLE IF NOT EXISTS grants (
    owner  VARBINARY(16) NOT NULL,
    stream VARCHAR(64) NOT NULL,
    peer   VARBINARY(16) NOT NULL,
    issued BIGINT NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (owner, stream, peer)
);
