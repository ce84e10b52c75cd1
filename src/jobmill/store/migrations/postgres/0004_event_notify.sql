-- Live streams: one wake-up per statement that appends events (not per event, and PostgreSQL folds equal
-- notifications of one transaction), so a batch of a hundred completions costs one NOTIFY. API nodes
-- then read the new rows themselves.
CREATE FUNCTION jobmill_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobmill', '{"topic":"events"}');
    RETURN NULL;
END
$$;

CREATE TRIGGER jobmill_events_notify AFTER INSERT ON jobmill_events
    FOR EACH STATEMENT EXECUTE FUNCTION jobmill_notify_events();
