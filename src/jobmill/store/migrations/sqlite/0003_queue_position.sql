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

-- The counts, from the existing jobs.
INSERT INTO jobmill_position_blocks (queue, priority, block, pending)
SELECT queue, priority, seq / (SELECT block_width FROM jobmill_position_settings), count(*)
FROM jobmill_jobs WHERE status = 'pending' GROUP BY 1, 2, 3;

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
