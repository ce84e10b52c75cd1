"""Queue positions and the admin priority change (issue 3, acceptance 2)."""

from __future__ import annotations

from jobmill.api.app import API_PREFIX
from tests.api.harness import Api


def _positions(api: Api, ids: list[str]) -> dict[str, int | None]:
    return {job_id: api.job(api.user, job_id)["queue_position"] for job_id in ids}


def test_positions_follow_claim_order_and_priority_change_moves_a_job(api: Api) -> None:
    priorities = [0, 5, -1, 5, 2]
    ids = [api.submit(api.user, priority=p)["id"] for p in priorities]
    # A job of another queue is not ahead of them.
    api.submit(api.user, "t.other", priority=100)

    positions = _positions(api, ids)
    expected_order = [ids[1], ids[3], ids[4], ids[0], ids[2]]  # priority desc, then submission order
    assert [positions[i] for i in expected_order] == [1, 2, 3, 4, 5]
    assert api.get(f"{API_PREFIX}/jobs", token=api.user).json()["jobs"][0]["queue_position"] is not None

    # The admin moves the last job to the front; the answer's position is the one the next GET shows.
    answer = api.request(
        "PATCH", f"{API_PREFIX}/jobs/{ids[2]}/priority", token=api.admin, json={"priority": 10}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["new_position"] == 1
    assert body["job"]["priority"] == 10 and body["job"]["queue_position"] == 1
    assert api.job(api.user, ids[2])["queue_position"] == body["new_position"]

    # A move to the middle (10, 5, 5, then 3 before 2): the answer still agrees with the next GET.
    answer = api.request(
        "PATCH", f"{API_PREFIX}/jobs/{ids[0]}/priority", token=api.admin, json={"priority": 3}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["new_position"] == 4
    assert api.job(api.user, ids[0])["queue_position"] == 4

    # The positions are the real claim order of the engine.
    positions = _positions(api, ids)
    by_position = sorted(ids, key=lambda i: positions[i] or 0)
    assert sorted(positions.values()) == [1, 2, 3, 4, 5]  # type: ignore[type-var]
    claimed = [str(api.services.jobs.claim("w", ["default"], 1)[0].id) for _ in ids]
    assert claimed == by_position


def test_priority_change_refusals(api: Api) -> None:
    job = api.submit(api.user)
    url = f"{API_PREFIX}/jobs/{job['id']}/priority"

    denied = api.request("PATCH", url, token=api.user, json={"priority": 9})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "forbidden"
    assert api.job(api.user, job["id"])["priority"] == 0

    for bad in ({"priority": 1001}, {"priority": -1001}, {"priority": "high"}, {}, {"priority": 1, "x": 2}):
        response = api.request("PATCH", url, token=api.admin, json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid"
    assert api.request("PATCH", url, token=api.admin, content=b"{not json").status_code == 422

    api.start(job["id"])
    conflict = api.request("PATCH", url, token=api.admin, json={"priority": 9})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["details"] == {"status": "running"}
    assert api.job(api.user, job["id"])["priority"] == 0

    missing = api.request(
        "PATCH",
        f"{API_PREFIX}/jobs/00000000-0000-4000-8000-000000000000/priority",
        token=api.admin,
        json={"priority": 1},
    )
    assert missing.status_code == 404
