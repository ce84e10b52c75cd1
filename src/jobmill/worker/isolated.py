"""Handlers with `isolation="process"`: the handler runs in a child Python process that can be killed.

The worker starts `python -m jobmill.worker.isolated_main` under the same supervisor as `ctx.run` (own process
group, killed with its whole tree on cancel, timeout or worker death) and sends the job on stdin. The
child imports the handler's module, runs the handler with a JobContext whose progress reports are written
to stdout as control lines; the last control line carries the result or the error.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from jobmill.domain.job import JsonObject

if TYPE_CHECKING:
    from jobmill.domain.job import Job
    from jobmill.handlers import HandlerSpec
    from jobmill.worker.context import JobContext

# Control lines start with an ASCII record separator, which ordinary program output does not.
MARK = "\x1ejobmill "


class HandlerProcessError(Exception):
    """A handler failed in its child process; `error_info` is what the child reported."""

    def __init__(self, info: JsonObject) -> None:
        super().__init__(info.get("message", "handler process failed"))
        self.error_info = info


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import the same handler modules as this worker, wherever they were found.
    paths = [os.getcwd(), *[p for p in sys.path if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


async def run_isolated(spec: HandlerSpec, job: Job, ctx: JobContext) -> Any:
    from jobmill.worker.supervisor import run_supervised

    module = spec.fn.__module__
    if module == "__main__":
        raise HandlerProcessError(
            {
                "type": "config",
                "message": "isolation='process' needs a handler defined in an importable module",
            }
        )
    request = {
        "module": module,
        "kind": spec.kind,
        "job_id": str(job.id),
        "params": job.params,
        "attempt": job.attempts,
        "workdir": str(ctx.workdir),
        "inputs": dict(ctx.inputs),
        "tenant": ctx.tenant,
        "storage_url": ctx._blobs.url if ctx._blobs is not None else None,
    }
    outcome: dict[str, Any] = {}

    async def on_line(line: str) -> None:
        if not line.startswith(MARK):
            ctx.log.info("[%s] %s", job.id, line)
            return
        message = json.loads(line[len(MARK) :])
        if message["type"] == "progress":
            await ctx._sink.report(message["stage"], message["progress"], message["message"])
        else:
            # The child's published outputs become this attempt's outputs: recorded with the completion,
            # or deleted by the worker when the attempt does not complete.
            ctx.outputs.update(message.pop("outputs", {}))
            outcome.update(message)

    result = await run_supervised(
        [sys.executable, "-m", "jobmill.worker.isolated_main"],
        cwd=ctx.workdir,
        env=_child_env(),
        on_line=on_line,
        grace_s=ctx._grace_s,
        check=False,
        stdin_data=json.dumps(request).encode(),
        registry=ctx.processes,
    )
    if outcome.get("type") == "result":
        return outcome["value"]
    if outcome.get("type") == "error":
        raise HandlerProcessError(outcome["error"])
    raise HandlerProcessError(
        {
            "type": "process_exit",
            "message": f"the handler process exited with status {result.returncode}",
            "traceback": result.output_tail[-4000:],
        }
    )


class _PipeSink:
    async def report(self, stage: str | None, progress: float | None, message: str | None) -> None:
        _emit({"type": "progress", "stage": stage, "progress": progress, "message": message})


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(message) + "\n")
    sys.stdout.flush()


async def child_main(request: dict[str, Any]) -> None:
    from jobmill.handlers import default_registry
    from jobmill.storage import open_blobstore
    from jobmill.worker.context import JobContext, SyncJobContext

    importlib.import_module(request["module"])
    spec = default_registry.get(request["kind"])
    # The child only reads and writes blobs; signing URLs stays with the API, so no secret is needed.
    blobs = open_blobstore(request["storage_url"], secret_key="") if request.get("storage_url") else None
    ctx = JobContext(
        job_id=UUID(request["job_id"]),
        kind=request["kind"],
        params=request["params"],
        attempt=request["attempt"],
        workdir=Path(request["workdir"]),
        sink=_PipeSink(),
        inputs=request["inputs"],
        tenant=request["tenant"],
        blobs=blobs,
    )
    try:
        if inspect.iscoroutinefunction(spec.fn):
            value = await spec.fn(ctx)
        else:
            loop = asyncio.get_running_loop()
            value = await loop.run_in_executor(None, spec.fn, SyncJobContext(ctx, loop))
        json.dumps(value)
    except Exception as exc:
        _emit(
            {
                "type": "error",
                "error": {
                    "type": type(exc).__name__,
                    "message": str(exc) or type(exc).__name__,
                    "traceback": "".join(traceback.format_exception(exc)),
                },
                "outputs": ctx.outputs,
            }
        )
        return
    _emit({"type": "result", "value": value, "outputs": ctx.outputs})
