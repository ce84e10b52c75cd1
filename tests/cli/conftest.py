"""One real service for all the command tests (`jobmill serve --app tests.cli.handlers`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobmill.client import Client
from tests.client.live import Live, live_service


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_service(tmp_path_factory.mktemp("cli")) as service:
        yield service


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(live.url, live.admin_key, timeout=10) as c:
        yield c
