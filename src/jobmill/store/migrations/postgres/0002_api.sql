-- The HTTP API: idempotent replays compare request hashes; cacheable kinds reuse completed results.
ALTER TABLE jobmill_jobs
    ADD COLUMN request_hash text,
    ADD COLUMN cache_key text,
    ADD COLUMN cached boolean NOT NULL DEFAULT false;
CREATE INDEX jobmill_jobs_cache ON jobmill_jobs (tenant, cache_key, finished_at)
    WHERE cache_key IS NOT NULL AND status = 'completed';

CREATE TABLE jobmill_api_keys (
    key_id text PRIMARY KEY,
    tenant text NOT NULL,
    role text NOT NULL,
    name text,
    secret_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CONSTRAINT jobmill_api_keys_role_check CHECK (role IN ('user', 'admin'))
);
CREATE INDEX jobmill_api_keys_tenant ON jobmill_api_keys (tenant, created_at);

-- Append-only: nothing in jobmill updates or deletes these rows.
CREATE TABLE jobmill_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    tenant text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    job_id uuid,
    before jsonb,
    after jsonb
);
CREATE INDEX jobmill_audit_tenant ON jobmill_audit (tenant, id);
