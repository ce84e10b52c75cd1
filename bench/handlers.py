"""Handlers the benchmarks run."""

from __future__ import annotations

import os
import time
from typing import Any

from jobmill import JobContext, handler


@handler("bench.noop", queue="bench")
async def noop(ctx: JobContext) -> None:
    return None


@handler("bench.stamp", queue="bench")
async def stamp(ctx: JobContext) -> dict[str, Any]:
    """Records when the handler started (wall clock), for pickup latency; with a `key`, also pushes it to
    that Redis list, where the harness waits in BLPOP as it does for the peers (bench/peers/run_peer.py)."""
    started = time.time()
    if key := ctx.params.get("key"):
        _redis().rpush(key, repr(started))
    return {"started": started}


# Where stamp handlers push their start times and the pickup harness waits for them.
REDIS_URL = os.environ.get("JOBMILL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        import redis  # only the pickup scenario needs it

        _client = redis.Redis.from_url(REDIS_URL)
    return _client


@handler("bench.tree", queue="bench")
async def tree(ctx: JobContext) -> None:
    async def on_line(line: str) -> None:
        if line.startswith("pid="):
            await ctx.message(line)

    await ctx.run(["sh", "-c", "echo pid=$$; sleep 600 & sleep 600"], on_line=on_line)
