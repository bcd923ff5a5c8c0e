-- Signed retention records: batches of a stream numbered below from_seq were removed on purpose.
CREATE TABLE IF NOT EXISTS retention (
    device   BLOB    NOT NULL,
    stream   TEXT    NOT NULL,
    from_seq INTEGER NOT NULL,
    sealed   BLOB    NOT NULL,
    PRIMARY KEY (device, stream, from_seq)
);
-- One row per stream, kept by triggers, so listing streams reads no batch (clear metadata, like the columns it sums).
CREATE TABLE IF NOT EXISTS streams (
    device   BLOB    NOT NULL,
    stream   TEXT    NOT NULL,
    batches  INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    head     INTEGER NOT NULL,
    PRIMARY KEY (device, stream)
);
INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head)
    SELECT device, stream, COUNT(*), SUM(count), MIN(first_ts), MAX(last_ts), MAX(seq) FROM batches
    WHERE true GROUP BY device, stream
    ON CONFLICT (device, stream) DO NOTHING;
CREATE TRIGGER IF NOT EXISTS streams_on_insert AFTER INSERT ON batches BEGIN
    INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head)
        VALUES (NEW.device, NEW.stream, 1, NEW.count, NEW.first_ts, NEW.last_ts, NEW.seq)
        ON CONFLICT (device, stream) DO UPDATE SET
            batches = batches + 1, readings = readings + excluded.readings,
            first_ts = MIN(first_ts, excluded.first_ts), last_ts = MAX(last_ts, excluded.last_ts),
            head = MAX(head, excluded.head);
END;
CREATE TRIGGER IF NOT EXISTS streams_on_delete AFTER DELETE ON batches BEGIN
    UPDATE streams SET batches = batches - 1, readings = readings - OLD.count
        WHERE device = OLD.device AND stream = OLD.stream;
END;
