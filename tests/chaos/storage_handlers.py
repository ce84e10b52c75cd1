"""Handlers the storage-fault tests run in a real `jobmill serve`: each publishes one output.

The three kinds publish through the three paths a handler can take to `save_output`: the worker's event
loop (async), a worker thread (sync), and a child process (`isolation="process"`).
"""

from __future__ import annotations

from typing import Any

from jobmill import JobContext, SyncJobContext, handler


def report_text(job_id: object, attempt: int) -> str:
    return f"report of job {job_id}, attempt {attempt}\n"


@handler("chaos.output", queue="chaos", max_attempts=3)
async def output(ctx: JobContext) -> dict[str, Any]:
    await ctx.stage("writing", progress=0)
    out = ctx.workdir / "report.txt"
    out.write_text(report_text(ctx.job_id, ctx.attempt))
    await ctx.save_output("report.txt", out)
    await ctx.progress(100)
    return {"attempt": ctx.attempt}


@handler("chaos.output_sync", queue="chaos", max_attempts=3)
def output_sync(ctx: SyncJobContext) -> dict[str, Any]:
    ctx.stage("writing", progress=0)
    out = ctx.workdir / "report.txt"
    out.write_text(report_text(ctx.job_id, ctx.attempt))
    ctx.save_output("report.txt", out)
    return {"attempt": ctx.attempt}


@handler("chaos.output_isolated", queue="chaos", max_attempts=3, isolation="process")
def output_isolated(ctx: SyncJobContext) -> dict[str, Any]:
    ctx.stage("writing", progress=0)
    out = ctx.workdir / "report.txt"
    out.write_text(report_text(ctx.job_id, ctx.attempt))
    ctx.save_output("report.txt", out)
    return {"attempt": ctx.attempt}
