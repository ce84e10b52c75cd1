"""JobContext: what a handler gets to report progress, use its workdir and run supervised commands.

Async handlers use `JobContext` directly. Sync handlers (run in a thread) get `SyncJobContext`, the same
methods without `await`, which hand the work to the worker's event loop. Handlers in a child process
(`isolation="process"`) get the same classes, wired to a pipe instead of the store (see isolated.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from jobmill.errors import ConfigError
from jobmill.handlers import check_name
from jobmill.storage.base import BlobStore, new_key
from jobmill.storage.sniff import SNIFF_BYTES, sniff_content_type
from jobmill.worker.supervisor import (
    ProcessCancelled,
    ProcessRegistry,
    RunResult,
    run_supervised,
    run_supervised_sync,
)

log = logging.getLogger("jobmill.handler")

LineCallback = Callable[[str], Awaitable[None] | None]


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(SNIFF_BYTES)


class ProgressSink(Protocol):
    """Where stage/progress/message updates go: the store (in a worker) or a pipe (in a child process)."""

    async def report(self, stage: str | None, progress: float | None, message: str | None) -> None: ...


class JobCancelled(Exception):
    """Raised inside a sync handler when its job was cancelled (for cooperative checks)."""


class JobContext:
    def __init__(
        self,
        *,
        job_id: UUID,
        kind: str,
        params: dict[str, Any],
        attempt: int,
        workdir: Path | str,
        sink: ProgressSink,
        cancel_grace_s: float = 5.0,
        inputs: Mapping[str, Any] | None = None,
        tenant: str = "default",
        blobs: BlobStore | None = None,
    ) -> None:
        self.job_id = job_id
        self._workdir_raw = workdir  # made a Path on first use: most jobs never touch their workdir
        self.workdir_created = False
        self.tenant = tenant
        self.outputs: dict[str, dict[str, Any]] = {}
        self._blobs = blobs
        self.kind = kind
        self.params = params
        self.attempt = attempt
        self.inputs: Mapping[str, Any] = inputs or {}
        self.log = log
        self.processes = ProcessRegistry()
        self._sink = sink
        self._grace_s = cancel_grace_s
        self._stage: str | None = None
        self._progress: float | None = None
        self._message: str | None = None
        # A threading.Event costs a Condition and a lock: only sync handlers (the event wakes their
        # supervised commands) need one, so async jobs carry a flag and the event is made on demand.
        self._cancelled = False
        self._cancel_event: threading.Event | None = None

    @property
    def workdir(self) -> Path:
        """The job's own temporary folder, created on first use and removed when the attempt ends."""
        path = Path(self._workdir_raw)
        if not self.workdir_created:
            path.mkdir(parents=True, exist_ok=True)
            self.workdir_created = True
        return path

    # -- reporting ------------------------------------------------------------------------------------

    async def stage(self, name: str, progress: float | None = None, message: str | None = None) -> None:
        """Enter a named stage; progress restarts (None = indeterminate) unless given."""
        self._stage, self._progress, self._message = name, progress, message
        await self._sink.report(self._stage, self._progress, self._message)

    async def progress(self, percent: float | None, message: str | None = None) -> None:
        """Report percent done (0..100, or None for indeterminate) within the current stage."""
        if percent is not None and not 0 <= percent <= 100:
            raise ValueError(f"progress must be between 0 and 100, not {percent}")
        self._progress = percent
        if message is not None:
            self._message = message
        await self._sink.report(self._stage, self._progress, self._message)

    async def message(self, text: str | None) -> None:
        self._message = text
        await self._sink.report(self._stage, self._progress, self._message)

    # -- files ----------------------------------------------------------------------------------------

    def _storage(self) -> BlobStore:
        if self._blobs is None:
            raise ConfigError("this worker has no blob storage configured (JOBMILL_STORAGE_URL)")
        return self._blobs

    async def input_path(self, name: str) -> Path:
        """A local copy of the uploaded input `name`, fetched from storage into the workdir once."""
        meta = self.inputs.get(name)
        if meta is None:
            raise KeyError(
                f"job {self.job_id} has no input {name!r} (it has: {', '.join(self.inputs) or 'none'})"
            )
        path = self.workdir / "inputs" / check_name("input", name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._storage().download_to, meta["key"], path)
        return path

    async def save_output(self, name: str, path: str | Path, *, content_type: str | None = None) -> None:
        """Publish the file at `path` as output `name`; clients download it through a signed URL.

        A storage failure raises, so the attempt fails and is retried: a job is never completed with an
        output missing. Outputs of an attempt that does not complete are deleted again.
        """
        check_name("output", name)
        source = Path(path)
        if content_type is None:
            content_type = sniff_content_type(await asyncio.to_thread(_read_head, source))
        key = new_key(self.tenant, "jobs", str(self.job_id), "outputs")
        info = await asyncio.to_thread(self._storage().put_file, key, source, content_type=content_type)
        previous = self.outputs.get(name)
        self.outputs[name] = {
            "key": info.key,
            "size": info.size,
            "sha256": info.sha256,
            "content_type": info.content_type,
            "filename": source.name,
        }
        if previous is not None:  # saved twice under one name: the first blob is unreferenced now
            await asyncio.to_thread(self._storage().delete, previous["key"])

    async def discard_outputs(self) -> None:
        """Delete what this attempt published (it did not complete, so nothing refers to it)."""
        for meta in list(self.outputs.values()):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._storage().delete, meta["key"])
        self.outputs.clear()

    # -- cancellation ---------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or timed out; long loops in handlers may check it."""
        return self._cancelled

    def mark_cancelled(self) -> None:
        self._cancelled = True
        if self._cancel_event is not None:
            self._cancel_event.set()

    def cancel_event(self) -> threading.Event:
        """An event set when the job is cancelled, for code that blocks in a thread. Call it on the event
        loop's thread (as SyncJobContext does when it is made), which is where mark_cancelled runs."""
        if self._cancel_event is None:
            self._cancel_event = threading.Event()
            if self._cancelled:
                self._cancel_event.set()
        return self._cancel_event

    # -- child processes ------------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        on_line: LineCallback | None = None,
        progress_pattern: str | re.Pattern[str] | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        stdin_data: bytes | None = None,
    ) -> RunResult:
        """Run a command in its own process group, killed with its whole tree on cancel or timeout.

        `progress_pattern` (a regex with a group `pct`, or the first group) turns matching output lines
        into progress reports, e.g. r"(?P<pct>\\d+(\\.\\d+)?)%".
        """
        pattern = re.compile(progress_pattern) if isinstance(progress_pattern, str) else progress_pattern

        async def handle_line(line: str) -> None:
            if pattern is not None:
                match = pattern.search(line)
                if match:
                    value = match.group("pct") if "pct" in pattern.groupindex else match.group(1)
                    try:
                        percent = max(0.0, min(100.0, float(value)))
                    except ValueError:
                        percent = None
                    if percent is not None:
                        await self.progress(percent)
            if on_line is not None:
                maybe = on_line(line)
                if maybe is not None:
                    await maybe

        return await run_supervised(
            argv,
            cwd=cwd if cwd is not None else self.workdir,
            env=env,
            on_line=handle_line,
            grace_s=self._grace_s,
            check=check,
            stdin_data=stdin_data,
            registry=self.processes,
        )


class SyncJobContext:
    """The JobContext of a sync handler running in a worker thread: same methods, no `await`."""

    def __init__(self, ctx: JobContext, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop
        self._cancel_event = ctx.cancel_event()
        self.job_id = ctx.job_id
        self.kind = ctx.kind
        self.params = ctx.params
        self.attempt = ctx.attempt
        self.workdir = ctx.workdir
        self.inputs = ctx.inputs
        self.log = ctx.log

    def _call(self, coro: Awaitable[Any]) -> Any:
        self.check_cancelled()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def stage(self, name: str, progress: float | None = None, message: str | None = None) -> None:
        self._call(self._ctx.stage(name, progress, message))

    def progress(self, percent: float | None, message: str | None = None) -> None:
        self._call(self._ctx.progress(percent, message))

    def message(self, text: str | None) -> None:
        self._call(self._ctx.message(text))

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancelled

    def input_path(self, name: str) -> Path:
        result: Path = self._call(self._ctx.input_path(name))
        return result

    def save_output(self, name: str, path: str | Path, *, content_type: str | None = None) -> None:
        self._call(self._ctx.save_output(name, path, content_type=content_type))

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled: a cheap cooperative stop point for loops."""
        if self._ctx.cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def run(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None] | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        stdin_data: bytes | None = None,
    ) -> RunResult:
        self.check_cancelled()
        try:
            return run_supervised_sync(
                argv,
                cwd=cwd if cwd is not None else self.workdir,
                env=env,
                on_line=on_line,
                grace_s=self._ctx._grace_s,
                check=check,
                stdin_data=stdin_data,
                registry=self._ctx.processes,
                cancel_event=self._cancel_event,
            )
        except ProcessCancelled as exc:
            raise JobCancelled(f"job {self.job_id} was cancelled") from exc
