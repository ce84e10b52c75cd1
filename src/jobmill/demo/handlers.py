"""Demo handlers: each one shows a part of jobmill with real work and real child processes.

demo.transcode   a media-style job: a child process reports "NN%" lines, parsed into progress, in stages
demo.checksum    a sync handler: sha256 of generated data, written to a file in the job's workdir
demo.flaky       fails its first `fail_times` attempts (default 2), then succeeds: retries with backoff
demo.sleep       an async job that sleeps in steps, for watching progress, queue positions and cancels
demo.isolated    a sync handler in its own killable child process (isolation="process")
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from typing import Any

from jobmill.handlers import handler
from jobmill.worker.context import JobContext, SyncJobContext

# A stand-in for ffmpeg: a child process (with its own grandchild) that prints percentages as it works.
FAKE_ENCODER = r"""
import subprocess, sys, time
steps, delay = int(sys.argv[1]), float(sys.argv[2])
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
try:
    for i in range(1, steps + 1):
        time.sleep(delay)
        print(f"frame={i} progress={100 * i // steps}%", flush=True)
finally:
    helper.kill()
"""


@handler("demo.transcode", queue="media", timeout_s=600, max_attempts=2)
async def transcode(ctx: JobContext) -> dict[str, Any]:
    steps = int(ctx.params.get("steps", 20))
    delay = float(ctx.params.get("delay_s", 0.25))
    await ctx.stage("probe", progress=None, message="inspecting the input")
    await asyncio.sleep(min(delay, 0.5))
    await ctx.stage("encode", progress=0)
    result = await ctx.run(
        [sys.executable, "-c", FAKE_ENCODER, str(steps), str(delay)],
        progress_pattern=r"progress=(?P<pct>\d+)%",
    )
    await ctx.stage("finalize", progress=100, message="done")
    return {"frames": steps, "log_tail": result.output_tail.splitlines()[-1:]}


@handler("demo.checksum", queue="default", timeout_s=120)
def checksum(ctx: SyncJobContext) -> dict[str, Any]:
    size = int(ctx.params.get("size_bytes", 10_000_000))
    ctx.stage("hash", progress=0)
    digest = hashlib.sha256()
    block = bytes(range(256)) * 4096
    done = 0
    while done < size:
        ctx.check_cancelled()
        chunk = block[: min(len(block), size - done)]
        digest.update(chunk)
        done += len(chunk)
        ctx.progress(round(100 * done / size, 1))
    (ctx.workdir / "digest.txt").write_text(digest.hexdigest())
    return {"sha256": digest.hexdigest(), "bytes": size}


@handler("demo.flaky", queue="default", max_attempts=3)
async def flaky(ctx: JobContext) -> dict[str, Any]:
    fail_times = int(ctx.params.get("fail_times", 2))
    await ctx.stage("attempt", message=f"attempt {ctx.attempt}")
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"demo failure on attempt {ctx.attempt} of {fail_times} planned")
    return {"succeeded_on_attempt": ctx.attempt}


@handler("demo.sleep", queue="default", timeout_s=3600)
async def sleep(ctx: JobContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 10))
    steps = max(1, int(ctx.params.get("steps", 10)))
    await ctx.stage("sleeping", progress=0)
    for i in range(1, steps + 1):
        await asyncio.sleep(seconds / steps)
        await ctx.progress(round(100 * i / steps, 1))
    return {"slept_s": seconds}


@handler("demo.isolated", queue="default", isolation="process", timeout_s=600)
def isolated(ctx: SyncJobContext) -> dict[str, Any]:
    seconds = float(ctx.params.get("seconds", 5))
    ctx.stage("busy", progress=0)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        time.sleep(min(0.2, seconds))
        ctx.progress(min(100.0, round(100 * elapsed / seconds, 1)))
    return {"busy_s": seconds}
