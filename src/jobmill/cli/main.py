"""The `jobmill` command line: run workers, migrate the database.

Every error a user can cause is reported as one readable line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from jobmill.config import Settings
from jobmill.errors import JobmillError
from jobmill.handlers import default_registry
from jobmill.service import JobService, RetryPolicy
from jobmill.store import open_store
from jobmill.worker.worker import Worker, WorkerConfig, WorkerStats

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="jobmill: a self-hosted async job service."
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"jobmill: {message}", err=True)
    return typer.Exit(code)


def _configure_logging(level: str) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("jobmill").setLevel(level.upper())


def _import_app(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise _fail(f"cannot import handler module {module!r}: {exc}") from exc


@app.command()
def migrate(
    database_url: Annotated[str | None, typer.Option(help="overrides JOBMILL_DATABASE_URL")] = None,
) -> None:
    """Create or upgrade the database schema."""
    settings = Settings()
    url = database_url or settings.database_url
    try:
        store = open_store(url)
        applied = store.migrate()
        store.close()
    except JobmillError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo("applied: " + ", ".join(applied) if applied else "the schema is up to date")


@app.command()
def worker(
    app_module: Annotated[str, typer.Option("--app", help="module that registers the handlers")],
    queues: Annotated[
        str | None, typer.Option(help="comma-separated queues (default: the handlers' queues)")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="jobs run at once")] = 4,
    burst: Annotated[bool, typer.Option(help="drain the queues, then exit")] = False,
    database_url: Annotated[str | None, typer.Option(help="overrides JOBMILL_DATABASE_URL")] = None,
    log_level: Annotated[str, typer.Option(help="jobmill's log level")] = "info",
) -> None:
    """Run handlers: claim jobs from the queues and run them until SIGTERM/SIGINT (or drained, --burst)."""
    _configure_logging(log_level)
    settings = Settings()
    _import_app(app_module)
    if not any(True for _ in default_registry):
        raise _fail(f"module {app_module!r} registers no handlers (use @jobmill.handler)")
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else default_registry.queues()
    try:
        store = open_store(database_url or settings.database_url)
    except JobmillError as exc:
        raise _fail(str(exc), 1) from exc
    service = JobService(
        store,
        registry=default_registry,
        lease_s=settings.lease_s,
        retry=RetryPolicy(settings.retry_base_s, settings.retry_max_s),
    )
    config = WorkerConfig(
        queues=queue_list,
        concurrency=concurrency,
        poll_interval_s=settings.poll_interval_s,
        lease_s=settings.lease_s,
        cancel_grace_s=settings.cancel_grace_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        workdir_root=Path(settings.workdir_root),
        burst=burst,
    )
    runner = Worker(service, default_registry, config)
    try:
        stats = asyncio.run(_run_worker(runner))
    finally:
        store.close()
    typer.echo(
        f"worker stopped: {stats.completed} completed, {stats.failed} failed, {stats.retried} retried,"
        f" {stats.cancelled} cancelled, {stats.released} handed back"
    )


async def _run_worker(runner: Worker) -> WorkerStats:
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logging.getLogger("jobmill.worker").info("shutting down: finishing running jobs")
            runner.request_stop()
        else:
            logging.getLogger("jobmill.worker").info("second signal: handing running jobs back now")
            runner.force_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    return await runner.run()


def main() -> None:
    try:
        app()
    except JobmillError as exc:  # anything that escaped a command: still one line
        typer.echo(f"jobmill: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
