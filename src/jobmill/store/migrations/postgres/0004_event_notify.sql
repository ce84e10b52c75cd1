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
