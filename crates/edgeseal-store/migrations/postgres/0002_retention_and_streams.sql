-- Signed retention records: batches of a stream numbered below from_seq were removed on purpose.
CREATE TABLE IF NOT EXISTS retention (
    device   BYTEA  NOT NULL,
    stream   TEXT   NOT NULL,
    from_seq BIGINT NOT NULL,
    sealed   BYTEA  NOT NULL,
    PRIMARY KEY (device, stream, from_seq)
);
-- One row per stream, so listing the streams of thousands of devices reads no batch. Kept by
-- statement triggers (one upsert per statement, in key order: concurrent writers lock rows in
-- the same order); clear metadata, as untrusted as the columns it sums.
CREATE TABLE IF NOT EXISTS streams (
    device   BYTEA  NOT NULL,
    stream   TEXT   NOT NULL,
    batches  BIGINT NOT NULL,
    readings BIGINT NOT NULL,
    first_ts BIGINT NOT NULL,
    last_ts  BIGINT NOT NULL,
    head     BIGINT NOT NULL,
    -- The longest a batch lasts (last_ts - first_ts): a time range's reads end at its end plus this.
    max_span BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (device, stream)
);
INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head, max_span)
    SELECT device, stream, COUNT(*), SUM(count), MIN(first_ts), MAX(last_ts), MAX(seq), LEAST(MAX(last_ts::numeric - first_ts::numeric), 4611686018427387903)::bigint FROM batches
    GROUP BY device, stream
    ON CONFLICT (device, stream) DO NOTHING;
CREATE OR REPLACE FUNCTION edgeseal_streams_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO streams (device, stream, batches, readings, first_ts, last_ts, head, max_span)
        SELECT device, stream, COUNT(*), SUM(count), MIN(first_ts), MAX(last_ts), MAX(seq), LEAST(MAX(last_ts::numeric - first_ts::numeric), 4611686018427387903)::bigint
        FROM inserted GROUP BY device, stream ORDER BY device, stream
        ON CONFLICT (device, stream) DO UPDATE SET
            batches = streams.batches + EXCLUDED.batches, readings = streams.readings + EXCLUDED.readings,
            first_ts = LEAST(streams.first_ts, EXCLUDED.first_ts), last_ts = GREATEST(streams.last_ts, EXCLUDED.last_ts),
            head = GREATEST(streams.head, EXCLUDED.head), max_span = GREATEST(streams.max_span, EXCLUDED.max_span);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION edgeseal_streams_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE streams s SET batches = s.batches - d.batches, readings = s.readings - d.readings
        FROM (SELECT device, stream, COUNT(*) AS batches, SUM(count) AS readings FROM deleted
              GROUP BY device, stream ORDER BY device, stream) d
        WHERE s.device = d.device AND s.stream = d.stream;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS streams_on_insert ON batches;
CREATE TRIGGER streams_on_insert AFTER INSERT ON batches REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION edgeseal_streams_on_insert();
DROP TRIGGER IF EXISTS streams_on_delete ON batches;
CREATE TRIGGER streams_on_delete AFTER DELETE ON batches REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION edgeseal_streams_on_delete();
-- Grants, as owners sign them (HPKE-wrapped to the peer): the newest of each owner, stream and
-- peer, so a peer that reads this store finds its grant even if the broker never brought it.
CREATE TABLE IF NOT EXISTS grants (
    owner  BYTEA NOT NULL,
    stream TEXT NOT NULL,
    peer   BYTEA NOT NULL,
    issued BIGINT NOT NULL,
    sealed BYTEA NOT NULL,
    PRIMARY KEY (owner, stream, peer)
);
