-- The HTTP API: idempotent replays compare request hashes; cacheable kinds reuse completed results.
ALTER TABLE jobmill_jobs ADD COLUMN request_hash TEXT;
ALTER TABLE jobmill_jobs ADD COLUMN cache_key TEXT;
ALTER TABLE jobmill_jobs ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobmill_jobs_cache ON jobmill_jobs (tenant, cache_key, finished_at)
    WHERE cache_key IS NOT NULL AND status = 'completed';

CREATE TABLE jobmill_api_keys (
    key_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    name TEXT,
    secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX jobmill_api_keys_tenant ON jobmill_api_keys (tenant, created_at);

-- Append-only: nothing in jobmill updates or deletes these rows.
CREATE TABLE jobmill_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id TEXT,
    before TEXT,
    after TEXT
);
CREATE INDEX jobmill_audit_tenant ON jobmill_audit (tenant, id);
