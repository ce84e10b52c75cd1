-- jobmill_jobs_ahead may use generic plans again. Forced custom plans re-planned its three queries on
-- every call: 0.46 ms of the server's CPU per queue position at a small queue, against 0.27 ms with the
-- plan cache (PG CPU per call, 1,000 calls side by side), and every GET of a pending job and every
-- submission reads one. The worry behind forcing them was a generic plan that cannot tell how few jobs
-- are delayed and starts parallel workers: max_parallel_workers_per_gather = 0 stays, and PostgreSQL's
-- own choice (plan_cache_mode = auto) keeps custom plans wherever a generic one costs more than they do,
-- as at a deep queue (bench/deep_queue.py measures it at 1,000,000 pending jobs).
ALTER FUNCTION jobmill_jobs_ahead(text, integer, bigint, timestamptz) RESET plan_cache_mode;
