"""The `jobmill` command line: serve the API, run workers, migrate the database, manage API keys.

Every error a user can cause is reported as one readable line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from jobmill.access import AccessService

from jobmill.cli.client_commands import register as register_client_commands
from jobmill.config import Settings
from jobmill.errors import ConfigError, JobmillError, StoreUnavailable
from jobmill.handlers import default_registry
from jobmill.service import JobService, RetryPolicy, utc_now
from jobmill.storage import open_blobstore
from jobmill.store import JobStore, open_store
from jobmill.worker.worker import Worker, WorkerConfig, WorkerStats

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="jobmill: a self-hosted async job service."
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"jobmill: {message}", err=True)
    return typer.Exit(code)


def _settings(database_url: str | None = None) -> Settings:
    """The settings from the environment and .env (`database_url` from the command line first); a bad
    value is one line and exit 2."""
    try:
        if database_url is None:
            return Settings.from_env()
        return Settings.from_env(database_url=database_url)
    except ConfigError as exc:
        raise _fail(f"bad settings: {exc}") from exc


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
    settings = _settings()
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
    db_wait: Annotated[
        float, typer.Option(min=0, help="seconds to keep retrying an unreachable database at startup")
    ] = 30.0,
) -> None:
    """Run handlers: claim jobs from the queues and run them until SIGTERM/SIGINT (or drained, --burst)."""
    early = _EarlySignals()  # a stop requested while starting up (importing, waiting for the database)
    _configure_logging(log_level)
    settings = _settings()
    _import_app(app_module)
    if not any(True for _ in default_registry):
        raise _fail(f"module {app_module!r} registers no handlers (use @jobmill.handler)")
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else default_registry.queues()
    try:
        store = _open_store_waiting(
            database_url or settings.database_url, db_wait, lambda: early.received > 0
        )
    except JobmillError as exc:
        raise _fail(str(exc), 1) from exc
    if store is None:
        typer.echo("worker stopped before it started")
        return
    _require_schema(store)
    service = JobService(
        store,
        registry=default_registry,
        lease_s=settings.lease_s,
        retry=RetryPolicy(settings.retry_base_s, settings.retry_max_s),
    )
    config = _worker_config(settings, queue_list, concurrency, burst)
    try:
        blobs = open_blobstore(settings.storage_url, secret_key=settings.secret_key)
    except JobmillError as exc:
        raise _fail(str(exc), 1) from exc
    runner = Worker(service, default_registry, config, blobs=blobs)
    try:
        stats = asyncio.run(_run_worker(runner, early.received))
    finally:
        blobs.close()
        store.close()
    typer.echo(
        f"worker stopped: {stats.completed} completed, {stats.failed} failed, {stats.retried} retried,"
        f" {stats.cancelled} cancelled, {stats.released} handed back"
    )
    _stopped_cleanly.set()


def _require_schema(store: JobStore) -> None:
    """Refuse to start on a database without this version's schema: every claim would fail, and the
    worker would retry it forever with one warning a second."""
    try:
        pending = store.pending_migrations()
    except JobmillError as exc:
        store.close()
        raise _fail(str(exc), 1) from exc
    if pending:
        store.close()
        raise _fail(
            f"the database lacks {len(pending)} migration(s) of this version ({', '.join(pending)}):"
            " run `jobmill migrate` first",
            1,
        )


def _open_store_waiting(url: str, wait_s: float, stopped: Callable[[], bool]) -> JobStore | None:
    """Open the store, retrying while the database is unreachable (StoreUnavailable) for up to `wait_s`.

    A worker (re)started by its supervisor while the database restarts would otherwise exit at once; once
    running, workers ride out outages by themselves, so a starting one should too. A malformed or
    unsupported URL (ConfigError) fails at once. None when `stopped()` turned true while waiting.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.25
    while True:
        try:
            return open_store(url)
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            if stopped():
                return None
            pause = min(delay, left)  # the last try comes at the deadline, not a backoff step before it
            logging.getLogger("jobmill.worker").warning(
                "database unavailable, retrying in %.1fs: %s", pause, exc
            )
            stop_at = time.monotonic() + pause
            while time.monotonic() < stop_at and not stopped():
                time.sleep(0.05)
            delay = min(delay * 2, 5.0)


def _worker_config(
    settings: Settings, queues: list[str] | None, concurrency: int, burst: bool
) -> WorkerConfig:
    return WorkerConfig(
        queues=queues if queues is not None else default_registry.queues(),
        concurrency=concurrency,
        poll_interval_s=settings.poll_interval_s,
        lease_s=settings.lease_s,
        cancel_grace_s=settings.cancel_grace_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        workdir_root=Path(settings.workdir_root),
        burst=burst,
    )


class _EarlySignals:
    """SIGTERM/SIGINT before the event loop takes them over: counted, not fatal.

    A supervisor that stops a worker still starting up (importing the app, waiting for the database) gets
    a clean exit 0 instead of death by the default action; the loop replays what was received.
    """

    def __init__(self) -> None:
        self.received = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received += 1


async def _run_worker(runner: Worker, early_signals: int = 0) -> WorkerStats:
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
    for _ in range(early_signals):
        # Run once runner.run() has set itself up (its first await), so the stop is not lost.
        loop.call_soon(on_signal)
    return await runner.run()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    app_module: Annotated[
        str | None, typer.Option("--app", help="module whose handlers the embedded workers run")
    ] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only: no embedded workers")] = False,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="embedded worker: jobs at once")] = 4,
    database_url: Annotated[str | None, typer.Option(help="overrides JOBMILL_DATABASE_URL")] = None,
    log_level: Annotated[str, typer.Option(help="jobmill's log level")] = "info",
) -> None:
    """Run the HTTP API and dashboard, with embedded workers for the handlers of --app."""
    import uvicorn

    from jobmill.api.app import build_services, create_app

    _configure_logging(log_level)
    settings = _settings(database_url)
    if app_module:
        _import_app(app_module)
    try:
        services = build_services(settings, registry=default_registry if app_module else None)
    except JobmillError as exc:
        raise _fail(str(exc), 1) from exc
    _require_schema(services.jobs.store)
    api = create_app(settings, services=services)
    runner = None
    if not no_worker and app_module:
        runner = Worker(
            services.jobs,
            default_registry,
            _worker_config(settings, None, concurrency, False),
            blobs=services.blobs,
        )
    server = uvicorn.Server(
        uvicorn.Config(api, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    )
    typer.echo(
        f"jobmill serving on http://{host}:{port} (API docs: /docs)"
        + (f"; embedded worker on queues {','.join(default_registry.queues())}" if runner else "")
    )
    try:
        asyncio.run(_serve(server, runner))
    finally:
        services.blobs.close()
        services.jobs.store.close()


async def _serve(server: object, runner: Worker | None) -> None:
    """Run uvicorn (it handles SIGINT/SIGTERM) and the embedded worker; when the server stops, the worker
    finishes or hands back its jobs."""
    import uvicorn

    assert isinstance(server, uvicorn.Server)
    worker_task = asyncio.create_task(runner.run()) if runner is not None else None
    try:
        await server.serve()
    finally:
        if runner is not None and worker_task is not None:
            runner.request_stop()
            await worker_task


keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _access() -> tuple[JobStore, AccessService]:
    from jobmill.access import AccessService  # JWT and crypto: not needed by `serve` or `worker` start-up

    try:
        store = open_store(_settings().database_url)
    except JobmillError as exc:
        raise _fail(str(exc), 1) from exc
    return store, AccessService(store, utc_now)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    role: Annotated[str, typer.Option(help="user or admin")] = "user",
    name: Annotated[str | None, typer.Option(help="a label, to recognise the key in lists")] = None,
) -> None:
    """Create a key. It is printed once, as the last line: store it now."""
    store, access = _access()
    try:
        record, token = access.create_key(tenant, role, name, actor="cli")
    except JobmillError as exc:
        raise _fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"created key {record.key_id} for tenant {record.tenant} (role {record.role})")
    typer.echo("the key is shown only once; store it now:")
    typer.echo(token)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None) -> None:
    """List keys (never their secrets)."""
    store, access = _access()
    try:
        records = access.list_keys(tenant)
    finally:
        store.close()
    if not records:
        typer.echo("no keys")
        return
    typer.echo(f"{'KEY ID':<14} {'TENANT':<20} {'ROLE':<6} {'STATE':<8} {'CREATED':<20} NAME")
    for r in records:
        state = "active" if r.active else "revoked"
        created = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"{r.key_id:<14} {r.tenant:<20} {r.role:<6} {state:<8} {created:<20} {r.name or ''}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id (the part after jm_)")],
    tenant: Annotated[str | None, typer.Option(help="refuse unless the key belongs to this tenant")] = None,
) -> None:
    """Revoke a key; it stops working at once on every API node."""
    store, access = _access()
    try:
        revoked = access.revoke_key(key_id, "cli", tenant)
    finally:
        store.close()
    if revoked is None:
        raise _fail(f"no active key {key_id!r}" + (f" for tenant {tenant!r}" if tenant else ""), 1)
    typer.echo(f"revoked key {revoked.key_id} of tenant {revoked.tenant}")


register_client_commands(app)  # submit, status, cancel, jobs, tail: the HTTP client side


def main() -> None:
    try:
        app()
    except JobmillError as exc:  # anything that escaped a command: still one line
        typer.echo(f"jobmill: {exc}", err=True)
        sys.exit(1)
    except SystemExit as exc:
        if exc.code in (0, None) and _stopped_cleanly.is_set():
            _exit_without_teardown()
        raise


# Set by a worker that stopped cleanly: its store is closed and its jobs are settled.
_stopped_cleanly = threading.Event()


def _exit_without_teardown() -> None:
    """Exit 0 at once, skipping the interpreter's teardown.

    Freeing every module's objects takes a worker about 0.1 s, a tenth of a burst run's start-to-exit
    overhead and a delay on every restart, for nothing: the store and the blob store are closed, the
    jobs settled. What Python would still do that matters is done first: the atexit hooks (a handler
    module's own included) and flushing output; and if a thread that Python would wait for is still
    running, the normal exit is left to wait for it. Only main() calls this, never a command, so tests
    that invoke the app in-process are unaffected.
    """
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()  # logging.shutdown is one of them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
