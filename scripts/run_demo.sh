#!/usr/bin/env bash
# `make run`: migrate the local SQLite database, queue a few demo jobs, and run a worker with the demo
# handlers until Ctrl-C. (The HTTP service and dashboard arrive with `jobmill serve`.)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var
.venv/bin/jobmill migrate
.venv/bin/python - <<'PY'
from jobmill import JobService, SubmitRequest, open_store
import jobmill.demo.handlers  # noqa: F401  (registers the demo kinds)
from jobmill import default_registry

store = open_store("sqlite:///./var/jobmill.db")
service = JobService(store, registry=default_registry)
for request in (
    SubmitRequest(kind="demo.transcode", params={"steps": 8, "delay_s": 0.25}),
    SubmitRequest(kind="demo.checksum", params={"size_bytes": 5_000_000}),
    SubmitRequest(kind="demo.flaky", params={"fail_times": 1}),
    SubmitRequest(kind="demo.sleep", params={"seconds": 3}),
):
    job = service.submit(request).job
    print(f"queued {job.kind:<15} {job.id}")
store.close()
PY
echo "starting a worker with the demo handlers (Ctrl-C to stop)"
exec .venv/bin/jobmill worker --app jobmill.demo.handlers --concurrency 4 --log-level debug
