-- Sharing: peers, key epochs, grants and the queue of batches to publish.
-- Paired peers and their verified public keys.
CREATE TABLE IF NOT EXISTS peers (
    device    BLOB    PRIMARY KEY,
    name      TEXT    NOT NULL,
    ed25519   BLOB    NOT NULL,
    x25519    BLOB    NOT NULL,
    paired_ms INTEGER NOT NULL
);
-- When each key epoch of each stream began (epoch 0 began with the stream).
CREATE TABLE IF NOT EXISTS epochs (
    stream     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (stream, epoch)
);
-- Grants this agent gave: the latest grant (or revocation) per peer and stream.
CREATE TABLE IF NOT EXISTS grants_out (
    peer        BLOB    NOT NULL,
    stream      TEXT    NOT NULL,
    from_ms     INTEGER NOT NULL,
    first_epoch INTEGER NOT NULL,
    revoked     INTEGER NOT NULL,
    grant       BLOB    NOT NULL,
    published   INTEGER NOT NULL,
    PRIMARY KEY (peer, stream)
);
-- Grants this agent received: the latest grant with keys per owner and stream
-- (still wrapped to this agent's key), and whether it was revoked since.
CREATE TABLE IF NOT EXISTS grants_in (
    owner      BLOB    NOT NULL,
    stream     TEXT    NOT NULL,
    issued_ms  INTEGER NOT NULL,
    grant      BLOB    NOT NULL,
    revoked_ms INTEGER,
    PRIMARY KEY (owner, stream)
);
-- Sealed batches waiting to be published to the broker (when sharing is on).
CREATE TABLE IF NOT EXISTS publish_queue (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    sealed BLOB    NOT NULL
);
-- Batches received from peers wait in the outbox too; NULL device = this agent.
ALTER TABLE outbox ADD COLUMN device BLOB;
