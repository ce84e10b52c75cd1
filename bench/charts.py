"""PNG charts of a benchmark run (bench/results/latest.json), drawn with matplotlib.

    python -m bench.charts [RESULTS_DIR]

One chart per scenario that ran: drain.png (jobs/s, and CPU per 1,000 jobs), pickup.png, cancel.png,
http.png (req/s against the bare FastAPI ceiling), memory.png, deep_queue.png. Each bar is the median
of the rounds, its whisker the min-max.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes

Stats = dict[str, float]
Figures = dict[str, Any]
JOBMILL = "#2b6cb0"
PEER = "#a0aec0"
CEILING = "#718096"


def _stats(figures: Figures, key: str) -> Stats | None:
    value = figures.get(key)
    return value if isinstance(value, dict) and "median" in value else None


def _bars(ax: Axes, labels: list[str], stats: list[Stats], colors: list[str], unit: str) -> None:
    """Horizontal bars, median with min-max whiskers, the median written at each bar's end."""
    medians = [s["median"] for s in stats]
    low = [s["median"] - s["min"] for s in stats]
    high = [s["max"] - s["median"] for s in stats]
    positions = list(range(len(labels)))[::-1]
    ax.barh(positions, medians, color=colors, xerr=[low, high], capsize=3, ecolor="#4a5568")
    ax.set_yticks(positions, labels)
    for y, value in zip(positions, medians, strict=True):
        ax.annotate(
            f" {value:,.0f}" if value >= 100 else f" {value:.2f}", (value, y), va="center", fontsize=8
        )
    ax.set_xlabel(unit)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15)


def _color(system: str) -> str:
    return JOBMILL if system.startswith("jobmill") else CEILING if system.startswith("bare") else PEER


def drain(results: dict[str, Any], ax_rate: Axes, ax_cpu: Axes) -> None:
    name = results["ids"]["drain"]
    labels, stats, colors = [], [], []
    for system, figures in results["scenarios"][name].items():
        if (s := _stats(figures, "jobs_per_s")) is not None:
            labels.append(system)
            stats.append(s)
            colors.append(_color(system))
    own = results["ids"].get("drain_own")
    for system, figures in results["scenarios"].get(own, {}).items():
        if (s := _stats(figures, "jobs_per_s")) is not None:
            labels.append(f"{system} (2 x 50)")
            stats.append(s)
            colors.append("#1a365d")
    _bars(ax_rate, labels, stats, colors, "jobs/s (higher is better)")
    ax_rate.set_title(textwrap.fill(name, 80), fontsize=10)
    # CPU per 1,000 jobs: the workers', and the queue server's (PostgreSQL or Redis) stacked on it.
    cpu_labels: list[str] = []
    worker: list[float] = []
    server: list[float] = []
    for system, figures in results["scenarios"][name].items():
        if (w := _stats(figures, "worker_cpu_s_per_1000")) is None:
            continue
        s = _stats(figures, "pg_cpu_s_per_1000") or _stats(figures, "redis_cpu_s_per_1000")
        cpu_labels.append(system)
        worker.append(w["median"])
        server.append(s["median"] if s else 0.0)
    positions = list(range(len(cpu_labels)))[::-1]
    ax_cpu.barh(positions, worker, color=JOBMILL, label="workers (whole process tree)")
    ax_cpu.barh(positions, server, left=worker, color="#ed8936", label="queue server (PostgreSQL / Redis)")
    ax_cpu.set_yticks(positions, cpu_labels)
    ax_cpu.set_xlabel("CPU seconds per 1,000 jobs (lower is better)")
    ax_cpu.legend(fontsize=8, loc="lower right")
    ax_cpu.grid(axis="x", alpha=0.3)


def pair(results: dict[str, Any], key: str, ax: Axes, figures: tuple[str, str], unit: str) -> None:
    """Two figures (p50, p99) side by side for every system; a system without them is named as such."""
    name = results["ids"][key]
    systems = list(results["scenarios"][name])
    positions = list(range(len(systems)))[::-1]
    width = 0.38
    for offset, figure, color in ((width / 2, figures[0], JOBMILL), (-width / 2, figures[1], "#ed8936")):
        for y, system in zip(positions, systems, strict=True):
            s = _stats(results["scenarios"][name][system], figure)
            if s is None:
                if offset > 0:
                    ax.annotate("  not killed within 10 s", (0, y), va="center", fontsize=8, color="#c53030")
                continue
            ax.barh(
                y + offset,
                s["median"],
                height=width,
                color=color,
                xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
                ecolor="#4a5568",
                capsize=2,
            )
            ax.annotate(f" {s['median']:.1f}", (s["median"], y + offset), va="center", fontsize=7)
    ax.barh([], [], color=JOBMILL, label=figures[0])
    ax.barh([], [], color="#ed8936", label=figures[1])
    ax.set_yticks(positions, systems)
    ax.set_xscale("log")
    ax.set_xlabel(unit)
    ax.set_title(textwrap.fill(name, 80), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)


def http(results: dict[str, Any], ax: Axes) -> None:
    name = results["ids"]["http"]
    labels, stats, colors = [], [], []
    for system, figures in results["scenarios"][name].items():
        for figure, what in (("get_rps", "GET"), ("get_pending_rps", "GET pending"), ("post_rps", "POST")):
            if (s := _stats(figures, figure)) is not None:
                p99 = _stats(figures, figure.replace("_rps", "_p99_ms"))
                tail = f", p99 {p99['median']:.0f} ms" if p99 else ""
                labels.append(f"{system}: {what}{tail}")
                stats.append(s)
                colors.append(_color(system) if what == "GET" else "#63b3ed")
    _bars(ax, labels, stats, colors, "requests/s (higher is better)")
    ax.set_title(textwrap.fill(name, 80), fontsize=10)


def memory(results: dict[str, Any], ax: Axes) -> None:
    name = results["ids"]["memory"]
    keys = (("idle_rss_mb", "idle"), ("rss_after_half_mb", "after half"), ("rss_after_all_mb", "after all"))
    systems = list(results["scenarios"][name])
    width = 0.8 / len(keys)
    for index, (key, label) in enumerate(keys):
        xs = [i + (index - 1) * width for i in range(len(systems))]
        medians = [(_stats(results["scenarios"][name][s], key) or {"median": 0.0})["median"] for s in systems]
        ax.bar(xs, medians, width=width, label=label, color=("#90cdf4", JOBMILL, "#1a365d")[index])
        for x, value in zip(xs, medians, strict=True):
            ax.annotate(f"{value:.0f}", (x, value), ha="center", va="bottom", fontsize=8)
    ax.axhline(80, color="#c53030", linestyle="--", linewidth=1, label="target: 80 MB idle")
    ax.set_xticks(range(len(systems)), systems)
    ax.set_ylabel("RSS of the worker process tree, MB")
    ax.set_title(textwrap.fill(name, 80), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def generic(results: dict[str, Any], key: str, ax: Axes) -> None:
    """Every numeric figure of a scenario (the deep queue's are whatever bench/deep_queue.py returns)."""
    name = results["ids"][key]
    labels, stats = [], []
    for system, figures in results["scenarios"][name].items():
        for figure in figures:
            if (s := _stats(figures, figure)) is not None:
                labels.append(f"{system}: {figure}")
                stats.append(s)
    _bars(ax, labels, stats, [JOBMILL] * len(stats), "value (see each figure's unit in its name)")
    ax.set_title(textwrap.fill(name, 80), fontsize=10)


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    """The charts of the scenarios that ran, as PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stamp = f"jobmill bench, {results['date'][:10]}, {results['machine']['cores']} cores; median, min-max"
    ids = results.get("ids", {})
    written: list[Path] = []

    def save(fig: Any, filename: str) -> None:
        fig.text(0.99, 0.005, stamp, ha="right", va="bottom", fontsize=7, color="#718096")
        fig.tight_layout(rect=(0, 0.02, 1, 1))
        path = out / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "drain" in ids:
        fig, (ax_rate, ax_cpu) = plt.subplots(1, 2, figsize=(13, 4.8))
        drain(results, ax_rate, ax_cpu)
        save(fig, "drain.png")
    for key, filename, figures in (
        ("pickup", "pickup.png", ("p50_ms", "p99_ms")),
        ("cancel", "cancel.png", ("p50_ms", "p99_ms")),
    ):
        if key in ids:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            pair(results, key, ax, figures, "milliseconds, log scale (lower is better)")
            save(fig, filename)
    if "http" in ids:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        http(results, ax)
        save(fig, "http.png")
    if "memory" in ids:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        memory(results, ax)
        save(fig, "memory.png")
    if "deep" in ids:
        fig, ax = plt.subplots(figsize=(8, 4))
        generic(results, "deep", ax)
        save(fig, "deep_queue.png")
    return written


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results"
    for path in draw(json.loads((out / "latest.json").read_text()), out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
