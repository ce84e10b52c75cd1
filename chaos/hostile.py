"""Hostile input: the security tests (tests/security) run as they are, and what they tried, counted.

The tests themselves decide pass or fail; this scenario runs them in a pytest subprocess (schemathesis
with more examples per operation than in `make test` unless short) and reports, per category, the tests
run, the hostile requests really sent and how many were answered 5xx, from two sources the run writes:
pytest's JUnit XML (outcomes) and the JSON of tests/security/conftest.py (requests and 5xx counted at
the HTTP transports, schemathesis' own summary of operations and generated cases).

`python -m chaos.hostile [--short]` runs it alone and prints the section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.report import Section

REPO = Path(__file__).resolve().parents[1]
TESTS = "tests/security"
SHORT_EXAMPLES = 6  # as in `make test`
FULL_EXAMPLES = 20
# Test modules by the category they attack.
CATEGORIES = {
    "uploads": "uploads (multipart, sizes, types, slow bodies)",
    "json": "JSON bodies (depth, size, NaN, types)",
    "auth": "authentication (keys, JWTs, brute force)",
    "tenancy": "tenancy (other tenants' jobs, filters, streams)",
    "signed_urls": "signed URLs (tampering, expiry)",
    "schemathesis": "schemathesis (whole OpenAPI document)",
}


def _failures(junit: Path) -> list[str]:
    """The failed tests and the first line of each one's failure, for the report."""
    failures = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            first = (problem.get("message") or problem.text or "").strip().splitlines()[:1]
            failures.append(f"{case.get('name')}: {first[0][:300] if first else '?'}")
    return failures


def _outcomes(junit: Path) -> dict[str, Counter[str]]:
    """Per category: tests passed, failed, errored and skipped, from pytest's JUnit XML."""
    outcomes: dict[str, Counter[str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        category = next((m.removeprefix("test_") for m in module if m.startswith("test_")), "other")
        counts = outcomes.setdefault(category, Counter())
        if case.find("failure") is not None:
            counts["failed"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return outcomes


def run(short: bool) -> Section:
    examples = SHORT_EXAMPLES if short else FULL_EXAMPLES
    section = Section(f"Hostile input: {TESTS} with schemathesis at {examples} examples per operation")
    with tempfile.TemporaryDirectory(prefix="jobmill-hostile-") as tmp:
        folder = Path(tmp)
        junit, counts_path = folder / "junit.xml", folder / "counts.json"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JOBMILL_SECURITY_COUNTS": str(counts_path),
            "JOBMILL_SCHEMATHESIS_EXAMPLES": str(examples),
        }
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                TESTS,
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                f"--basetemp={folder / 'tmp'}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        elapsed = time.monotonic() - started
        if not junit.exists() or not counts_path.exists():
            section.check("the security tests ran", False, (result.stdout + result.stderr)[-500:])
            return section
        outcomes = _outcomes(junit)
        section.notes += [f"Failed: {failure}" for failure in _failures(junit)]
        counts: dict[str, dict[str, int]] = json.loads(counts_path.read_text())
    _judge(section, outcomes, counts, result, elapsed, examples)
    return section


def _judge(
    section: Section,
    outcomes: dict[str, Counter[str]],
    counts: dict[str, dict[str, int]],
    result: subprocess.CompletedProcess[str],
    elapsed: float,
    examples: int,
) -> None:
    fig = section.figures
    failed = errors = server_errors = requests = 0
    for category in sorted(set(outcomes) | set(counts), key=lambda c: (c not in CATEGORIES, c)):
        tests = outcomes.get(category, Counter())
        sent: dict[str, Any] = counts.get(category, {})
        label = CATEGORIES.get(category, category)
        failed += tests["failed"]
        errors += tests["errors"]
        server_errors += int(sent.get("5xx", 0))
        requests += int(sent.get("requests", 0))
        summary = f"{tests.total()} tests ({tests['passed']} passed"
        summary += "".join(f", {tests[o]} {o}" for o in ("failed", "errors", "skipped") if tests[o]) + ")"
        if category == "schemathesis":
            summary += (
                f"; {sent.get('operations', 0)} operations x up to {examples} examples, as admin and as user "
                f"({sent.get('runs', 0)} runs): {sent.get('generated', 0):,} cases generated, "
                f"{sent.get('passed', 0):,} passed, {sent.get('failed', 0):,} failed"
            )
        else:
            summary += f"; {sent.get('requests', 0):,} requests, {sent.get('5xx', 0)} answered 5xx"
        fig[label] = summary
    generated = int(counts.get("schemathesis", {}).get("generated", 0))
    fig["hostile requests sent by the tests (schemathesis' not included)"] = requests
    fig["schemathesis cases generated"] = generated
    fig["failures"] = failed + errors
    fig["5xx answers"] = server_errors
    fig["run time, s"] = round(elapsed, 1)

    tail = (result.stdout + result.stderr)[-400:].replace("\n", " ")
    section.check("pytest passed", result.returncode == 0, f"exit {result.returncode}; {tail}")
    section.check("no failures", failed + errors == 0, f"{failed} failed, {errors} errors")
    section.check("no 5xx", server_errors == 0, f"{server_errors}")
    missing = [c for c in CATEGORIES if c != "schemathesis" and not counts.get(c, {}).get("requests")]
    section.check("every category sent requests", not missing, f"none from {missing}" if missing else "")
    schemathesis = counts.get("schemathesis", {})
    section.check(
        "schemathesis generated cases and none failed",
        generated > 0 and not schemathesis.get("failed"),
        f"{generated} generated, {schemathesis.get('failed', 0)} failed",
    )
    section.notes.append(
        "Requests are counted at the HTTP transports (httpx, the in-process ASGI transport, raw sockets) "
        "while test bodies run; server start-up and readiness checks are not counted."
    )


def main(argv: list[str]) -> int:
    from chaos.report import render

    short = "--short" in argv
    section = run(short)
    print(render([section], "python -m chaos.hostile" + (" --short" if short else "")))
    return 0 if section.passed else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
