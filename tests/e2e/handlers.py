"""Handlers the end-to-end tests run in real worker processes (`jobmill worker --app tests.e2e.handlers`).

Each execution is appended to the file named by E2E_EXEC_LOG ("job_id attempt pid" per line), so tests
can count how often a job really ran, independently of what the store says.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from jobmill import JobContext, SyncJobContext, handler

TREE = "echo pid=$$; sleep 600 & sleep 600"


def record_execution(ctx: JobContext | SyncJobContext) -> None:
    path = os.environ.get("E2E_EXEC_LOG")
    if path:
        with open(path, "a") as log:
            log.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")


async def run_tree(ctx: JobContext) -> None:
    async def on_line(line: str) -> None:
        if line.startswith("pid="):
            await ctx.message(line)  # tells the test which process tree to watch

    await ctx.run(["sh", "-c", TREE], on_line=on_line)


@handler("e2e.tree", queue="e2e")
async def tree(ctx: JobContext) -> None:
    record_execution(ctx)
    await ctx.stage("tree")
    await run_tree(ctx)


@handler("e2e.tree_timeout", queue="e2e", timeout_s=1.0)
async def tree_timeout(ctx: JobContext) -> None:
    record_execution(ctx)
    await run_tree(ctx)


@handler("e2e.sync_tree", queue="e2e")
def sync_tree(ctx: SyncJobContext) -> None:
    record_execution(ctx)

    def on_line(line: str) -> None:
        if line.startswith("pid="):
            ctx.message(line)

    ctx.run(["sh", "-c", TREE], on_line=on_line)


@handler("e2e.isolated_spin", queue="e2e", isolation="process")
def isolated_spin(ctx: SyncJobContext) -> None:
    record_execution(ctx)
    ctx.message(f"pid={os.getpid()}")
    while True:  # ignores cancellation on purpose: only killing the process stops it
        time.sleep(0.05)


@handler("e2e.slow_first", queue="e2e", max_attempts=3)
async def slow_first(ctx: JobContext) -> dict[str, Any]:
    record_execution(ctx)
    if ctx.attempt == 1:
        await run_tree(ctx)
    return {"attempt": ctx.attempt}


@handler("e2e.record", queue="e2e")
async def record(ctx: JobContext) -> dict[str, Any]:
    record_execution(ctx)
    return {"n": ctx.params.get("n")}


@handler("e2e.sleep", queue="e2e")
async def sleep(ctx: JobContext) -> dict[str, Any]:
    record_execution(ctx)
    await ctx.stage("sleeping", progress=0)
    await asyncio.sleep(float(ctx.params["seconds"]))
    return {"slept": ctx.params["seconds"]}


@handler("e2e.flaky", queue="e2e")
async def flaky(ctx: JobContext) -> dict[str, Any]:
    record_execution(ctx)
    if ctx.attempt <= int(ctx.params["fail_times"]):
        raise ValueError(f"planned failure {ctx.attempt}")
    return {"attempt": ctx.attempt}


@handler("e2e.upper", queue="e2e", max_attempts=2)
async def upper(ctx: JobContext) -> dict[str, Any]:
    """Reads the uploaded `source`, publishes it upper-cased as `upper.txt`."""
    record_execution(ctx)
    await ctx.stage("transform", progress=0)
    source = await ctx.input_path("source")
    out = ctx.workdir / "upper.txt"
    out.write_bytes(source.read_bytes().upper())
    await ctx.save_output("upper.txt", out)
    await ctx.progress(100)
    return {"bytes": out.stat().st_size}


@handler("e2e.ticker", queue="e2e")
async def ticker(ctx: JobContext) -> dict[str, Any]:
    """Reports progress `ticks` times, `interval_s` apart: a steady stream of events to measure."""
    ticks = int(ctx.params.get("ticks", 10))
    interval = float(ctx.params.get("interval_s", 0.1))
    await ctx.stage("ticking", progress=0)
    for i in range(1, ticks + 1):
        await asyncio.sleep(interval)
        await ctx.progress(round(100 * i / ticks, 2))
    return {"ticks": ticks}
