-- Batches of a peer's stream that never arrived (from..=to), and the hash the
-- batch after them names as its predecessor: asked for until they come back,
-- across restarts.
CREATE TABLE IF NOT EXISTS holes (
    device  BLOB    NOT NULL,
    stream  TEXT    NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER NOT NULL,
    top     BLOB    NOT NULL,
    PRIMARY KEY (device, stream, from_seq)
);
