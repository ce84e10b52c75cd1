"""Two-step cancel (JOBMILL_CANCEL_CONFIRM=true): the client sends the confirm token back by itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from jobmill.client import BadRequest, ConfirmationRequired
from jobmill.domain.job import JobStatus
from tests.client.live import Live, live_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_service(tmp_path_factory.mktemp("confirm"), JOBMILL_CANCEL_CONFIRM="true") as service:
        yield service


def test_two_step_cancel(client: Any) -> None:
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    job = client.submit("cli.steps", queue=queue)
    assert client.cancel(job.id).status is JobStatus.CANCELLED  # both steps, transparently

    other = client.submit("cli.steps", queue=queue)
    with pytest.raises(ConfirmationRequired) as asked:
        client.cancel(other.id, confirm=False)
    assert asked.value.job.id == other.id and asked.value.job.status is JobStatus.PENDING
    assert asked.value.expires_in_s > 0 and client.get(other.id).status is JobStatus.PENDING
    with pytest.raises(BadRequest):
        client.cancel(other.id, confirm_token=asked.value.token + "x")
    assert client.cancel(other.id, confirm_token=asked.value.token).status is JobStatus.CANCELLED
