"""The supervised runner against real processes and signals (Linux only: /proc, prctl)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from jobmill.worker.supervisor import (
    OUTPUT_TAIL_BYTES,
    ProcessCancelled,
    ProcessFailed,
    ProcessRegistry,
    RunResult,
    _OutputCollector,
    process_group_members,
    run_supervised,
    run_supervised_sync,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and prctl")

TREE = ["sh", "-c", "sleep 600 & sleep 600"]
# `trap "" TERM` sets SIG_IGN, which the sleeps inherit across fork and exec.
TERM_PROOF_TREE = ["sh", "-c", 'trap "" TERM; sleep 600 & sleep 600 & wait; wait']
DEAD_WITHIN_S = 2.0


def live_group_pids(pgid: int) -> list[int]:
    """Independent of the module under test: every non-zombie process in /proc whose pgid is ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rfind(b")") + 2 :].split()[:3]
        if int(group) == pgid and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def is_live_sleep(pid: int) -> bool:
    """``pid`` is a running (non-zombie) `sleep`; a recycled pid running something else does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return b"(sleep)" in stat and stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def tree_is_up(pgid: int) -> bool:
    """Shim, and both `sleep 600` of TREE-like commands, are in the group."""
    pids = live_group_pids(pgid)
    return pgid in pids and sum(comm(pid) == "sleep" for pid in pids) == 2


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(0.005)
    return True


async def async_wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        await asyncio.sleep(0.005)
    return True


class Reaper:
    """Kills whatever a test started, whether or not the test got as far as cleaning up itself."""

    def __init__(self) -> None:
        self.registry = ProcessRegistry()
        self.groups: set[int] = set()
        self.pids: set[int] = set()
        self.popens: list[subprocess.Popen[bytes]] = []

    def group(self, pgid: int) -> int:
        self.groups.add(pgid)
        return pgid

    def only_group(self) -> int:
        """The one group in the registry, remembered for teardown; waits for it to appear."""
        assert wait_until(lambda: len(self.registry) == 1, 5.0), "the command never started"
        return self.group(next(iter(self.registry.pgids())))

    async def async_only_group(self) -> int:
        assert await async_wait_until(lambda: len(self.registry) == 1, 5.0), "the command never started"
        return self.group(next(iter(self.registry.pgids())))

    def cleanup(self) -> None:
        self.registry.kill_all_now()
        for popen in self.popens:
            popen.kill()
            popen.wait()
            for stream in (popen.stdin, popen.stdout, popen.stderr):
                if stream is not None:
                    stream.close()
        for pgid in self.groups:
            if live_group_pids(pgid):
                os.killpg(pgid, signal.SIGKILL)
        for pid in self.pids:
            if is_live_sleep(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    try:
        yield r
    finally:
        r.cleanup()


def run(coro: Awaitable[RunResult]) -> RunResult:
    async def main() -> RunResult:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


# ------------------------------------------------------------------------------------ output, status


def test_lines_reach_on_line_in_order_with_status_and_tail() -> None:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        await asyncio.sleep(0)
        lines.append(line)

    script = "echo one; echo two >&2; echo three; printf 'crlf\\r\\nprogress 1\\rprogress 2\\rlast'"
    result = run(run_supervised(["sh", "-c", script], on_line=on_line))

    assert lines == ["one", "two", "three", "crlf", "progress 1", "progress 2", "last"]
    assert result == RunResult(
        argv=("sh", "-c", script),
        returncode=0,
        output_tail="one\ntwo\nthree\ncrlf\r\nprogress 1\rprogress 2\rlast",
    )


def test_nonzero_exit_raises_process_failed_when_checked() -> None:
    argv = ["sh", "-c", "echo about to fail >&2; exit 3"]
    with pytest.raises(ProcessFailed) as failed:
        run(run_supervised(argv))
    assert failed.value.result.returncode == 3
    assert failed.value.result.output_tail == "about to fail\n"
    assert "exited with status 3" in str(failed.value)

    assert run(run_supervised(argv, check=False)).returncode == 3


def test_signal_death_is_reported_as_negative_signal() -> None:
    result = run(run_supervised(["sh", "-c", "kill -USR2 $$"], check=False))
    assert result.returncode == -signal.SIGUSR2


def test_missing_executable_gives_127() -> None:
    result = run(run_supervised(["/nonexistent/jobmill-no-such-tool", "x"], check=False))
    assert result.returncode == 127
    assert "/nonexistent/jobmill-no-such-tool" in result.output_tail


def test_stdin_data_env_and_cwd_reach_the_command(tmp_path: Path) -> None:
    script = 'cat; echo "$JOBMILL_TEST_VAR"; pwd'
    result = run(
        run_supervised(
            ["sh", "-c", script],
            stdin_data=b"from stdin\n",
            env={"PATH": os.environ["PATH"], "JOBMILL_TEST_VAR": "from env"},
            cwd=tmp_path,
        )
    )
    assert result.output_tail == f"from stdin\nfrom env\n{tmp_path}\n"


def test_without_stdin_data_the_command_reads_eof() -> None:
    assert run(run_supervised(["cat"])).output_tail == ""


def test_command_starts_with_default_signals_and_only_its_own_fds() -> None:
    """Python ignores SIGPIPE/SIGXFSZ and the shim ignores SIGINT; none of that may reach the command,
    nor may the shim's status pipe."""
    sig_ignored = run(run_supervised(["grep", "^SigIgn", "/proc/self/status"])).output_tail
    mask = int(sig_ignored.split()[1], 16)
    # Only these bits: whatever the caller's own environment ignores (e.g. a CI runner) is not ours to undo.
    ours = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGUSR1)
    assert [s.name for s in ours if mask & (1 << (s - 1))] == []
    fds = [
        line.rsplit(" ", 3)[1:]
        for line in run(run_supervised(["ls", "-l", "/proc/self/fd"])).output_tail.splitlines()[1:]
    ]
    pipes = sorted(fd for fd, _, target in fds if target.startswith("pipe:"))
    assert pipes == ["1", "2"], fds


def test_output_tail_is_bounded_and_every_line_is_delivered() -> None:
    count = 0

    def on_line(line: str) -> None:
        nonlocal count
        count += 1
        assert line == str(count)

    result = run(run_supervised(["seq", "1", "60000"], on_line=on_line))
    assert count == 60000
    assert len(result.output_tail) <= OUTPUT_TAIL_BYTES
    assert result.output_tail.endswith("\n59999\n60000\n")


def test_line_splitting_survives_any_chunking() -> None:
    data = "a\r\nbé\rc\n\nd\r\r\ne€x".encode()
    expected = ["a", "bé", "c", "", "d", "", "e€x"]
    for cut in range(1, len(data)):
        for cut2 in range(cut, len(data)):
            collector = _OutputCollector()
            lines = [
                *collector.feed(data[:cut]),
                *collector.feed(data[cut:cut2]),
                *collector.feed(data[cut2:]),
                *collector.finish(),
            ]
            assert lines == expected, (cut, cut2)


# ------------------------------------------------------------------------------------ cancellation


def test_cancel_kills_the_whole_tree(reaper: Reaper) -> None:
    async def main() -> tuple[int, float]:
        task = asyncio.create_task(run_supervised(TREE, registry=reaper.registry))
        pgid = await reaper.async_only_group()
        assert await async_wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        assert process_group_members(pgid) == sorted(live_group_pids(pgid))

        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The contract: once CancelledError surfaces, the group is already gone.
        assert live_group_pids(pgid) == []
        return pgid, time.monotonic() - started

    pgid, elapsed = asyncio.run(main())
    print(f"cancel -> tree dead: {elapsed * 1000:.1f} ms")
    assert elapsed < DEAD_WITHIN_S
    assert pgid not in reaper.registry


def test_cancel_escalates_to_sigkill_after_grace(reaper: Reaper) -> None:
    grace_s = 0.3

    async def main() -> float:
        task = asyncio.create_task(run_supervised(TERM_PROOF_TREE, grace_s=grace_s, registry=reaper.registry))
        pgid = await reaper.async_only_group()
        assert await async_wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        # Otherwise this would only be testing the SIGTERM path again.
        assert all(ignores_sigterm(pid) for pid in live_group_pids(pgid) if pid != pgid)

        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert live_group_pids(pgid) == []
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    print(f"cancel -> TERM-proof tree dead: {elapsed * 1000:.1f} ms (grace {grace_s * 1000:.0f} ms)")
    assert grace_s <= elapsed < grace_s + DEAD_WITHIN_S


def test_second_cancel_cuts_grace_short_but_cleanup_completes(reaper: Reaper) -> None:
    async def main() -> float:
        task = asyncio.create_task(run_supervised(TERM_PROOF_TREE, grace_s=60, registry=reaper.registry))
        pgid = await reaper.async_only_group()
        assert await async_wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)

        started = time.monotonic()
        task.cancel()
        await asyncio.sleep(0.1)
        assert not task.done(), "the first cancel must wait out the grace period"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert live_group_pids(pgid) == []
        return time.monotonic() - started

    assert asyncio.run(main()) < DEAD_WITHIN_S


def test_failing_on_line_kills_the_tree_and_propagates(reaper: Reaper) -> None:
    seen_group: list[int] = []

    def on_line(line: str) -> None:
        pgid = reaper.group(next(iter(reaper.registry.pgids())))
        assert wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        seen_group.append(pgid)
        raise RuntimeError(f"handler choked on {line!r}")

    argv = ["sh", "-c", "sleep 600 & echo hello; sleep 600"]
    with pytest.raises(RuntimeError, match="choked on 'hello'"):
        run(run_supervised(argv, on_line=on_line, grace_s=1, registry=reaper.registry))
    assert live_group_pids(seen_group[0]) == []


def test_event_loop_teardown_kills_the_tree(reaper: Reaper) -> None:
    """asyncio.run() cancels tasks left running when main() returns; the tree must not survive that."""
    pgids: list[int] = []

    async def main() -> None:
        task = asyncio.create_task(run_supervised(TREE, registry=reaper.registry))
        pgid = await reaper.async_only_group()
        assert await async_wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        pgids.append(pgid)
        assert not task.done()

    asyncio.run(main())
    assert live_group_pids(pgids[0]) == []


# ------------------------------------------------------------------------------- normal exit, worker


def test_background_leftovers_die_when_the_command_exits(reaper: Reaper) -> None:
    lines: list[str] = []
    result = run(run_supervised(["sh", "-c", "sleep 600 & echo $!; echo done"], on_line=lines.append))
    leftover = int(lines[0])
    reaper.pids.add(leftover)
    assert result.returncode == 0
    assert lines[1:] == ["done"]
    # run_supervised returns only once the group is gone: no polling needed here.
    assert not is_live_sleep(leftover)


def test_escaped_process_cannot_hang_the_run(reaper: Reaper, tmp_path: Path) -> None:
    """A process that leaves the group (not killed: out of reach by design) keeps the output pipe open;
    the run must end anyway."""
    pidfile = tmp_path / "escapee.pid"
    # The command only exits once the escapee has left the group, so it cannot be killed with it.
    script = (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 600' & "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; echo started"
    )
    lines: list[str] = []
    started = time.monotonic()
    try:
        result = run(run_supervised(["sh", "-c", script], on_line=lines.append))
    finally:
        with contextlib.suppress(OSError, ValueError):
            reaper.pids.add(int(pidfile.read_text()))
    assert time.monotonic() - started < 5
    assert (result.returncode, lines) == (0, ["started"])
    assert wait_until(lambda: bool(reaper.pids) and all(is_live_sleep(pid) for pid in reaper.pids), 2.0)


def test_worker_sigkill_kills_the_tree(reaper: Reaper) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from jobmill.worker.supervisor import ProcessRegistry, run_supervised

        async def main():
            registry = ProcessRegistry()
            task = asyncio.create_task(run_supervised({TREE!r}, registry=registry))
            while not len(registry):
                await asyncio.sleep(0.005)
            print(next(iter(registry.pgids())), flush=True)
            await task

        asyncio.run(main())
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    reaper.popens.append(worker)
    assert worker.stdout is not None
    ready, _, _ = select.select([worker.stdout], [], [], 10)
    assert ready, "the worker never reported its process group"
    pgid = reaper.group(int(worker.stdout.readline()))
    assert wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
    assert Path(f"/proc/{pgid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1] == str(worker.pid).encode()

    started = time.monotonic()
    worker.kill()
    worker.wait()
    assert wait_until(lambda: not live_group_pids(pgid), DEAD_WITHIN_S), live_group_pids(pgid)
    print(f"worker SIGKILL -> tree dead: {(time.monotonic() - started) * 1000:.1f} ms")


# ----------------------------------------------------------------------------------------- registry


def test_registry_kill_all_from_outside_the_task(reaper: Reaper) -> None:
    async def main() -> RunResult:
        task = asyncio.create_task(run_supervised(TREE, check=False, registry=reaper.registry))
        pgid = await reaper.async_only_group()
        assert await async_wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        await reaper.registry.kill_all(grace_s=2)
        assert live_group_pids(pgid) == []
        return await task

    result = asyncio.run(main())
    assert result.returncode == -signal.SIGTERM
    assert len(reaper.registry) == 0


def test_registry_kill_all_escalates_for_term_proof_trees(reaper: Reaper) -> None:
    async def main() -> RunResult:
        task = asyncio.create_task(run_supervised(TERM_PROOF_TREE, check=False, registry=reaper.registry))
        pgid = await reaper.async_only_group()
        assert await async_wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        await reaper.registry.kill_all(grace_s=0.2)
        assert live_group_pids(pgid) == []
        return await task

    assert asyncio.run(main()).returncode == -signal.SIGKILL


# --------------------------------------------------------------------------------------------- sync


def test_sync_runner_output_and_status() -> None:
    lines: list[str] = []
    result = run_supervised_sync(
        ["sh", "-c", "cat; echo err >&2; exit 4"], on_line=lines.append, stdin_data=b"in\n", check=False
    )
    assert (result.returncode, lines, result.output_tail) == (4, ["in", "err"], "in\nerr\n")
    with pytest.raises(ProcessFailed):
        run_supervised_sync(["false"])
    assert run_supervised_sync(["/nonexistent/jobmill-tool"], check=False).returncode == 127


def test_sync_failing_on_line_kills_the_tree_and_propagates(reaper: Reaper) -> None:
    calls: list[int] = []

    def on_line(line: str) -> None:
        pgid = reaper.group(next(iter(reaper.registry.pgids())))
        assert wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        calls.append(pgid)
        raise RuntimeError(f"handler choked on {line!r}")

    argv = ["sh", "-c", "sleep 600 & echo hello; echo more; sleep 600"]
    with pytest.raises(RuntimeError, match="choked on 'hello'"):
        run_supervised_sync(argv, on_line=on_line, grace_s=1, registry=reaper.registry)
    assert len(calls) == 1, "on_line must not be called again once it failed"
    assert live_group_pids(calls[0]) == []


def test_sync_cancel_event_kills_the_tree(reaper: Reaper) -> None:
    cancel = threading.Event()
    outcome: list[BaseException | RunResult] = []

    def worker() -> None:
        try:
            outcome.append(run_supervised_sync(TREE, cancel_event=cancel, registry=reaper.registry))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        pgid = reaper.only_group()
        assert wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        started = time.monotonic()
        cancel.set()
        assert wait_until(lambda: not live_group_pids(pgid), DEAD_WITHIN_S), live_group_pids(pgid)
        print(f"sync cancel_event -> tree dead: {(time.monotonic() - started) * 1000:.1f} ms")
        thread.join(DEAD_WITHIN_S)
    finally:
        cancel.set()
        thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ProcessCancelled), outcome


def test_sync_cancel_escalates_to_sigkill_after_grace(reaper: Reaper) -> None:
    cancel = threading.Event()
    outcome: list[BaseException | RunResult] = []

    def worker() -> None:
        try:
            run_supervised_sync(TERM_PROOF_TREE, cancel_event=cancel, grace_s=0.3, registry=reaper.registry)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        pgid = reaper.only_group()
        assert wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        started = time.monotonic()
        cancel.set()
        thread.join(0.3 + DEAD_WITHIN_S)
        elapsed = time.monotonic() - started
        assert not thread.is_alive()
        assert live_group_pids(pgid) == []
        assert elapsed >= 0.3
    finally:
        cancel.set()
        thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], ProcessCancelled), outcome


def test_sync_registry_kill_all_now(reaper: Reaper) -> None:
    outcome: list[BaseException | RunResult] = []

    def worker() -> None:
        try:
            outcome.append(run_supervised_sync(TERM_PROOF_TREE, check=False, registry=reaper.registry))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        pgid = reaper.only_group()
        assert wait_until(lambda: tree_is_up(pgid), 5.0), live_group_pids(pgid)
        reaper.registry.kill_all_now()
        assert wait_until(lambda: not live_group_pids(pgid), DEAD_WITHIN_S), live_group_pids(pgid)
    finally:
        reaper.registry.kill_all_now()
        thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], RunResult), outcome
    assert outcome[0].returncode == -signal.SIGKILL
