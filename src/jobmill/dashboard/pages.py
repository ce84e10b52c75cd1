"""Rendering helpers of the dashboard: the Jinja2 environment, value formatting, the job timeline."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from itertools import pairwise
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from jobmill.domain.job import JobEvent, JobStatus

STATIC_TYPES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


@cache
def static_file(name: str) -> tuple[bytes, str]:
    """The bytes of a packaged static file and a short hash of them (cache busting)."""
    data = resources.files("jobmill.dashboard").joinpath("static", name).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:12]


def static_url(name: str) -> str:
    return f"/ui/static/{name}?v={static_file(name)[1]}"


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def fmt_clock(value: datetime | None) -> str:
    """Time of day with milliseconds: for timelines, where events are close together."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def fmt_progress(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f}%" if float(value).is_integer() else f"{value:.1f}%"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def compact_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "), ensure_ascii=False)


def short_id(value: object) -> str:
    """First and last characters of a job id: time-ordered ids share their first ones within a second."""
    text = str(value)
    return f"{text[:8]}…{text[-4:]}"


@dataclass
class Step:
    """One line of a job's timeline: a status change, a stage or a priority change, and how long it
    lasted (until the next step; until now while the job is live)."""

    at: datetime
    kind: str  # "status", "stage" or "priority"
    label: str
    status: JobStatus
    progress: float | None = None
    message: str | None = None
    duration_s: float | None = None
    ongoing: bool = False
    events: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def timeline(events: list[JobEvent], now: datetime, finished_at: datetime | None) -> list[Step]:
    """Fold a job's events into steps: each status change and each new stage starts a step; progress
    events update the step they fall in."""
    steps: list[Step] = []
    status: JobStatus | None = None
    stage: str | None = None
    for event in events:
        new_status = event.type == "status" and event.status != status
        if new_status:
            steps.append(Step(event.at, "status", event.status.value, event.status, event.progress))
            status = event.status
            stage = event.stage
        if event.type == "priority":
            data = event.data or {}
            label = f"priority set to {data['priority']}" if "priority" in data else "priority changed"
            steps.append(Step(event.at, "priority", label, event.status, event.progress))
        elif event.stage is not None and event.stage != stage:
            steps.append(Step(event.at, "stage", event.stage, event.status, event.progress))
            stage = event.stage
        elif steps and not new_status:
            steps[-1].events += 1
        if steps:
            if event.progress is not None:
                steps[-1].progress = event.progress
            if event.message:
                steps[-1].message = event.message
    for current, following in pairwise(steps):
        current.duration_s = (following.at - current.at).total_seconds()
    if steps:
        last = steps[-1]
        if last.status.is_terminal:
            last.duration_s = None
        else:
            last.duration_s = ((finished_at or now) - last.at).total_seconds()
            last.ongoing = True
    return steps


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("jobmill.dashboard", "templates"),
        autoescape=True,  # every template is HTML; everything interpolated is escaped
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        time=fmt_time,
        clock=fmt_clock,
        iso=iso,
        duration=fmt_duration,
        percent=fmt_progress,
        pretty_json=pretty_json,
        compact_json=compact_json,
        short_id=short_id,
    )
    env.globals.update(static_url=static_url, statuses=[s.value for s in JobStatus])
    return env


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(context)
