"""RateLimited: a server with a tiny request budget per key answers 429 with Retry-After."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from jobmill.client import NotFound, RateLimited
from tests.client.conftest import MakeClient
from tests.client.live import Live, live_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    settings = {"JOBMILL_RATE_LIMIT_BURST": "2", "JOBMILL_RATE_LIMIT_PER_S": "0.2"}
    with live_service(tmp_path_factory.mktemp("ratelimited"), **settings) as service:
        yield service


def test_rate_limited_carries_retry_after(make_client: MakeClient, live: Live) -> None:
    client = make_client(live.new_key())  # a fresh key: a full bucket of 2
    for _ in range(2):
        with pytest.raises(NotFound):
            client.get(uuid.uuid4())
    with pytest.raises(RateLimited) as limited:
        client.get(uuid.uuid4())
    assert limited.value.status == 429 and limited.value.code == "rate_limited"
    assert 1 <= limited.value.retry_after <= 5
