-- The declared SQLite schema: what migrations/sqlite/* build, in one readable file (checked by
-- tests/conformance/test_schema.py). Change both together.

-- Jobs: `seq` is the submission order (FIFO tie-breaker) and the rowid; `id` is the public handle.
-- Times are UTC seconds since the epoch (REAL), so that comparisons are plain numeric ones.
CREATE TABLE jobmill_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    principal TEXT,
    kind TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    stage TEXT,
    progress REAL,
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    timeout_s REAL,
    run_after REAL NOT NULL,
    result TEXT,
    error TEXT,
    inputs TEXT NOT NULL DEFAULT '{}',
    outputs TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    lease_owner TEXT,
    lease_token TEXT,
    lease_expires_at REAL,
    event_seq INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    -- Added by 0002_api: idempotent replays compare request hashes; cacheable kinds reuse results.
    request_hash TEXT,
    cache_key TEXT,
    cached INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX jobmill_jobs_idempotency ON jobmill_jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim order and queue_position both walk this index: priority desc, then submission order.
CREATE INDEX jobmill_jobs_claim ON jobmill_jobs (queue, priority DESC, seq) WHERE status = 'pending';
CREATE INDEX jobmill_jobs_lease ON jobmill_jobs (lease_expires_at) WHERE status IN ('running', 'cancelling');
CREATE INDEX jobmill_jobs_tenant ON jobmill_jobs (tenant, seq);

CREATE TABLE jobmill_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT,
    progress REAL,
    message TEXT,
    data TEXT,
    UNIQUE (job_id, seq)
);

CREATE INDEX jobmill_events_tenant ON jobmill_events (tenant, id);
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
