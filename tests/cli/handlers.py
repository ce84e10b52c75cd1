"""Handlers the client and CLI tests run in a real `jobmill serve --app tests.cli.handlers`.

cli.steps    stage "prepare", then stage "work" in `steps` steps of `delay_s` (progress 0..100)
cli.fail     fails at once, on its only attempt
cli.upper    reads the uploaded input `source`, publishes its upper-cased copy as output `upper.txt`
cli.sleep    sleeps `seconds` in small steps (cancel it)
"""

from __future__ import annotations

import asyncio
from typing import Any

from jobmill import JobContext, SyncJobContext, handler


@handler("cli.steps")
async def steps(ctx: JobContext) -> dict[str, Any]:
    count = int(ctx.params.get("steps", 5))
    delay = float(ctx.params.get("delay_s", 0.05))
    await ctx.stage("prepare", progress=None)
    await asyncio.sleep(delay)
    await ctx.stage("work", progress=0)
    for i in range(1, count + 1):
        await asyncio.sleep(delay)
        await ctx.progress(round(100 * i / count, 1), message=f"step {i} of {count}")
    return {"steps": count, "echo": ctx.params.get("echo")}


@handler("cli.fail", max_attempts=1)
async def fail(ctx: JobContext) -> None:
    await ctx.stage("explode")
    raise RuntimeError(str(ctx.params.get("why", "boom on purpose")))


@handler("cli.upper")
def upper(ctx: SyncJobContext) -> dict[str, Any]:
    ctx.stage("read", progress=0)
    data = ctx.input_path("source").read_bytes()
    out = ctx.workdir / "upper.txt"
    out.write_bytes(data.upper())
    ctx.save_output("upper.txt", out)
    ctx.progress(100)
    return {"bytes": len(data)}


@handler("cli.sleep", timeout_s=300)
async def sleep(ctx: JobContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 30))
    await ctx.stage("sleeping", progress=0)
    slices = max(1, int(seconds / 0.1))
    for i in range(1, slices + 1):
        await asyncio.sleep(seconds / slices)
        if i % 10 == 0:
            await ctx.progress(round(100 * i / slices, 1))
    return {"slept_s": seconds}
