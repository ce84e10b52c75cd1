"""A wake-up that arrives while every slot is busy must not stop the worker's event loop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.processes import REPO

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from jobmill.handlers import HandlerRegistry, HandlerSpec
    from jobmill.service import JobService, SubmitRequest
    from jobmill.store import open_store
    from jobmill.worker.worker import Worker, WorkerConfig

    folder = Path(sys.argv[1])
    worker = None

    async def busy(ctx):
        # Every slot is taken (concurrency 1): a wake-up now, as a new_job notification or a
        # recovered lease would bring, must leave the loop free to run this handler's timer.
        worker._wake.set()
        await asyncio.sleep(0.05)

    registry = HandlerRegistry()
    registry.register(HandlerSpec("t.busy", busy, queue="q"))
    store = open_store(f"sqlite:///{folder / 'jobs.db'}")
    service = JobService(store, registry=registry)
    for _ in range(3):
        service.submit(SubmitRequest(kind="t.busy"))
    worker = Worker(service, registry, WorkerConfig(
        queues=["q"], concurrency=1, burst=True, workdir_root=folder / "work"))
    stats = asyncio.run(worker.run())
    print("completed", stats.completed)
    """
)


def test_a_wakeup_while_all_slots_are_busy_does_not_starve_the_loop(tmp_path: Path) -> None:
    # In a child process: the broken worker spins without ever yielding, and only a kill stops that.
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "3"]
