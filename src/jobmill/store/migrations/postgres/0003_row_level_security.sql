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
