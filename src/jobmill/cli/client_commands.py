"""The `jobmill` commands that talk to a running service over HTTP: submit, status, cancel, jobs, tail.

The connection comes from --url / JOBMILL_URL (default http://127.0.0.1:8000) and --api-key /
JOBMILL_API_KEY. Every error is one line on stderr (`jobmill: ...`) unless --debug.

Exit codes: 0 done (the job completed), 1 the job failed or an error, 2 a usage error, 3 the job was
cancelled, 130 interrupted (Ctrl-C) with the job left running.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

import typer

from jobmill.defaults import DEFAULT_URL
from jobmill.domain.job import JobStatus

# rich and the HTTP client are imported where they are used: `jobmill worker` and `jobmill serve` load
# this module too (to register the commands), and these imports were a third of their start-up time.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from jobmill.client import Client, Job

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_INTERRUPTED = 130

Url = Annotated[
    str,
    typer.Option("--url", envvar="JOBMILL_URL", help="the service's address", rich_help_panel="Connection"),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="JOBMILL_API_KEY",
        help="an API key (jobmill keys create) or a JWT",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="show tracebacks instead of one-line errors")]
JobIdArg = Annotated[str, typer.Argument(help="the job id", show_default=False)]


# -- plumbing -----------------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print one line on stderr; raise the result to exit with `code`."""
    typer.echo("jobmill: " + " ".join(message.split()), err=True)
    return typer.Exit(code)


def _describe(exc: BaseException) -> str:
    from jobmill.client import ApiError, ConnectionFailed, Unauthorized

    if isinstance(exc, Unauthorized):
        return f"the API key was refused: {exc.message} (HTTP 401; check --api-key or JOBMILL_API_KEY)"
    if isinstance(exc, ConnectionFailed):
        return f"{exc} (is `jobmill serve` running there? set --url or JOBMILL_URL)"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, ApiError) and isinstance(exc.details, list):  # validation errors: say which field
        problems = [
            f"{'.'.join(str(p) for p in d.get('loc', []) if p != 'body')}: {d.get('msg')}"
            for d in exc.details[:3]
            if isinstance(d, dict)
        ]
        if problems:
            return f"{exc.message}: {'; '.join(problems)} (HTTP {exc.status} {exc.code})"
    return str(exc) or type(exc).__name__


@contextmanager
def _reported(debug: bool) -> Iterator[None]:
    """Errors as one line and exit 1 (unless --debug, which shows the traceback)."""
    from jobmill.client import ClientError

    try:
        yield
    except (ClientError, OSError) as exc:
        if debug:
            traceback.print_exc()
            raise typer.Exit(EXIT_FAILED) from None
        raise _fail(_describe(exc)) from None


def _client(url: str, api_key: str | None) -> Client:
    from jobmill.client import Client

    if not api_key:
        raise _fail("no API key: pass --api-key or set JOBMILL_API_KEY (jobmill keys create)", EXIT_USAGE)
    try:
        return Client(url, api_key)
    except ValueError as exc:
        raise _fail(f"bad --url {url!r}: {exc}", EXIT_USAGE) from None


def _job_id(value: str) -> UUID:
    try:
        return UUID(value.strip())
    except ValueError:
        raise _fail(f"not a job id: {value!r}", EXIT_USAGE) from None


def _parse_value(text: str) -> Any:
    """`--param` values: JSON when they parse as JSON (5, 2.5, true, null, "quoted", [1]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _params(pairs: list[str], params_json: Path | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            text = sys.stdin.read() if str(params_json) == "-" else params_json.read_text()
            loaded = json.loads(text)
        except OSError as exc:
            raise _fail(f"cannot read --params-json: {_describe(exc)}", EXIT_USAGE) from None
        except ValueError as exc:
            raise _fail(f"--params-json is not JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(loaded, dict):
            raise _fail("--params-json must hold a JSON object", EXIT_USAGE)
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--param wants key=value, not {pair!r}", EXIT_USAGE)
        params[key.strip()] = _parse_value(value)
    return params


def _files(pairs: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise _fail(f"--file wants name=path, not {pair!r}", EXIT_USAGE)
        file = Path(path).expanduser()
        if not file.is_file():
            raise _fail(f"--file {name}: no such file: {path}", EXIT_USAGE)
        files[name] = file
    return files


def _statuses(values: list[str]) -> list[JobStatus]:
    statuses = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                statuses.append(JobStatus(part.strip().lower()))
            except ValueError:
                known = ", ".join(s.value for s in JobStatus)
                raise _fail(f"unknown status {part!r} (one of: {known})", EXIT_USAGE) from None
    return statuses


def _percent(progress: float | None) -> str:
    return "" if progress is None else f"{progress:.0f}%"


def _age(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return ""
    seconds = max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _state_line(job: Job) -> str:
    """`running · encode · 40% · message` / `pending · position 3 in queue media`."""
    parts = [job.status.value]
    if job.status is JobStatus.PENDING:
        if job.queue_position is not None:
            parts.append(f"position {job.queue_position} in queue {job.queue}")
    else:
        parts += [p for p in (job.stage, _percent(job.progress), job.message) if p]
    return " · ".join(parts)


def _exit_code(job: Job) -> int:
    if job.status is JobStatus.COMPLETED:
        return EXIT_OK
    if job.status is JobStatus.CANCELLED:
        return EXIT_CANCELLED
    return EXIT_FAILED


def _report_end(job: Job) -> None:
    """The one line for a job that did not complete."""
    if job.status is JobStatus.FAILED:
        raise _fail(f"job {job.id} failed: {job.error or 'no error recorded'}", EXIT_FAILED)
    if job.status is JobStatus.CANCELLED:
        raise _fail(f"job {job.id} was cancelled", EXIT_CANCELLED)


# -- live progress ------------------------------------------------------------------------------------


class ProgressView:
    """A job's progress on stderr: a live rich bar on a terminal, else one line per change."""

    def __init__(self, console: Console, job: Job) -> None:
        from rich.markup import escape
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

        self._console = console
        self._kind = job.kind
        self._last_line = ""
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(escape(job.kind), total=None, info="")
            self._progress.start()
        self.update(job)

    def update(self, job: Job) -> None:
        from rich.markup import escape

        if self._progress is None or self._task is None:
            line = _state_line(job)
            if line != self._last_line:
                self._last_line = line
                self._console.print(escape(line), highlight=False)
            return
        stage = job.stage if job.status is JobStatus.RUNNING and job.stage else job.status.value
        if job.status is JobStatus.PENDING:
            info = f"position {job.queue_position} in queue {job.queue}" if job.queue_position else "waiting"
        else:
            info = job.message or ""
        determinate = job.progress is not None or job.is_terminal
        self._progress.update(
            self._task,
            description=f"{escape(self._kind)} [bold]{escape(stage)}[/bold]",
            total=100 if determinate else None,
            completed=job.progress or (100 if job.status is JobStatus.COMPLETED else 0),
            info=escape(info),
        )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _ask_to_cancel(job_id: UUID) -> bool:
    try:
        return bool(typer.confirm(f"\ncancel job {job_id}?", default=False, err=True))
    except (typer.Abort, EOFError):  # typer's own Abort: it vendors click since 0.26
        return False


def _wait(client: Client, job: Job, console: Console) -> Job:
    """Follow the job with a live view until it ends; Ctrl-C offers to cancel it (exit 130 if not)."""
    from jobmill.client import Conflict

    view = ProgressView(console, job)
    try:
        try:
            return client.wait(job.id, on_update=view.update)
        except KeyboardInterrupt:
            view.stop()
            if not _ask_to_cancel(job.id):
                raise _fail(
                    f"stopped waiting; job {job.id} goes on (follow it: jobmill tail {job.id})",
                    EXIT_INTERRUPTED,
                ) from None
        try:
            job = client.cancel(job.id)
            console.print(f"{job.status.value} job {job.id}", highlight=False)
        except Conflict:
            pass  # it finished in the meantime: report how
        view = ProgressView(console, job)
        try:
            return client.wait(job.id, on_update=view.update)
        except KeyboardInterrupt:
            raise _fail(f"stopped waiting for job {job.id} to stop", EXIT_INTERRUPTED) from None
    finally:
        view.stop()


# -- commands -----------------------------------------------------------------------------------------


def submit(
    kind: Annotated[str, typer.Argument(help="the job kind, e.g. demo.transcode", show_default=False)],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help='k=v (repeat); v is JSON if it parses (5, true, "x"), else text'),
    ] = None,
    params_json: Annotated[
        Path | None, typer.Option("--params-json", help="a file with the params as a JSON object (- = stdin)")
    ] = None,
    file: Annotated[
        list[str] | None, typer.Option("--file", "-f", help="name=path: upload a file as input NAME (repeat)")
    ] = None,
    priority: Annotated[int, typer.Option(help="higher runs first")] = 0,
    queue: Annotated[str | None, typer.Option(help="the queue (default: the kind's own)")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key and body return the same job, not a new one")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="follow the job with a live progress bar")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="download the outputs into this folder (implies --wait)", file_okay=False),
    ] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    debug: Debug = False,
) -> None:
    """Submit a job and print its id; --wait follows it with a live progress bar.

    With --wait: prints the result (JSON); exit code 0 completed, 1 failed, 3 cancelled.

    Ctrl-C while waiting asks whether to cancel the job (exit 130 if not).
    """
    from rich.console import Console

    params = _params(param or [], params_json)
    files = _files(file or [])
    client = _client(url, api_key)
    console = Console(stderr=True, soft_wrap=True)  # piped: whole lines, never wrapped mid-path
    with client, _reported(debug):
        job = client.submit(
            kind, params, files=files or None, queue=queue, priority=priority, idempotency_key=idempotency_key
        )
        typer.echo(str(job.id))
        if not (wait or out):
            return
        final = _wait(client, job, console)
        _report_end(final)
        typer.echo(json.dumps(final.result, indent=2, ensure_ascii=False))
        for output in final.outputs:
            if out is None:
                console.print(
                    f"output {output.name} ({output.size} bytes): save it with --out DIR", highlight=False
                )
                continue
            # A bare file name, whatever the server says: the download stays inside --out.
            filename = Path(output.filename or "").name or Path(output.name).name or "output"
            saved = client.download(final.id, output.name, out / filename)
            console.print(f"saved {saved} ({output.size} bytes)", highlight=False)


def status(
    job_id: JobIdArg,
    as_json: Annotated[bool, typer.Option("--json", help="the API's JSON, as is")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    debug: Debug = False,
) -> None:
    """Show a job: status, stage, progress, queue position, result or error, outputs."""
    ident = _job_id(job_id)
    client = _client(url, api_key)
    with client, _reported(debug):
        job = client.get(ident)
    if as_json:
        typer.echo(json.dumps(job.raw, indent=2, ensure_ascii=False))
        return
    rows: list[tuple[str, str]] = [
        ("job", str(job.id)),
        ("kind", f"{job.kind} (queue {job.queue}, priority {job.priority})"),
        ("status", _state_line(job)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        (
            "created",
            f"{job.created_at:%Y-%m-%d %H:%M:%S} ({_age(job.created_at)} ago)" if job.created_at else "",
        ),
    ]
    if job.finished_at is not None:
        rows.append(("finished", f"{job.finished_at:%Y-%m-%d %H:%M:%S}"))
    if job.params:
        rows.append(("params", json.dumps(job.params, ensure_ascii=False)))
    rows += [("input", f"{f.name}: {f.filename or ''} ({f.size} bytes)") for f in job.inputs]
    if job.status is JobStatus.COMPLETED:
        rows.append(("result", json.dumps(job.result, ensure_ascii=False)))
    if job.error is not None:
        rows.append(("error", str(job.error)))
    rows += [("output", f"{o.name} ({o.size} bytes)") for o in job.outputs]
    for label, value in rows:
        typer.echo(f"{label:<9} {value}")


def cancel(
    job_id: JobIdArg,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    debug: Debug = False,
) -> None:
    """Cancel a job: a pending one at once; a running one once its processes are stopped."""
    ident = _job_id(job_id)
    client = _client(url, api_key)
    with client, _reported(debug):
        job = client.cancel(ident)
    if job.status is JobStatus.CANCELLED:
        typer.echo(f"cancelled {job.id}")
    else:
        typer.echo(f"cancelling {job.id}: its processes are being stopped")


def jobs(
    status_filter: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="only these statuses (repeat or comma-separate)"),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="only this kind")] = None,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="how many (newest first)")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="the API's JSON, as is")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    debug: Debug = False,
) -> None:
    """List jobs, newest first: id, kind, status, stage/progress, queue position, age."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    statuses = _statuses(status_filter or [])
    client = _client(url, api_key)
    with client, _reported(debug):
        page = client.list(status=statuses or None, kind=kind, queue=queue, limit=limit)
    if as_json:
        typer.echo(json.dumps([job.raw for job in page], indent=2, ensure_ascii=False))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: whole lines, no wrapped ids
    if not page.jobs:
        console.print("no jobs", highlight=False)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("KIND", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("STAGE/PROGRESS")
    table.add_column("POS", justify="right")
    table.add_column("AGE", justify="right")
    now = datetime.now(UTC)
    for job in page:
        stage = " ".join(p for p in (job.stage or "", _percent(job.progress)) if p)
        position = "" if job.queue_position is None else str(job.queue_position)
        table.add_row(
            str(job.id),
            escape(job.kind),
            job.status.value,
            escape(stage),
            position,
            _age(job.created_at, now),
        )
    console.print(table, highlight=False)


def tail(
    job_id: Annotated[str | None, typer.Argument(help="a job id; without one, all recent jobs")] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="seconds between polls (without an id)")] = 1.0,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    debug: Debug = False,
) -> None:
    """Print a job's changes as they happen, until it ends; without an id, all recent jobs'.

    With an id: exit code 0 completed, 1 failed, 3 cancelled. Without: runs until Ctrl-C.
    """
    ident = _job_id(job_id) if job_id is not None else None
    client = _client(url, api_key)
    with client, _reported(debug):
        try:
            if ident is None:
                _tail_all(client, interval)
            else:
                final = None
                for job in client.watch(ident):
                    typer.echo(f"{datetime.now():%H:%M:%S} {_state_line(job)}")
                    final = job
                assert final is not None
                if final.status is JobStatus.FAILED and final.error is not None:
                    typer.echo(f"{datetime.now():%H:%M:%S} error: {final.error}")
                raise typer.Exit(_exit_code(final))
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _tail_all(client: Client, interval: float) -> None:
    seen: dict[UUID, str] = {}
    while True:
        page = client.list(limit=50)
        for job in reversed(page.jobs):  # oldest first, so lines come in time order
            line = _state_line(job)
            if seen.get(job.id) != line:
                seen[job.id] = line
                typer.echo(f"{datetime.now():%H:%M:%S} {job.id} {job.kind} {line}")
        time.sleep(interval)


def register(app: typer.Typer) -> None:
    """Add the commands above to the `jobmill` command line."""
    app.command()(submit)
    app.command()(status)
    app.command()(cancel)
    app.command()(jobs)
    app.command()(tail)
