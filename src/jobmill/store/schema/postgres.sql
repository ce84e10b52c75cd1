-- The declared PostgreSQL schema: what migrations/postgres/* build, in one readable file (checked by
-- tests/conformance/test_schema.py). Change both together.

-- Jobs: `id` (a time-ordered UUID) is the public handle and the primary key; `seq` is the submission
-- order (the FIFO tie-breaker inside one priority). Times are timestamptz (microseconds, UTC on the wire).
CREATE TABLE jobmill_jobs (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    tenant text NOT NULL,
    principal text,
    kind text NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    params jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL,
    stage text,
    progress double precision,
    message text,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 1,
    timeout_s double precision,
    run_after timestamptz NOT NULL,
    result jsonb,
    error jsonb,
    inputs jsonb NOT NULL DEFAULT '{}',
    outputs jsonb NOT NULL DEFAULT '{}',
    idempotency_key text,
    lease_owner text,
    lease_token uuid,
    lease_expires_at timestamptz,
    event_seq integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL,
    CONSTRAINT jobmill_jobs_seq_key UNIQUE (seq),
    CONSTRAINT jobmill_jobs_status_check
        CHECK (status IN ('pending', 'running', 'cancelling', 'completed', 'failed', 'cancelled'))
);

CREATE UNIQUE INDEX jobmill_jobs_idempotency ON jobmill_jobs (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The claim order and queue_position both walk this index: priority desc, then submission order.
CREATE INDEX jobmill_jobs_claim ON jobmill_jobs (queue, priority DESC, seq) WHERE status = 'pending';
-- Leases to reap. A lease is set exactly while a job is running or cancelling; the predicate is on the
-- lease rather than on the status so that the planner never prefers this index to the primary key for
-- the CAS writes by id (`... AND status = 'running'` would imply a status predicate).
CREATE INDEX jobmill_jobs_lease ON jobmill_jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX jobmill_jobs_tenant ON jobmill_jobs (tenant, seq);

-- The change log: `seq` counts from 1 per job (the job's event_seq after the change); `id` is global.
CREATE TABLE jobmill_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id uuid NOT NULL,
    tenant text NOT NULL,
    seq integer NOT NULL,
    at timestamptz NOT NULL,
    type text NOT NULL,
    status text NOT NULL,
    stage text,
    progress double precision,
    message text,
    data jsonb,
    CONSTRAINT jobmill_events_job_seq_key UNIQUE (job_id, seq),
    CONSTRAINT jobmill_events_status_check
        CHECK (status IN ('pending', 'running', 'cancelling', 'completed', 'failed', 'cancelled'))
);

CREATE INDEX jobmill_events_tenant ON jobmill_events (tenant, id);
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
-- Row-level security: a second wall behind the tenant filters of every user-facing query. API requests
-- run their transaction as jobmill_tenant with `jobmill.tenant` set; such a transaction sees and writes
-- only that tenant's rows even if a query forgets its tenant filter. Workers, the lease reaper and
-- migrations run as the tables' owner, which RLS does not restrict (the policies are not FORCEd).
-- Creating the role needs CREATEROLE; where the migrating user lacks it, create the role beforehand.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobmill_tenant') THEN
        CREATE ROLE jobmill_tenant NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database of this cluster created it at the same moment
END
$$;

GRANT SELECT, INSERT, UPDATE ON jobmill_jobs, jobmill_events, jobmill_audit TO jobmill_tenant;
GRANT SELECT ON jobmill_api_keys TO jobmill_tenant;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s, %s, %s TO jobmill_tenant',
        pg_get_serial_sequence('jobmill_jobs', 'seq'),
        pg_get_serial_sequence('jobmill_events', 'id'),
        pg_get_serial_sequence('jobmill_audit', 'id'));
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO jobmill_tenant', current_schema());
END
$$;

ALTER TABLE jobmill_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobmill_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobmill_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobmill_api_keys ENABLE ROW LEVEL SECURITY;

CREATE POLICY jobmill_tenant_isolation ON jobmill_jobs TO jobmill_tenant
    USING (tenant = current_setting('jobmill.tenant', true))
    WITH CHECK (tenant = current_setting('jobmill.tenant', true));
CREATE POLICY jobmill_tenant_isolation ON jobmill_events TO jobmill_tenant
    USING (tenant = current_setting('jobmill.tenant', true))
    WITH CHECK (tenant = current_setting('jobmill.tenant', true));
CREATE POLICY jobmill_tenant_isolation ON jobmill_audit TO jobmill_tenant
    USING (tenant = current_setting('jobmill.tenant', true))
    WITH CHECK (tenant = current_setting('jobmill.tenant', true));
CREATE POLICY jobmill_tenant_isolation ON jobmill_api_keys TO jobmill_tenant
    USING (tenant = current_setting('jobmill.tenant', true));
-- Live streams: one wake-up per statement that appends events (not per event, and PostgreSQL folds equal
-- notifications of one transaction), so a batch of a hundred completions costs one NOTIFY. API nodes
-- then read the new rows themselves. A statement that appended nothing (a lost CAS) sends nothing.
CREATE FUNCTION jobmill_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM appended) THEN
        PERFORM pg_notify('jobmill', '{"topic":"events"}');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobmill_events_notify AFTER INSERT ON jobmill_events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_notify_events();
