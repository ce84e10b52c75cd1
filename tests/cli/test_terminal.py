"""`jobmill submit --wait` in a pseudo-terminal, as a person sees it: the live progress bar, Ctrl-C."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
import uuid
import warnings
from collections.abc import Callable

import pytest

from jobmill.client import Client
from jobmill.domain.job import JobStatus
from tests.client.live import Live
from tests.support.processes import REPO

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
Reaction = Callable[[str, Callable[[bytes], None]], None]


def run_in_terminal(
    env: dict[str, str], *args: str, react: Reaction | None = None, timeout: float = 30
) -> tuple[int, str]:
    """Run `jobmill ARGS` on a new pseudo-terminal (120x40) as its controlling terminal; `react(screen,
    type)` sees all the output so far (escape codes removed) and may type. Returns (exit code, screen)."""
    with warnings.catch_warnings():  # the child only execs: fork is safe even if threads exist
        warnings.simplefilter("ignore", DeprecationWarning)
        pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-m", "jobmill.cli.main", *args], env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    raw = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child is gone and the terminal closed
                    break
                if not chunk:
                    break
                raw += chunk
            if react is not None:
                react(ANSI.sub("", raw.decode(errors="replace")), lambda keys: os.write(fd, keys) and None)
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), ANSI.sub("", raw.decode(errors="replace"))


def terminal_env(live: Live) -> dict[str, str]:
    env = live.cli_env(TERM="xterm-256color")
    for name in ("NO_COLOR", "COLUMNS", "LINES", "CI", "TERM_PROGRAM"):
        env.pop(name, None)
    return env


def test_progress_bar_advances(live: Live) -> None:
    code, screen = run_in_terminal(
        terminal_env(live), "submit", "cli.steps", "-p", "steps=8", "-p", "delay_s=0.15", "--wait"
    )
    assert code == 0, screen
    # The bar is redrawn in place: each redraw shows the kind, the stage and the percent.
    percents = [int(p) for p in re.findall(r"cli\.steps work [━╺╸ ]+\s*(\d+)%", screen)]
    assert len(set(percents)) >= 4, screen
    assert percents == sorted(percents) and percents[-1] >= 75, percents
    assert re.search(r"cli\.steps completed [━ ]+\s*100%", screen), screen  # the last frame
    assert "prepare" in screen and '"steps": 8' in screen


def _ctrl_c_then_answer(live: Live, answer: bytes) -> tuple[int, str, str]:
    """`submit --wait` of a job that no worker serves (it waits in line); Ctrl-C once its position shows,
    then `answer` at the "cancel job?" prompt. The exit code, the screen and the job's id."""
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    typed: list[bytes] = []

    def react(screen: str, type_: Callable[[bytes], None]) -> None:
        waiting = not typed and f"position 1 in queue {queue}" in screen
        asked = len(typed) == 1 and "cancel job" in screen and screen.rstrip().endswith("[y/N]:")
        if waiting or asked:
            keys = b"\x03" if waiting else answer  # Ctrl-C, then the answer
            typed.append(keys)
            type_(keys)

    code, screen = run_in_terminal(
        terminal_env(live), "submit", "cli.steps", "--queue", queue, "--wait", react=react
    )
    assert typed == [b"\x03", answer], screen
    return code, screen, screen.split()[0]


def test_ctrl_c_offers_to_cancel(live: Live) -> None:
    code, screen, job_id = _ctrl_c_then_answer(live, b"y\r")
    assert code == 3, screen
    assert f"jobmill: job {job_id} was cancelled" in screen
    with Client(live.url, live.admin_key) as client:
        assert client.get(job_id).status is JobStatus.CANCELLED


def test_ctrl_c_at_the_cancel_prompt_leaves_the_job_running(live: Live) -> None:
    """A second Ctrl-C answers the prompt with "no": the command stops waiting (exit 130) and says so,
    and the job goes on."""
    code, screen, job_id = _ctrl_c_then_answer(live, b"\x03")
    assert code == 130, screen
    assert f"stopped waiting; job {job_id} goes on" in screen and "Aborted" not in screen
    with Client(live.url, live.admin_key) as client:
        assert client.get(job_id).status is JobStatus.PENDING
