"""Handlers the benchmarks run."""

from __future__ import annotations

import time
from typing import Any

from jobmill import JobContext, handler


@handler("bench.noop", queue="bench")
async def noop(ctx: JobContext) -> None:
    return None


@handler("bench.stamp", queue="bench")
async def stamp(ctx: JobContext) -> dict[str, Any]:
    """Records when the handler started (wall clock), for pickup latency."""
    return {"started": time.time()}


@handler("bench.tree", queue="bench")
async def tree(ctx: JobContext) -> None:
    async def on_line(line: str) -> None:
        if line.startswith("pid="):
            await ctx.message(line)

    await ctx.run(["sh", "-c", "echo pid=$$; sleep 600 & sleep 600"], on_line=on_line)
