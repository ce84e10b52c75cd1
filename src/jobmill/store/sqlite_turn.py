"""The write turn of the processes that share one SQLite file: a kernel lock queue in front of SQLite's lock.

SQLite's busy handler polls. A writer that finds the database locked sleeps 1, 2, 5, 10, ... ms between
tries, so with two busy workers most of a write's wait is sleep past the moment the lock came free (the
drain benchmark: about 8,000 jobs/s with two workers). Taking an flock on a file beside the database first
queues the writers in the kernel instead: the next one wakes the moment the holder releases (about 11,000
jobs/s). SQLite's own lock still guards the data; the turn only orders the processes waiting for it. The
kernel drops the turn of a process that exits or is killed, as it does SQLite's lock.

flock has no timed wait, and a write must not wait forever for a process that is stopped mid-transaction
(SIGSTOP, a debugger): a contended acquire blocks in a helper thread, on its own open file description,
while the caller waits for it with a deadline. A helper whose caller gave up releases the turn as soon as
it gets it. The uncontended acquire, by far the most common, is one non-blocking flock call.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

log = logging.getLogger("jobmill.store.sqlite")

LOCK_SUFFIX = "-jobmill-lock"


class TurnTimeout(Exception):
    """Another process held the write turn for the whole wait."""


class _Waiter:
    """One contended acquire: a helper thread blocks in flock on its own descriptor."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.done = threading.Event()  # set once the helper has the turn or failed to get it
        self.error: OSError | None = None
        self._guard = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._wait, name="jobmill-sqlite-turn", daemon=True).start()

    def _wait(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(self.fd)
            self.error = exc
            self.done.set()  # the caller raises it at once rather than waiting out its deadline
            return
        with self._guard:
            if not self._abandoned:
                self.done.set()
                return
        fcntl.flock(self.fd, fcntl.LOCK_UN)  # the caller gave up: pass the turn on at once
        os.close(self.fd)

    def abandon(self) -> bool:
        """Give up waiting; False if the helper finished meanwhile (the caller takes its outcome)."""
        with self._guard:
            if self.done.is_set():
                return False
            self._abandoned = True
            return True


class WriterTurn:
    """Acquire before BEGIN IMMEDIATE, release after COMMIT or ROLLBACK. Not re-entrant; one holder per
    store at a time (the store's connection lock serialises its threads first)."""

    def __init__(self, database_path: str) -> None:
        self.path = database_path + LOCK_SUFFIX
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._held: int | None = None  # the descriptor that holds the turn

    def acquire(self, timeout: float) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            self._held = self._fd
            return
        waiter = _Waiter(self.path)
        if not waiter.done.wait(timeout) and waiter.abandon():
            raise TurnTimeout(f"another process held the SQLite write turn ({self.path}) for {timeout:g} s")
        if waiter.error is not None:
            raise waiter.error
        self._held = waiter.fd

    def release(self) -> None:
        fd, self._held = self._held, None
        if fd is None:
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        if fd != self._fd:
            os.close(fd)

    def close(self) -> None:
        self.release()
        os.close(self._fd)


def open_turn(database_path: str) -> WriterTurn | None:
    """The write turn of a database file, or None where the lock file cannot be made (a read-only
    directory, say): the store then waits on SQLite's busy handler alone, slower but as correct."""
    try:
        return WriterTurn(database_path)
    except OSError as exc:
        log.warning("no write turn for %s (writers wait on SQLite's busy handler): %s", database_path, exc)
        return None
