"""The benchmark scripts work: quick mode runs the new scenarios' code paths end to end (tiny sizes)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import bench
from bench import charts, memory
from bench import run as bench_run

pytestmark = pytest.mark.slow


def test_quick_run_writes_results_and_charts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "SETTLE_S", 0.1)
    # As if bench/deep_queue.py were not written yet: the scenario is skipped, with a note.
    monkeypatch.delattr(bench, "deep_queue", raising=False)
    monkeypatch.setitem(sys.modules, "bench.deep_queue", None)
    bench_run.main(
        [
            "--quick",
            "--peers",
            "",
            "--backends",
            "sqlite",
            "--scenarios",
            "http,memory,deep",
            "--out",
            str(tmp_path),
        ]
    )
    results = json.loads((tmp_path / "latest.json").read_text())
    http = results["scenarios"][results["ids"]["http"]]
    assert http["bare FastAPI (ceiling)"]["get_rps"]["median"] > 0
    ours = http["jobmill-sqlite"]
    for figure in (
        "get_rps",
        "get_p99_ms",
        "get_vs_bare_pct",
        "get_pending_rps",
        "post_rps",
        "bulk_jobs_per_s",
    ):
        assert ours[figure]["median"] > 0, figure
    assert ours["get_errors"]["median"] == 0 and ours["post_errors"]["median"] == 0
    rss = results["scenarios"][results["ids"]["memory"]]["jobmill-sqlite"]
    assert 10 < rss["idle_rss_mb"]["median"] <= rss["peak_rss_mb"]["median"] < 1000
    assert any("deep queue: skipped" in note for note in results["notes"])
    assert "get_vs_bare_pct" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "http.png").stat().st_size > 0 and (tmp_path / "memory.png").stat().st_size > 0


def test_quick_run_of_the_job_scenarios(tmp_path: Path) -> None:
    """Drain, pickup (Python and HTTP submit paths) and cancel, on SQLite at tiny sizes."""
    scenarios = "drain,pickup,cancel"
    bench_run.main(
        ["--quick", "--peers", "", "--backends", "sqlite", "--scenarios", scenarios, "--no-charts",
         "--out", str(tmp_path)]
    )  # fmt: skip
    results = json.loads((tmp_path / "latest.json").read_text())
    figures = {key: results["scenarios"][results["ids"][key]]["jobmill-sqlite"] for key in results["ids"]}
    assert figures["drain"]["jobs_per_s"]["median"] > 0 and figures["drain_own"]["jobs_per_s"]["median"] > 0
    for name in ("p50_ms", "p99_ms", "http_p50_ms", "http_p99_ms"):
        assert 0 < figures["pickup"][name]["median"] < 10_000, name
    assert figures["cancel"]["tries"]["median"] == 3 and figures["cancel"]["p50_ms"]["median"] > 0


def test_deep_queue_is_wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With bench/deep_queue.py present, its run() gets a fresh PostgreSQL database and the flags' sizes."""
    calls: list[tuple[str, int, int]] = []

    def fake_run(database_url: str, pending: int = 1_000_000, samples: int = 500) -> dict[str, float]:
        calls.append((database_url, pending, samples))
        return {"position_p50_ms": 1.5, "position_p99_ms": 3.0}

    @contextmanager
    def fake_database(backend: str) -> Iterator[str]:
        yield f"postgresql://fake/{backend}"

    fake = types.SimpleNamespace(run=fake_run)
    monkeypatch.setattr(bench, "deep_queue", fake, raising=False)
    monkeypatch.setitem(sys.modules, "bench.deep_queue", fake)
    monkeypatch.setattr(bench_run, "database", fake_database)
    out = tmp_path / "out"
    bench_run.main(
        ["--peers", "", "--scenarios", "deep", "--rounds", "2", "--deep-pending", "1234", "--out", str(out)]
    )
    assert calls == [("postgresql://fake/postgres", 1234, 500)] * 2
    results = json.loads((out / "latest.json").read_text())
    figures = results["scenarios"][results["ids"]["deep"]]["jobmill-postgres"]
    assert figures["position_p99_ms"] == {"median": 3.0, "min": 3.0, "max": 3.0}
    assert (out / "deep_queue.png").exists()


def test_charts_of_every_scenario(tmp_path: Path) -> None:
    """Every chart draws from a results file, peers that cannot kill the tree (None) included."""

    def s(value: float) -> dict[str, float]:
        return {"median": value, "min": value * 0.9, "max": value * 1.1}

    names = {
        key: f"{key} scenario" for key in ("drain", "drain_own", "pickup", "cancel", "http", "memory", "deep")
    }
    scenarios: dict[str, Any] = {
        names["drain"]: {
            "jobmill-postgres": {
                "jobs_per_s": s(700),
                "worker_cpu_s_per_1000": s(1.1),
                "pg_cpu_s_per_1000": s(0.5),
            },
            "celery": {"jobs_per_s": s(800), "worker_cpu_s_per_1000": s(1.5), "redis_cpu_s_per_1000": s(0.2)},
            "rq": {"error": ["boom"]},
        },
        names["drain_own"]: {"jobmill-sqlite": {"jobs_per_s": s(2400)}},
        names["pickup"]: {"jobmill-sqlite": {"p50_ms": s(3), "p99_ms": s(7)}},
        names["cancel"]: {"jobmill-sqlite": {"p50_ms": s(14), "p99_ms": s(18)}, "celery": {"p50_ms": None}},
        names["http"]: {
            "bare FastAPI (ceiling)": {"get_rps": s(4000), "get_p99_ms": s(20)},
            "jobmill-sqlite": {"get_rps": s(1500), "get_p99_ms": s(60), "post_rps": s(500)},
        },
        names["memory"]: {
            "jobmill-sqlite": {"idle_rss_mb": s(60), "rss_after_half_mb": s(64), "rss_after_all_mb": s(64)}
        },
        names["deep"]: {"jobmill-postgres": {"position_p99_ms": s(2)}},
    }
    results = {
        "date": "2026-11-23T00:00:00+00:00",
        "machine": {"cores": 2},
        "ids": names,
        "scenarios": scenarios,
    }
    written = charts.draw(results, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        ["drain.png", "pickup.png", "cancel.png", "http.png", "memory.png", "deep_queue.png"]
    )


def test_an_update_keeps_the_provenance_of_both_runs() -> None:
    """--update replaces only the (scenario, system) figures it measured, keeps the date and commit of the
    run that measured the rest, and the markdown says what was measured again, when and at which commit."""
    figure = {"jobs_per_s": {"median": 1.0, "min": 1.0, "max": 1.0}}
    base = {
        "date": "2026-01-01T00:00:00+00:00",
        "code": {"commit": "aaaaaaa", "src_modified": False},
        "machine": {"cores": 2, "memory_gib": 23.5, "python": "3.11.7"},
        "rounds": 3,
        "ids": {"drain": "drain", "pickup": "pickup"},
        "scenarios": {"drain": {"jobmill-sqlite": figure, "celery": figure}, "pickup": {"celery": figure}},
        "notes": ["a note"],
    }
    again = {"jobs_per_s": {"median": 2.0, "min": 2.0, "max": 2.0}}
    update = {
        "date": "2026-01-02T00:00:00+00:00",
        "code": {"commit": "bbbbbbb", "src_modified": True},
        "machine": base["machine"],
        "ids": {"drain": "drain"},
        "scenarios": {"drain": {"jobmill-sqlite": again}},
        "notes": ["a note"],
    }
    result = bench_run.merged(base, update)
    assert (result["date"], result["code"]["commit"]) == ("2026-01-01T00:00:00+00:00", "aaaaaaa")
    assert result["scenarios"] == {
        "drain": {"jobmill-sqlite": again, "celery": figure},
        "pickup": {"celery": figure},
    }
    assert result["notes"] == ["a note"]
    text = bench_run.markdown(result)
    assert "jobmill aaaaaaa; median of 3 rounds" in text
    assert "- 2026-01-02T00:00:00+00:00, jobmill bbbbbbb with uncommitted changes in src/: drain" in text
