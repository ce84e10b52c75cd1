"""Schemathesis runs the whole OpenAPI document against a real `jobmill serve`, as an admin and as a user.

Checks: no 5xx, every response has a documented status and conforms to its schema. Bounded (few examples
per operation, deterministic generation) so it takes seconds; both keys run at the same time.
JOBMILL_SCHEMATHESIS_EXAMPLES raises the examples per operation (`make chaos` does, for its longer run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.security.conftest import CASES, Server

pytestmark = pytest.mark.slow

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"
# The event streams are infinite by design (the tenant stream never ends; a job's stream ends with the
# job): a fuzzer would only time out on them. Their refusals are tested in test_tenancy.py.
EXCLUDED = r"/events$"
DEFAULT_EXAMPLES = 6
EXAMPLES = int(os.environ.get("JOBMILL_SCHEMATHESIS_EXAMPLES", str(DEFAULT_EXAMPLES)))
# The fuzzing phase grows with the examples; the coverage and stateful phases do not.
RUN_TIMEOUT_S = 90 + 12 * max(0, EXAMPLES - 6)


def _schemathesis() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.skip("schemathesis is not installed (pip install 'schemathesis>=4')")
    return found


def _config(server: Server, token: str, path: Path) -> Path:
    """A config that points `job_id` at a real job of the caller (one that waits an hour before it may
    run), so the operations on one job get past 404 into their real logic."""
    run_after = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with server.client(token) as client:
        response = client.post("/api/v1/jobs", json={"kind": "e2e.record", "run_after": run_after})
    assert response.status_code == 202, response.text
    path.write_text(f'[parameters]\n"path.job_id" = "{response.json()["id"]}"\n')
    return path


def _command(server: Server, token: str, report: Path) -> list[str]:
    return [
        _schemathesis(),
        "--config-file",
        str(_config(server, token, report.with_suffix(".toml"))),
        "run",
        f"{server.url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--request-timeout",
        "5",
        "--exclude-path-regex",
        EXCLUDED,
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        # With more examples per operation, Hypothesis' health checks about the generator itself (too
        # many filtered examples for a patterned path parameter, slow generation on a busy machine)
        # would end a run that found nothing wrong with the server.
        *(["--suppress-health-check", "filter_too_much,too_slow"] if EXAMPLES > DEFAULT_EXAMPLES else []),
    ]


def _summary(out: str) -> dict[str, int]:
    """Operations tested and test cases generated, passed and failed, from schemathesis' summary."""
    figures = {}
    tested = re.search(r"^\s*Tested:\s*(\d+)", out, re.MULTILINE)
    if tested:
        figures["operations"] = int(tested[1])
    cases = re.search(r"Test cases:\s*\n\s*(\d+) generated(.*)", out)
    if cases:
        figures["generated"] = int(cases[1])
        for number, outcome in re.findall(r"(\d+) (passed|failed|skipped)", cases[2]):
            figures[outcome] = int(number)
    return figures


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_the_whole_document_as_admin_and_as_user(server: Server, tmp_path: Path) -> None:
    runs = {
        role: subprocess.Popen(
            _command(server, token, tmp_path / f"{role}.xml"),
            cwd=tmp_path,  # schemathesis leaves a .schemathesis folder in its working directory
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for role, token in (("admin", server.admin), ("user", server.user))
    }
    outputs = {}
    for role, process in runs.items():
        try:
            out, _ = process.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        outputs[role] = (process.returncode, out)
        (tmp_path / f"{role}.out").write_text(out)  # kept for reading after a failure
        CASES.add("schemathesis", runs=1, max_examples=EXAMPLES, **_summary(out))
    for role, (code, out) in outputs.items():
        assert code == 0, f"schemathesis as {role} found problems:\n{out[-6000:]}"
        # It really ran: operations were tested and test cases generated.
        assert "Test cases:" in out and " passed" in out, out[-3000:]
        assert "generated, 0 passed" not in out, out[-3000:]
    log = (server.root / "serve.log").read_text(errors="replace")
    assert "unhandled error" not in log, log[-5000:]
