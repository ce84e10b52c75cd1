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
-- then read the new rows themselves. A statement that appended nothing (a lost CAS) sends nothing. The
-- channel is their own (not the workers' jobmill channel): workers do not LISTEN on it.
CREATE FUNCTION jobmill_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM appended) THEN
        PERFORM pg_notify('jobmill_events', '{"topic":"events"}');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobmill_events_notify AFTER INSERT ON jobmill_events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_notify_events();

-- Exact queue_position without counting every job ahead (DESIGN.md §8). The pending jobs of each
-- (queue, priority) are cut into blocks of `block_width` consecutive seqs; jobmill_position_blocks holds
-- how many pending jobs each block has, kept by the statement-level triggers below in the same
-- transaction as the jobs, so one snapshot sees both. A job's position then reads the block counts of the
-- buckets ahead, counts its own block's earlier jobs in the claim index (< block_width entries), and takes
-- off the delayed jobs ahead (run_after in the future; the blocks count them, the claim order skips them).
CREATE TABLE jobmill_position_settings (
    id boolean PRIMARY KEY DEFAULT true,
    block_width integer NOT NULL,
    CONSTRAINT jobmill_position_settings_one_row CHECK (id),
    CONSTRAINT jobmill_position_settings_width_check CHECK (block_width > 0)
);

-- Rows whose count reaches 0 are deleted, so the table holds about (pending jobs / block_width) rows.
-- Claims update the head block and submissions the tail one: a low fillfactor keeps those updates HOT.
CREATE TABLE jobmill_position_blocks (
    queue text NOT NULL,
    priority integer NOT NULL,
    block bigint NOT NULL,
    pending bigint NOT NULL,
    PRIMARY KEY (queue, priority, block)
) WITH (fillfactor = 50);

-- The delayed pending jobs of a queue: what queue_position subtracts. Scanned from `now` on, so it costs
-- one index entry per job whose run_after is still in the future; (priority, seq) ride along so that the
-- test "is it ahead?" needs no visit to the table.
CREATE INDEX jobmill_jobs_delayed ON jobmill_jobs (queue, run_after) INCLUDE (priority, seq)
    WHERE status = 'pending';

-- The triggers run as the owner: a tenant-scoped transaction (role jobmill_tenant, row-level security)
-- that cancels or reprioritises a job must still update the counts, which no tenant may write directly.
CREATE FUNCTION jobmill_position_count() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER AS $$
DECLARE
    width integer;
    queues text[];
    priorities integer[];
    blocks bigint[];
    deltas bigint[];
BEGIN
    -- Most updates (heartbeats, progress, completions) touch no pending job: they stop here. (Nested:
    -- an INSERT trigger has no old_rows to plan a query on.)
    IF TG_OP = 'UPDATE' THEN
        IF NOT EXISTS (SELECT FROM old_rows WHERE status = 'pending')
            AND NOT EXISTS (SELECT FROM new_rows WHERE status = 'pending') THEN
            RETURN NULL;
        END IF;
    END IF;
    width := (SELECT block_width FROM jobmill_position_settings);
    IF TG_OP = 'INSERT' THEN
        -- Only adds, so no count reaches 0. Sorted, so that concurrent statements lock rows in one order.
        INSERT INTO jobmill_position_blocks AS b (queue, priority, block, pending)
        SELECT queue, priority, seq / width, count(*) FROM new_rows WHERE status = 'pending'
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (queue, priority, block) DO UPDATE SET pending = b.pending + excluded.pending;
        RETURN NULL;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(queue), array_agg(priority), array_agg(block), array_agg(n)
        INTO queues, priorities, blocks, deltas
        FROM (SELECT queue, priority, block, sum(n) AS n FROM (
                SELECT queue, priority, seq / width AS block, -1 AS n FROM old_rows WHERE status = 'pending'
                UNION ALL
                SELECT queue, priority, seq / width, 1 FROM new_rows WHERE status = 'pending'
              ) AS d GROUP BY 1, 2, 3 HAVING sum(n) <> 0 ORDER BY 1, 2, 3) AS changes;
    ELSE
        SELECT array_agg(queue), array_agg(priority), array_agg(block), array_agg(n)
        INTO queues, priorities, blocks, deltas
        FROM (SELECT queue, priority, seq / width AS block, -count(*) AS n FROM old_rows
              WHERE status = 'pending' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3) AS changes;
    END IF;
    IF queues IS NULL THEN
        RETURN NULL;
    END IF;
    -- One upsert per changed block (a claim of 100 jobs is one or two rows), then the emptied blocks go.
    WITH changed AS (
        INSERT INTO jobmill_position_blocks AS b (queue, priority, block, pending)
        SELECT * FROM unnest(queues, priorities, blocks, deltas)
        ON CONFLICT (queue, priority, block) DO UPDATE SET pending = b.pending + excluded.pending
        RETURNING b.queue, b.priority, b.block, b.pending
    )
    SELECT array_agg(queue), array_agg(priority), array_agg(block) INTO queues, priorities, blocks
    FROM changed WHERE pending = 0;
    IF queues IS NOT NULL THEN
        DELETE FROM jobmill_position_blocks AS b
        USING unnest(queues, priorities, blocks) AS z(queue, priority, block)
        WHERE b.queue = z.queue AND b.priority = z.priority AND b.block = z.block AND b.pending = 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION jobmill_position_truncate() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER AS $$
BEGIN
    DELETE FROM jobmill_position_blocks;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobmill_jobs_position_insert AFTER INSERT ON jobmill_jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_position_count();
CREATE TRIGGER jobmill_jobs_position_update AFTER UPDATE ON jobmill_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_position_count();
CREATE TRIGGER jobmill_jobs_position_delete AFTER DELETE ON jobmill_jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_position_count();
CREATE TRIGGER jobmill_jobs_position_truncate AFTER TRUNCATE ON jobmill_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_position_truncate();

-- Sets the block width and recounts every block from the jobs, holding off writers meanwhile. The
-- migration uses it to fill the counts of an existing database; tests use it for tiny blocks.
CREATE FUNCTION jobmill_position_reblock(width integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE jobmill_jobs IN SHARE MODE;
    INSERT INTO jobmill_position_settings (id, block_width) VALUES (true, width)
    ON CONFLICT (id) DO UPDATE SET block_width = excluded.block_width;
    DELETE FROM jobmill_position_blocks;
    INSERT INTO jobmill_position_blocks (queue, priority, block, pending)
    SELECT queue, priority, seq / width, count(*) FROM jobmill_jobs WHERE status = 'pending'
    GROUP BY 1, 2, 3;
END
$$;

-- The number of runnable pending jobs of a queue that are claimed before the job (queue, priority, seq),
-- read from the caller's snapshot (STABLE). It runs as the owner: the claim order, and so the position,
-- counts every tenant's jobs, which a tenant-scoped caller cannot see. Callers look their job up under
-- row-level security first and pass its fields, so a tenant only ever learns positions, never jobs.
CREATE FUNCTION jobmill_jobs_ahead(job_queue text, job_priority integer, job_seq bigint, as_of timestamptz)
    RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER
    -- No parallel workers for the few delayed jobs (run_after > as_of). The plan cache decides between
    -- generic and custom plans (migration 0007: forced custom plans cost 0.2 ms of CPU per call).
    SET max_parallel_workers_per_gather = 0 AS $$
DECLARE
    width integer := (SELECT block_width FROM jobmill_position_settings);
BEGIN
    RETURN
        -- Higher priorities, then the earlier blocks of the job's priority: about pending/width rows.
        (SELECT coalesce(sum(pending), 0) FROM jobmill_position_blocks WHERE queue = job_queue
         AND (priority > job_priority OR (priority = job_priority AND block < job_seq / width)))
        -- The job's own block, before it: fewer than `width` entries of the claim index.
        + (SELECT count(*) FROM jobmill_jobs WHERE status = 'pending' AND queue = job_queue
           AND priority = job_priority AND seq >= job_seq / width * width AND seq < job_seq)
        -- Counted above but not runnable yet: one index entry per delayed job of the queue.
        - (SELECT count(*) FROM jobmill_jobs WHERE status = 'pending' AND queue = job_queue
           AND run_after > as_of AND (priority > job_priority OR (priority = job_priority AND seq < job_seq)));
END
$$;
-- The functions that run as the owner resolve names in jobmill's schema only, then pg_temp: never in a
-- caller's temporary tables first.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION jobmill_position_count() SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION jobmill_position_truncate() SET search_path = %I, pg_temp',
        current_schema());
    EXECUTE format('ALTER FUNCTION jobmill_jobs_ahead(text, integer, bigint, timestamptz)'
        ' SET search_path = %I, pg_temp', current_schema());
END
$$;
REVOKE ALL ON FUNCTION jobmill_jobs_ahead(text, integer, bigint, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobmill_jobs_ahead(text, integer, bigint, timestamptz) TO jobmill_tenant;

SELECT jobmill_position_reblock(1024);  -- the default block width
