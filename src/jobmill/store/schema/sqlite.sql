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

-- Exact queue_position without counting every job ahead (the PostgreSQL migration 0005 explains the
-- scheme): per-block counts of the pending jobs of each (queue, priority), blocks of `block_width`
-- consecutive seqs, kept by triggers in the same transaction as the jobs.
CREATE TABLE jobmill_position_settings (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    block_width INTEGER NOT NULL CHECK (block_width > 0)
);
INSERT INTO jobmill_position_settings (id, block_width) VALUES (1, 1024);

CREATE TABLE jobmill_position_blocks (
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    block INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    PRIMARY KEY (queue, priority, block)
) WITHOUT ROWID;

-- The delayed pending jobs of a queue: what queue_position subtracts.
CREATE INDEX jobmill_jobs_delayed ON jobmill_jobs (queue, run_after, priority, seq)
    WHERE status = 'pending';

-- Row triggers: a job enters its block when it becomes pending and leaves it when it stops being pending
-- (or changes queue or priority). A block whose count reaches 0 is deleted.
CREATE TRIGGER jobmill_position_insert AFTER INSERT ON jobmill_jobs WHEN new.status = 'pending'
BEGIN
    INSERT INTO jobmill_position_blocks (queue, priority, block, pending)
    SELECT new.queue, new.priority, new.seq / block_width, 1 FROM jobmill_position_settings WHERE true
    ON CONFLICT (queue, priority, block) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER jobmill_position_enter AFTER UPDATE OF status, queue, priority ON jobmill_jobs
WHEN new.status = 'pending'
    AND (old.status <> 'pending' OR old.queue <> new.queue OR old.priority <> new.priority)
BEGIN
    INSERT INTO jobmill_position_blocks (queue, priority, block, pending)
    SELECT new.queue, new.priority, new.seq / block_width, 1 FROM jobmill_position_settings WHERE true
    ON CONFLICT (queue, priority, block) DO UPDATE SET pending = pending + 1;
END;

CREATE TRIGGER jobmill_position_leave AFTER UPDATE OF status, queue, priority ON jobmill_jobs
WHEN old.status = 'pending'
    AND (new.status <> 'pending' OR old.queue <> new.queue OR old.priority <> new.priority)
BEGIN
    UPDATE jobmill_position_blocks SET pending = pending - 1
    WHERE queue = old.queue AND priority = old.priority
        AND block = old.seq / (SELECT block_width FROM jobmill_position_settings);
    DELETE FROM jobmill_position_blocks
    WHERE queue = old.queue AND priority = old.priority
        AND block = old.seq / (SELECT block_width FROM jobmill_position_settings) AND pending = 0;
END;

CREATE TRIGGER jobmill_position_delete AFTER DELETE ON jobmill_jobs WHEN old.status = 'pending'
BEGIN
    UPDATE jobmill_position_blocks SET pending = pending - 1
    WHERE queue = old.queue AND priority = old.priority
        AND block = old.seq / (SELECT block_width FROM jobmill_position_settings);
    DELETE FROM jobmill_position_blocks
    WHERE queue = old.queue AND priority = old.priority
        AND block = old.seq / (SELECT block_width FROM jobmill_position_settings) AND pending = 0;
END;
