"""Supervised execution of external commands: the whole process tree dies with the job.

Every command runs under ``shim.py`` in a fresh session, so "the job's processes" is one process group
whose id is the shim's pid. Cancelling kills that group (SIGTERM, grace period, SIGKILL) and waits until
/proc shows none of it left; the shim kills the group itself when the command exits (leftover background
processes) and when the worker dies, even by SIGKILL (PR_SET_PDEATHSIG).

Processes that leave the group on purpose (``setsid``, ``setpgid``) are outside this guarantee.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ProcessCancelled",
    "ProcessFailed",
    "ProcessRegistry",
    "RunResult",
    "process_group_members",
    "run_supervised",
    "run_supervised_sync",
]

logger = logging.getLogger(__name__)

SHIM_PATH = str(Path(__file__).resolve().with_name("shim.py"))

OUTPUT_TAIL_BYTES = 64 * 1024
# A line longer than this is delivered in pieces, so a command printing without newlines cannot make
# the supervisor buffer without bound. Generous because line protocols (a JSON result per line from an
# isolated handler process) need whole lines.
MAX_LINE_CHARS = 16 * 1024 * 1024
# How long the group may take to disappear from /proc after SIGKILL before we give up and log.
GROUP_GONE_TIMEOUT_S = 2.0
# Once the group is dead, the only possible writer left on the output pipe is a process that escaped
# the group; stop reading after this long without data instead of waiting for its EOF forever.
DRAIN_IDLE_S = 0.5
# How often the sync runner looks at its cancel_event (a threading.Event has no file descriptor).
CANCEL_POLL_S = 0.02
_READ_CHUNK = 64 * 1024
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.05

_NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    """The command's exit code, or ``-signal`` if a signal ended it."""
    output_tail: str
    """Last ~64 KiB of the combined stdout+stderr, decoded as UTF-8 with errors replaced."""


class ProcessFailed(Exception):
    """The command exited with a non-zero status and the caller asked for ``check=True``."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"{shlex.join(result.argv)} {_describe_status(result.returncode)}")
        self.result = result

    def __reduce__(self) -> tuple[type[ProcessFailed], tuple[RunResult]]:
        return (type(self), (self.result,))


class ProcessCancelled(Exception):
    """``run_supervised_sync`` was cancelled through its ``cancel_event``; the process tree is dead."""


def _describe_status(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def process_group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is ``pgid``, from /proc."""
    if pgid <= 0:
        raise ValueError(f"not a process group id: {pgid}")
    # A /proc scan costs ~30 us per process on the host; the kernel answers "no such group" for free.
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members: list[int] = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                # The process exited between listing and reading.
                continue
            # comm (field 2) may contain spaces and parentheses; it ends at the last ')'.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) < 3 or fields[0] in (b"Z", b"X"):
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    members.sort()
    return members


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


class ProcessRegistry:
    """The process groups of one job (or one worker) that may still be alive.

    Lets the owner kill them from outside the task that runs them, including from signal handlers and
    atexit hooks. Individual set operations are atomic under the GIL, so no lock is taken: a lock would
    deadlock if a signal handler calling ``kill_all_now`` interrupted a holder on the main thread.
    """

    def __init__(self) -> None:
        self._pgids: set[int] = set()

    def add(self, pgid: int) -> None:
        self._pgids.add(pgid)

    def remove(self, pgid: int) -> None:
        self._pgids.discard(pgid)

    def pgids(self) -> frozenset[int]:
        return frozenset(self._pgids)

    def __len__(self) -> int:
        return len(self._pgids)

    def __contains__(self, pgid: object) -> bool:
        return pgid in self._pgids

    async def kill_all(self, grace_s: float) -> None:
        """SIGTERM every group, wait up to ``grace_s`` for them to die, SIGKILL what is left.

        Returns once the groups are gone from /proc (bounded by GROUP_GONE_TIMEOUT_S after SIGKILL).
        Groups stay registered: their supervising call removes them when it has seen them end.
        """
        pgids = self.pgids()
        for pgid in pgids:
            _signal_group(pgid, signal.SIGTERM)
        alive = await _await_groups_gone(pgids, grace_s, kill=False)
        for pgid in alive:
            _signal_group(pgid, signal.SIGKILL)
        remaining = await _await_groups_gone(alive, GROUP_GONE_TIMEOUT_S, kill=True)
        _log_survivors(remaining)

    def terminate_now(self) -> None:
        """SIGTERM every group without waiting: the first step of a cancel, safe from any thread.

        A registered group's leader is the worker's own child and stays unreaped (so its pgid cannot be
        reused) until the supervising call has seen the group end and unregistered it.
        """
        for pgid in self.pgids():
            _signal_group(pgid, signal.SIGTERM)

    def kill_all_now(self) -> None:
        """SIGKILL every group without waiting; safe in signal handlers and atexit hooks."""
        for pgid in self.pgids():
            _signal_group(pgid, signal.SIGKILL)


def _live_groups(pgids: frozenset[int]) -> frozenset[int]:
    return frozenset(pgid for pgid in pgids if process_group_members(pgid))


def _log_survivors(pgids: frozenset[int]) -> None:
    for pgid in pgids:
        logger.warning(
            "process group %d still has members %s after SIGKILL (uninterruptible sleep?)",
            pgid,
            process_group_members(pgid),
        )


async def _await_groups_gone(pgids: frozenset[int], timeout_s: float, *, kill: bool) -> frozenset[int]:
    """Poll /proc until no listed group has a live member or the timeout passes; return the survivors.

    With ``kill``, SIGKILL is re-sent to survivors on every round. Signalling a pgid is only safe while the
    group has members (an empty group's id can be reused by an unrelated process), which is exactly when
    this sends it.
    """
    deadline = time.monotonic() + timeout_s
    delay = _POLL_MIN_S
    while True:
        alive = _live_groups(pgids)
        if not alive or time.monotonic() >= deadline:
            return alive
        if kill:
            for pgid in alive:
                _signal_group(pgid, signal.SIGKILL)
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, _POLL_MAX_S)


def _await_group_gone_sync(pgid: int, timeout_s: float) -> bool:
    """Blocking twin of the SIGKILL-and-poll loop for one group; True if it is gone."""
    deadline = time.monotonic() + timeout_s
    delay = _POLL_MIN_S
    while process_group_members(pgid):
        if time.monotonic() >= deadline:
            _log_survivors(frozenset({pgid}))
            return False
        _signal_group(pgid, signal.SIGKILL)
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)
    return True


class _OutputCollector:
    """Splits the merged output into lines (\\n, \\r\\n or a lone \\r, as progress bars use) and keeps
    the raw tail."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The unterminated current line, kept in pieces so a long line costs O(n), not O(n^2) joins.
        self._parts: list[str] = []
        self._parts_len = 0
        self._held_cr = ""
        self._tail = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._tail += data
        if len(self._tail) > 2 * OUTPUT_TAIL_BYTES:
            del self._tail[:-OUTPUT_TAIL_BYTES]
        return self._split(self._decoder.decode(data), final=False)

    def finish(self) -> list[str]:
        return self._split(self._decoder.decode(b"", final=True), final=True)

    def _split(self, text: str, *, final: bool) -> list[str]:
        text = self._held_cr + text
        self._held_cr = ""
        if not final and text.endswith("\r"):
            # Possibly the first half of \r\n: the next chunk decides.
            text, self._held_cr = text[:-1], "\r"
        pieces = _NEWLINE.split(text)
        lines: list[str] = []
        if len(pieces) > 1:
            self._parts.append(pieces[0])
            lines.append("".join(self._parts))
            self._parts, self._parts_len = [], 0
            lines.extend(pieces[1:-1])
        rest = pieces[-1]
        if rest:
            self._parts.append(rest)
            self._parts_len += len(rest)
        if self._parts_len > MAX_LINE_CHARS:
            joined = "".join(self._parts)
            while len(joined) > MAX_LINE_CHARS:
                lines.append(joined[:MAX_LINE_CHARS])
                joined = joined[MAX_LINE_CHARS:]
            self._parts, self._parts_len = [joined], len(joined)
        if final and self._parts_len:
            lines.append("".join(self._parts))
            self._parts, self._parts_len = [], 0
        return lines

    def tail(self) -> str:
        tail = bytes(self._tail[-OUTPUT_TAIL_BYTES:])
        if len(self._tail) > OUTPUT_TAIL_BYTES:
            # The cut may have split a multi-byte character; drop its continuation bytes.
            start = 0
            while start < min(len(tail), 3) and 0x80 <= tail[start] < 0xC0:
                start += 1
            tail = tail[start:]
        return tail.decode("utf-8", errors="replace")


def _shim_command(argv: tuple[str, ...], status_fd: int) -> list[str]:
    if not sys.executable:
        raise RuntimeError("sys.executable is unknown; cannot start the process shim")
    return [sys.executable, "-I", "-S", SHIM_PATH, str(os.getpid()), str(status_fd), "--", *argv]


def _read_status(status_fd: int) -> int | None:
    """The command's exit status as reported by the shim, or None if the shim died before reporting."""
    try:
        data = os.read(status_fd, 64)
    except BlockingIOError:
        return None
    try:
        return int(data.strip())
    except ValueError:
        return None


def _check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str):
        raise TypeError("argv must be a sequence of arguments, not a string")
    argv_t = tuple(argv)
    if not argv_t:
        raise ValueError("argv must not be empty")
    return argv_t


def _finish(argv: tuple[str, ...], returncode: int, output: _OutputCollector, check: bool) -> RunResult:
    result = RunResult(argv=argv, returncode=returncode, output_tail=output.tail())
    if check and returncode != 0:
        raise ProcessFailed(result)
    return result


# --------------------------------------------------------------------------------------------- async


class _ShimProtocol(asyncio.SubprocessProtocol):
    """Buffers the shim's output with flow control and reports its exit independently of the pipes.

    asyncio's own ``Process.wait()`` only returns once the output pipe is closed too, which a process
    that escaped the group can delay forever; exit has to be observable on its own.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.exited: asyncio.Future[None] = loop.create_future()
        self.eof = False
        self.data_seq = 0
        self.reader_waiting = False
        self._loop = loop
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self._chunks.append(data)
        self._buffered += len(data)
        self.data_seq += 1
        if self._buffered > _HIGH_WATER and not self._paused:
            self._set_reading(False)
        self._wake()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.eof = True
            self._wake()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    async def read(self) -> bytes:
        """Next chunk of output, or b"" at end of file."""
        while not self._chunks and not self.eof:
            self._waiter = self._loop.create_future()
            self.reader_waiting = True
            try:
                await self._waiter
            finally:
                self.reader_waiting = False
                self._waiter = None
        if not self._chunks:
            return b""
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < _LOW_WATER:
            self._set_reading(True)
        return data

    def _set_reading(self, on: bool) -> None:
        pipe = self._transport.get_pipe_transport(1) if self._transport is not None else None
        if not isinstance(pipe, asyncio.ReadTransport) or pipe.is_closing():
            return
        if on:
            pipe.resume_reading()
        else:
            pipe.pause_reading()
        self._paused = not on

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _AsyncRun:
    def __init__(
        self,
        argv: tuple[str, ...],
        transport: asyncio.SubprocessTransport,
        protocol: _ShimProtocol,
        status_fd: int,
        on_line: Callable[[str], Awaitable[None] | None] | None,
    ) -> None:
        self.argv = argv
        self.transport = transport
        self.protocol = protocol
        self.pgid = transport.get_pid()
        self.status_fd = status_fd
        self.output = _OutputCollector()
        self._on_line = on_line
        # Set once the group is known dead (or we gave up on it); until then `finally` kills it.
        self.settled = False
        self._pump_task: asyncio.Task[None] | None = None

    async def supervise(self) -> int:
        """Wait for the command and its group to end; returns the command's exit status."""
        pump = self._pump_task = asyncio.create_task(self._pump())
        exited = self.protocol.exited
        await asyncio.wait({pump, exited}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done():
            # Raises if on_line failed; the caller then tears the group down.
            pump.result()
            await asyncio.wait({exited})
        # The shim's last act was to SIGKILL its group; make sure that has happened.
        remaining = await _await_groups_gone(frozenset({self.pgid}), GROUP_GONE_TIMEOUT_S, kill=True)
        _log_survivors(remaining)
        self.settled = True
        await self._drain(pump)
        status = _read_status(self.status_fd)
        if status is None:
            shim_status = self.transport.get_returncode()
            status = shim_status if shim_status is not None else -signal.SIGKILL
        return status

    async def _pump(self) -> None:
        while True:
            data = await self.protocol.read()
            lines = self.output.feed(data) if data else self.output.finish()
            for line in lines:
                await self._deliver(line)
            if not data:
                return

    async def _deliver(self, line: str) -> None:
        if self._on_line is not None:
            pending = self._on_line(line)
            if pending is not None:
                await pending

    async def _drain(self, pump: asyncio.Task[None]) -> None:
        """Let the pump consume what the dead group left in the pipe, unless an escapee keeps it open."""
        while not pump.done():
            seq = self.protocol.data_seq
            await asyncio.wait({pump}, timeout=DRAIN_IDLE_S)
            if not pump.done() and self.protocol.reader_waiting and self.protocol.data_seq == seq:
                logger.warning(
                    "output pipe of %s still open after its process group died; a process escaped the group",
                    shlex.join(self.argv),
                )
                pump.cancel()
                await asyncio.wait({pump})
        if not pump.cancelled():
            pump.result()

    async def terminate(self, grace_s: float) -> bool:
        """SIGTERM the group, SIGKILL it after ``grace_s``, wait until /proc shows it gone.

        Runs to completion whatever happens to the calling task: a cancellation arriving meanwhile only
        cuts the grace period short. Returns whether one arrived.
        """
        interrupted = False
        exited = self.protocol.exited
        if not exited.done():
            _signal_group(self.pgid, signal.SIGTERM)
            try:
                await asyncio.wait({exited}, timeout=grace_s)
            except asyncio.CancelledError:
                interrupted = True
        if not exited.done():
            _signal_group(self.pgid, signal.SIGKILL)
        # Unlike exit of the shim, emptiness of the group is what matters; it also covers commands the
        # shim could not take down because it was itself killed first.
        group = frozenset({self.pgid})
        deadline = time.monotonic() + GROUP_GONE_TIMEOUT_S
        while True:
            try:
                remaining = await _await_groups_gone(group, deadline - time.monotonic(), kill=True)
                break
            except asyncio.CancelledError:
                interrupted = True
        _log_survivors(remaining)
        # A SIGKILLed shim no longer counts as a member once it is a zombie, but asyncio's child watcher
        # must reap it before the transport is closed: close() would reap it behind the watcher's back.
        while not exited.done() and (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait({exited}, timeout=left)
            except asyncio.CancelledError:
                interrupted = True
        self.settled = True
        pump = self._pump_task
        if pump is not None:
            pump.cancel()
            while not pump.done():
                try:
                    await asyncio.wait({pump})
                except asyncio.CancelledError:
                    interrupted = True
            if not pump.cancelled():
                # Retrieved so asyncio does not log it; the exception that ended the run is what matters.
                pump.exception()
        return interrupted

    def kill_now(self) -> None:
        """Last resort when awaiting is impossible (coroutine closed, interpreter exiting)."""
        if not self.protocol.exited.done() or process_group_members(self.pgid):
            _signal_group(self.pgid, signal.SIGKILL)
            _await_group_gone_sync(self.pgid, GROUP_GONE_TIMEOUT_S)
        self.settled = True
        if self._pump_task is not None:
            self._pump_task.cancel()


async def run_supervised(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], Awaitable[None] | None] | None = None,
    grace_s: float = 5.0,
    check: bool = True,
    stdin_data: bytes | None = None,
    registry: ProcessRegistry | None = None,
) -> RunResult:
    """Run ``argv`` in its own process group and return once it and all its descendants are gone.

    ``on_line`` receives every line of the merged stdout/stderr without its line ending, in order.
    If the awaiting task is cancelled, the group gets SIGTERM, then SIGKILL after ``grace_s``; the
    CancelledError propagates only once /proc shows no member of the group left. Without
    ``stdin_data`` the command's stdin is /dev/null.
    """
    argv_t = _check_argv(argv)
    loop = asyncio.get_running_loop()
    status_r, status_w = os.pipe()
    os.set_blocking(status_r, False)
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _ShimProtocol(loop),
            *_shim_command(argv_t, status_w),
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(status_w,),
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)

    run = _AsyncRun(argv_t, transport, protocol, status_r, on_line)
    if registry is not None:
        registry.add(run.pgid)
    try:
        if stdin_data is not None:
            stdin = transport.get_pipe_transport(0)
            assert isinstance(stdin, asyncio.WriteTransport)
            # close() flushes first; a command that exits without reading just breaks the pipe.
            stdin.write(stdin_data)
            stdin.close()
        returncode = await run.supervise()
    except (asyncio.CancelledError, Exception) as exc:
        if await run.terminate(grace_s) and not isinstance(exc, asyncio.CancelledError):
            raise asyncio.CancelledError() from exc
        raise
    finally:
        # Reached without terminate() on GeneratorExit (the loop dropped this coroutine) and on
        # KeyboardInterrupt/SystemExit: nothing may be awaited then, so kill synchronously.
        if not run.settled:
            run.kill_now()
        if registry is not None:
            registry.remove(run.pgid)
        with contextlib.suppress(RuntimeError):
            # RuntimeError: the loop is already closed, and with it the pipes.
            transport.close()
        os.close(status_r)
    return _finish(argv_t, returncode, run.output, check)


# ---------------------------------------------------------------------------------------------- sync


class _SyncRun:
    def __init__(
        self,
        argv: tuple[str, ...],
        proc: subprocess.Popen[bytes],
        status_fd: int,
        on_line: Callable[[str], None] | None,
        stdin_data: bytes | None,
    ) -> None:
        self.argv = argv
        self.proc = proc
        self.pgid = proc.pid
        self.status_fd = status_fd
        self.output = _OutputCollector()
        self.settled = False
        self.exited = False
        self.eof = False
        self._on_line = on_line
        self._deliver = on_line is not None
        self._stdin_data = memoryview(stdin_data or b"")
        self._selector = selectors.DefaultSelector()
        # The shim is our unreaped child, so its pid cannot be reused before we open the pidfd.
        self._pidfd = os.pidfd_open(proc.pid)
        self._selector.register(self._pidfd, selectors.EVENT_READ, "exit")
        self._stdout = _pipe(proc.stdout)
        os.set_blocking(self._stdout.fileno(), False)
        self._selector.register(self._stdout, selectors.EVENT_READ, "out")
        self._stdin = proc.stdin
        if self._stdin is not None:
            os.set_blocking(self._stdin.fileno(), False)
            self._selector.register(self._stdin, selectors.EVENT_WRITE, "in")

    def close(self) -> None:
        """Release the selector and the pidfd; the pipes belong to ``proc``."""
        self._selector.close()
        os.close(self._pidfd)

    def supervise(self, cancel_event: threading.Event | None) -> int:
        """Wait for the command and its group to end; returns the command's exit status."""
        poll_s = CANCEL_POLL_S if cancel_event is not None else None
        while not self.exited:
            if cancel_event is not None and cancel_event.is_set():
                raise ProcessCancelled(f"{shlex.join(self.argv)} was cancelled")
            self._step(poll_s)
        self.proc.wait()
        # The shim's last act was to SIGKILL its group; make sure that has happened.
        _await_group_gone_sync(self.pgid, GROUP_GONE_TIMEOUT_S)
        self.settled = True
        while not self.eof:
            if not self._step(DRAIN_IDLE_S):
                logger.warning(
                    "output pipe of %s still open after its process group died; a process escaped the group",
                    shlex.join(self.argv),
                )
                break
        if self.eof:
            self._emit(self.output.finish())
        status = _read_status(self.status_fd)
        if status is None:
            status = self.proc.returncode
        return status

    def terminate(self, grace_s: float, *, deliver: bool) -> None:
        """SIGTERM, up to ``grace_s`` for the group to go, then SIGKILL.

        Output keeps being read meanwhile (a command blocked on a full pipe cannot shut down), but only
        passed to on_line if ``deliver``: not after on_line itself failed.
        """
        self._deliver = self._deliver and deliver
        if not self.exited:
            _signal_group(self.pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while not self.exited and (left := deadline - time.monotonic()) > 0:
                self._step(left)
        if not self.exited:
            _signal_group(self.pgid, signal.SIGKILL)
        self.kill_now()

    def kill_now(self) -> None:
        _kill_shim_group(self.proc)
        self.settled = True

    def _step(self, timeout: float | None) -> bool:
        """One round of I/O; returns whether anything happened."""
        events = self._selector.select(timeout)
        for key, _ in events:
            if key.data == "exit":
                self.exited = True
                self._selector.unregister(self._pidfd)
            elif key.data == "out":
                self._read_output()
            elif key.data == "in":
                self._write_input()
        return bool(events)

    def _read_output(self) -> None:
        try:
            data = os.read(self._stdout.fileno(), _READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            self._emit(self.output.feed(data))
        else:
            self.eof = True
            self._selector.unregister(self._stdout)

    def _write_input(self) -> None:
        assert self._stdin is not None
        try:
            written = os.write(self._stdin.fileno(), self._stdin_data[:_READ_CHUNK])
        except BlockingIOError:
            return
        except OSError:
            # The command exited or closed its stdin without reading everything; that is its business.
            written = len(self._stdin_data)
        self._stdin_data = self._stdin_data[written:]
        if not self._stdin_data:
            self._selector.unregister(self._stdin)
            with contextlib.suppress(OSError):
                self._stdin.close()
            self._stdin = None

    def _emit(self, lines: list[str]) -> None:
        if self._deliver and self._on_line is not None:
            for line in lines:
                self._on_line(line)


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    assert stream is not None
    return stream


def run_supervised_sync(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    grace_s: float = 5.0,
    check: bool = True,
    stdin_data: bytes | None = None,
    registry: ProcessRegistry | None = None,
    cancel_event: threading.Event | None = None,
) -> RunResult:
    """Blocking twin of :func:`run_supervised` for handlers running in threads.

    ``on_line`` is called on the calling thread. Setting ``cancel_event`` (checked every
    CANCEL_POLL_S) tears the group down like a cancellation does and raises ProcessCancelled.
    """
    argv_t = _check_argv(argv)
    status_r, status_w = os.pipe()
    os.set_blocking(status_r, False)
    try:
        proc = subprocess.Popen(
            _shim_command(argv_t, status_w),
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(status_w,),
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)

    if registry is not None:
        registry.add(proc.pid)
    run: _SyncRun | None = None
    try:
        run = _SyncRun(argv_t, proc, status_r, on_line, stdin_data)
        returncode = run.supervise(cancel_event)
    except Exception as exc:
        if run is not None and not run.settled:
            run.terminate(grace_s, deliver=isinstance(exc, ProcessCancelled))
        raise
    finally:
        if run is None or not run.settled:
            _kill_shim_group(proc)
        if run is not None:
            run.close()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if registry is not None:
            registry.remove(proc.pid)
        os.close(status_r)
    return _finish(argv_t, returncode, run.output, check)


def _kill_shim_group(proc: subprocess.Popen[Any]) -> None:
    # Until wait() reaps the shim its pid stays reserved, so the pgid cannot name anyone else yet.
    if proc.poll() is None or process_group_members(proc.pid):
        _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GROUP_GONE_TIMEOUT_S)
    _await_group_gone_sync(proc.pid, GROUP_GONE_TIMEOUT_S)
