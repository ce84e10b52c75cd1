"""Short versions of the worker-fault chaos (`make chaos` runs the long ones): real `jobmill worker`
processes SIGKILLed mid-job, a real PostgreSQL restart, SIGTERM to every worker under load.

Each asserts every check its scenario makes (see chaos/workers.py and chaos/analysis.py).
"""

from __future__ import annotations

import pytest
from chaos.report import Section
from chaos.support import pg_ensure_running

from chaos import workers
from tests.support.postgres import require_server

pytestmark = pytest.mark.slow


def assert_passed(section: Section) -> None:
    failures = [f"{c.name}: {c.detail}" for c in section.failures()]
    assert not failures, f"{section.title}: " + "; ".join(failures) + f"\nfigures: {section.figures}"


def test_worker_kills_on_sqlite() -> None:
    assert_passed(workers.run_faults(workers.sqlite_plan(short=True), log=lambda _: None))


@pytest.mark.postgres
def test_worker_kills_and_a_postgres_restart() -> None:
    require_server()
    try:
        section = workers.run_faults(workers.postgres_plan(short=True), log=lambda _: None)
    finally:
        pg_ensure_running()  # whatever happened, the server runs again for the tests after this one
    assert_passed(section)
    assert section.figures["PostgreSQL restarts"] == 1


@pytest.mark.postgres
def test_graceful_shutdown_under_load() -> None:
    require_server()
    assert_passed(workers.run_graceful(workers.graceful_plan(short=True), log=lambda _: None))
