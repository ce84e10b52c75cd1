"""Process-group guardian between a worker and one external command.

Run as ``python -I -S shim.py <parent_pid> <status_fd> -- argv...`` by the supervisor, which starts it
as the leader of a new session, so its process group is exactly "the command and everything it spawns".
The shim never outlives its job: once the command exits, when the supervisor escalates, or when the
worker dies (even by SIGKILL, via PR_SET_PDEATHSIG), the whole group is SIGKILLed, the shim included.

Deliberately standard-library only and free of jobmill imports: it is executed by file path with
``-I -S`` so it starts in ~15 ms and works whether or not jobmill is importable in the child.
"""

from __future__ import annotations

import ctypes
import os
import sys

# `typing` and `signal` (via enum) cost several ms of startup, a third of the shim's own overhead;
# `_signal` is the C module behind `signal`, with the same functions and plain-int constants.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from types import FrameType
else:
    import _signal as signal

PR_SET_PDEATHSIG = 1
EXIT_CANNOT_EXEC = 127
EXIT_USAGE = 2

_terminate_requested = False


def _kill_group_and_exit() -> None:
    os.killpg(0, signal.SIGKILL)
    # Unreachable in practice: the SIGKILL above includes this process.
    os._exit(EXIT_CANNOT_EXEC)


def _on_parent_death(signum: int, frame: FrameType | None) -> None:
    _kill_group_and_exit()


def _on_terminate(signum: int, frame: FrameType | None) -> None:
    # killpg(SIGTERM) reaches the command directly; the shim keeps waiting so the command's own exit
    # status is reported. The flag only matters if SIGTERM lands before the command was started.
    global _terminate_requested
    _terminate_requested = True


def _set_pdeathsig(libc: ctypes.CDLL, signum: int) -> None:
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def _exec_command(argv: list[str], libc: ctypes.CDLL, shim_pid: int) -> None:
    """Runs in the forked child; never returns."""
    try:
        # The shim ignores SIGINT, and Python ignores SIGPIPE/SIGXFSZ at startup; ignored dispositions
        # survive exec, so restore what a normally started command expects.
        for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        # If the shim alone is SIGKILLed (OOM killer, a stray kill), the command must not run on unwatched.
        _set_pdeathsig(libc, signal.SIGKILL)
        if os.getppid() != shim_pid:
            os._exit(EXIT_CANNOT_EXEC)
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"jobmill shim: cannot execute {argv[0]!r}: {exc.strerror or exc}\n".encode())
    finally:
        os._exit(EXIT_CANNOT_EXEC)


def main(args: list[str]) -> None:
    if len(args) < 4 or args[2] != "--":
        os.write(2, b"usage: shim.py <parent_pid> <status_fd> -- argv...\n")
        os._exit(EXIT_USAGE)
    # Every kill below targets "our" process group; as a member of someone else's group that would
    # take down the caller, so only run as the leader the supervisor makes us.
    if os.getpgid(0) != os.getpid():
        os.write(2, b"jobmill shim: must be started as a process group leader (start_new_session=True)\n")
        os._exit(EXIT_USAGE)
    parent_pid = int(args[0])
    status_fd = int(args[1])
    argv = args[3:]

    # A Ctrl-C on the worker's terminal is the worker's to handle; it decides when the job dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_terminate)
    # Installed before prctl so the death signal can never take the default action, which would kill
    # the shim alone and orphan the command.
    signal.signal(signal.SIGUSR1, _on_parent_death)
    libc = ctypes.CDLL(None, use_errno=True)
    _set_pdeathsig(libc, signal.SIGUSR1)
    # The worker may have died between fork and prctl; the death signal would then never come.
    if os.getppid() != parent_pid:
        _kill_group_and_exit()

    # The command must not hold the status pipe: only the shim reports, and only once.
    os.set_inheritable(status_fd, False)

    if _terminate_requested:
        returncode = -signal.SIGTERM
    else:
        shim_pid = os.getpid()
        child = os.fork()
        if child == 0:
            _exec_command(argv, libc, shim_pid)
        _, wait_status = os.waitpid(child, 0)
        returncode = os.waitstatus_to_exitcode(wait_status)

    try:
        os.write(status_fd, f"{returncode}\n".encode())
    finally:
        # Background leftovers of the command (`sleep 600 &`) share the group and die with it here.
        _kill_group_and_exit()


if __name__ == "__main__":
    main(sys.argv[1:])
