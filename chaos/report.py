"""The one shape every chaos scenario reports in, and the writer of docs/reliability.md.

A scenario returns a `Section`: the figures it measured (jobs, kills, restarts, duplicates, orphans, 5xx...)
and the checks it made. The run fails when any check fails, so the document never shows a broken property
as if it held.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

Figure = int | float | str


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Section:
    title: str
    figures: dict[str, Figure] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _machine() -> str:
    cores = len(os.sched_getaffinity(0))
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return f"{cores} cores, {mem_kb / 1024 / 1024:.1f} GiB, Python {platform.python_version()}"


def render(sections: list[Section], command: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# jobmill reliability report",
        "",
        f"Written by `{command}` on {now}; {_machine()}. Do not edit by hand: run it again.",
        "",
    ]
    verdict = "all checks passed" if all(s.passed for s in sections) else "SOME CHECKS FAILED"
    lines += [f"**Verdict: {verdict}.**", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.figures:
            lines += ["| figure | value |", "| --- | --- |"]
            for name, value in section.figures.items():
                shown = (
                    f"{value:,.2f}"
                    if isinstance(value, float)
                    else (f"{value:,}" if isinstance(value, int) else value)
                )
                lines.append(f"| {name} | {shown} |")
            lines.append("")
        if section.checks:
            lines += ["| check | result | detail |", "| --- | --- | --- |"]
            for c in section.checks:
                lines.append(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |")
            lines.append("")
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
    return "\n".join(lines)


def write(sections: list[Section], path: Path, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(sections, command))
