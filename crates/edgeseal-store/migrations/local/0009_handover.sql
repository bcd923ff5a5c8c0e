-- A device that stores through the broker (store = "broker") deletes each batch from the
-- outbox when an ingest process acknowledges its stream and number, and publishes again
-- those sent (sent_ms) too long ago and still unacknowledged.
ALTER TABLE outbox ADD COLUMN sent_ms INTEGER;
CREATE INDEX IF NOT EXISTS outbox_by_seq ON outbox (stream, seq);
CREATE INDEX IF NOT EXISTS publish_queue_by_seq ON publish_queue (stream, seq);
