-- Live-stream wake-ups get a channel of their own, jobmill_events: every statement that appends events
-- sends one (claims and completions, many per second under load), and only API nodes with live streams
-- want them. On the shared channel every worker's listener received them all, and PostgreSQL delivered
-- each one to every listening connection.
CREATE OR REPLACE FUNCTION jobmill_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM appended) THEN
        PERFORM pg_notify('jobmill_events', '{"topic":"events"}');
    END IF;
    RETURN NULL;
END
$$;
