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
    -- The longest a batch lasts (last_ts - first_ts): a time range's reads end at its end plus this.
    max_span INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, stream)
);
INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head, max_span)
    SELECT device, stream, COUNT(*), SUM(count), MIN(first_ts), MAX(last_ts), MAX(seq),
           MAX(MIN(last_ts - first_ts, 4611686018427387903)) FROM batches
    WHERE true GROUP BY device, stream
    ON CONFLICT (device, stream) DO NOTHING;
CREATE TRIGGER IF NOT EXISTS streams_on_insert AFTER INSERT ON batches BEGIN
    INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head, max_span)
        VALUES (NEW.device, NEW.stream, 1, NEW.count, NEW.first_ts, NEW.last_ts, NEW.seq,
                MIN(NEW.last_ts - NEW.first_ts, 4611686018427387903))
        ON CONFLICT (device, stream) DO UPDATE SET
            batches = batches + 1, readings = readings + excluded.readings,
            first_ts = MIN(first_ts, excluded.first_ts), last_ts = MAX(last_ts, excluded.last_ts),
            head = MAX(head, excluded.head), max_span = MAX(max_span, excluded.max_span);
END;
CREATE TRIGGER IF NOT EXISTS streams_on_delete AFTER DELETE ON batches BEGIN
    UPDATE streams SET batches = batches - 1, readings = readings - OLD.count
        WHERE device = OLD.device AND stream = OLD.stream;
END;
-- Grants, as owners sign them (HPKE-wrapped to the peer): the newest of each owner, stream and
-- peer, so a peer that reads this store finds its grant even if the broker never brought it.
CREATE TABLE IF NOT EXISTS grants (
    owner  BLOB NOT NULL,
    stream TEXT NOT NULL,
    peer   BLOB NOT NULL,
    issued INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (owner, stream, peer)
);
