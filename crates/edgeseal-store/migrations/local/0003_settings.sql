-- Settings changed while the agent runs (the web UI's batch size), kept across restarts.
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
