"""The load scenario of `make chaos`, short: a real `jobmill serve` holding 200 live event streams while it
is polled at 100 GET/s (see chaos/load.py); every check of its report must hold."""

from __future__ import annotations

import pytest

from chaos import load, report

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_short_load_run_passes_every_check() -> None:
    section = load.run(short=True)
    assert section.checks, "the load run made no checks"
    assert section.passed, report.render([section], "tests/chaos/test_load_short.py")
