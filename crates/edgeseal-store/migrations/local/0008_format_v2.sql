-- Format v2. Grants are exact in time: a grant may end (share --to), not only begin.
ALTER TABLE grants_out ADD COLUMN to_ms INTEGER;
-- The hashes (32 bytes each, oldest first) of the batches just before a
-- stream's next one that its next signed batch vouches for (covers).
ALTER TABLE streams ADD COLUMN covers BLOB;
