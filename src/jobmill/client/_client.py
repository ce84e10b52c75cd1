"""`Client` and `AsyncClient`: the jobmill HTTP API from Python, blocking and asyncio.

Both drive the same flows (`jobmill.client._core`); what differs is only how a request is sent, how a
stream is read and how to sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from jobmill.client._core import (
    DEFAULT_TIMEOUT_S,
    STREAM_READ_TIMEOUT_S,
    AtomicFile,
    Call,
    FileSource,
    Flow,
    JobId,
    SseDecoder,
    Step,
    Watch,
    cancel_flow,
    check_event_stream,
    client_options,
    download_flow,
    error_from_response,
    events_call,
    get_flow,
    list_flow,
    retry_flow,
    service_root,
    set_priority_flow,
    submit_flow,
    transport_error,
)
from jobmill.client._errors import ConnectionFailed, NotFound, RateLimited, ServerError, UnexpectedResponse
from jobmill.client._models import Job, JobEvent, JobPage
from jobmill.domain.job import JobStatus

T = TypeVar("T")
StatusFilter = str | JobStatus | Iterable[str | JobStatus] | None


def _stream_timeout(base: httpx.Timeout, read: float) -> httpx.Timeout:
    return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)


class Client:
    """The jobmill API over HTTP, blocking. Use it as a context manager, or call `close()`.

    `url` is the service's address (`http://127.0.0.1:8000`); `api_key` an API key or a JWT.
    Errors the server answers become `ApiError` subclasses (`NotFound`, `Conflict`, `RateLimited`, ...);
    a service that cannot be reached raises `ConnectionFailed`.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = service_root(url)
        self._http = httpx.Client(transport=transport, **client_options(url, api_key, timeout))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- driving flows --------------------------------------------------------------------------------

    def _request(self, call: Call, timeout: httpx.Timeout | None = None) -> httpx.Request:
        return self._http.build_request(
            call.method,
            call.url,
            params=call.params,
            json=call.json,
            data=call.data,
            files=call.files,
            headers=call.headers,
            timeout=timeout if timeout is not None else self._http.timeout,
        )

    def _send(self, call: Call) -> httpx.Response:
        try:
            if call.save_to is None:
                return self._http.send(self._request(call))
            response = self._http.send(self._request(call), stream=True)
            try:
                if response.is_success:
                    out = AtomicFile(call.save_to)
                    try:
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                    except BaseException:
                        out.abort()
                        raise
                    out.commit()
                else:
                    response.read()
            finally:
                response.close()
            return response
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc

    def _run(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                call = flow.send(self._send(call))
        except StopIteration as done:
            result: T = done.value
            return result
        finally:
            flow.close()

    # -- jobs -----------------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        files: Mapping[str, FileSource] | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job; answered at once with the pending job. `files` maps input names to a path,
        bytes or a binary file; with files the submission is multipart, and the handler reads them with
        `ctx.input_path(name)`. The same `idempotency_key` with the same body returns the same job."""
        return self._run(
            submit_flow(kind, params, files, queue, priority, max_attempts, timeout_s, idempotency_key)
        )

    def get(self, job_id: JobId) -> Job:
        return self._run(get_flow(job_id))

    def list(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first; `status` is one status, several, or comma-separated."""
        return self._run(list_flow(status, kind, queue, limit, cursor))

    def iter_jobs(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        queue: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetching page after page."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, kind=kind, queue=queue, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: JobId, *, confirm: bool = True, confirm_token: str | None = None) -> Job:
        """Cancel: a pending job is `cancelled` at once, a running one `cancelling` until its processes
        are gone; a finished one raises Conflict. When the server asks for confirmation (two-step
        cancel), the token is sent back at once, unless `confirm=False`: then ConfirmationRequired
        carries the token for a later `cancel(job_id, confirm_token=...)`."""
        return self._run(cancel_flow(job_id, confirm, confirm_token))

    def set_priority(self, job_id: JobId, priority: int) -> tuple[Job, int | None]:
        """Admin: change a pending job's priority; returns the job and its new queue position."""
        return self._run(set_priority_flow(job_id, priority))

    def retry(self, job_id: JobId) -> Job:
        """Admin: put a failed or cancelled job back in its queue."""
        return self._run(retry_flow(job_id))

    def download(self, job_id: JobId, name: str, path: str | os.PathLike[str]) -> Path:
        """Save output `name` to `path`, streaming; `path` is a file, or a folder (existing, or written
        with a trailing slash) to save it in under its name. Returns the file written, which appears only
        when complete."""
        return self._run(download_flow(job_id, name, path))

    # -- following a job ------------------------------------------------------------------------------

    @contextmanager
    def _stream(self, call: Call, read_timeout: float) -> Iterator[Iterator[JobEvent]]:
        request = self._request(call, _stream_timeout(self._http.timeout, read_timeout))
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc
        try:
            if response.is_error:
                try:
                    response.read()
                except httpx.TransportError as exc:
                    raise transport_error(self.url, exc) from exc
                raise error_from_response(response)
            check_event_stream(response)
            yield self._decode(response)
        finally:
            response.close()

    def _decode(self, response: httpx.Response) -> Iterator[JobEvent]:
        decoder = SseDecoder()
        try:
            for line in response.iter_lines():
                if (event := decoder.feed(line)) is not None:
                    yield event
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc

    def events(self, job_id: JobId, *, last_event_id: int | None = None) -> Iterator[JobEvent]:
        """The job's events as they happen (Server-Sent Events): the ones after `last_event_id` (a `seq`)
        first, all of them without it; the iterator ends after the terminal event."""
        with self._stream(events_call(job_id, last_event_id), STREAM_READ_TIMEOUT_S) as events:
            yield from events

    def watch(
        self, job_id: JobId, *, timeout: float | None = None, poll_interval: float = 0.5
    ) -> Iterator[Job]:
        """The job each time its status, stage, progress, message or queue position changes, ending with
        the terminal job (with its result, error and outputs). Follows the live stream when the server
        has one, polls while the job is pending and when there is none. WaitTimeout after `timeout` s."""
        state = Watch(job_id, poll_interval=poll_interval, timeout=timeout)
        while (step := state.next_step()) is not Step.DONE:
            if step is Step.SLEEP:
                time.sleep(state.delay)
                state.slept()
            elif step is Step.FETCH:
                try:
                    job = self.get(job_id)
                except RateLimited as exc:
                    state.on_rate_limited(exc)
                    continue
                if (shown := state.on_job(job)) is not None:
                    yield shown
            else:
                yield from self._follow(state)

    def _follow(self, state: Watch) -> Iterator[Job]:
        try:
            with self._stream(
                events_call(state.job_id, state.last_seq), state.stream_read_timeout()
            ) as events:
                for event in events:
                    shown, stop = state.on_event(event)
                    if shown is not None:
                        yield shown
                    if stop:
                        return
            state.on_stream_end()
        except (NotFound, UnexpectedResponse):
            state.on_stream_unavailable()
        except RateLimited as exc:
            state.on_rate_limited(exc)
        except (ConnectionFailed, ServerError):
            state.on_stream_end()

    def wait(
        self,
        job_id: JobId,
        *,
        on_update: Callable[[Job], object] | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
    ) -> Job:
        """Block until the job is completed, failed or cancelled and return it; `on_update(job)` is
        called with every change on the way (see `watch`)."""
        last: Job | None = None
        for job in self.watch(job_id, timeout=timeout, poll_interval=poll_interval):
            last = job
            if on_update is not None:
                on_update(job)
        assert last is not None  # watch() always yields the job at least once
        return last


class AsyncClient:
    """The asyncio twin of `Client`: the same methods, awaited (`events` and `watch` are async
    iterators). Use it as an async context manager, or call `aclose()`."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = service_root(url)
        self._http = httpx.AsyncClient(transport=transport, **client_options(url, api_key, timeout))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- driving flows --------------------------------------------------------------------------------

    def _request(self, call: Call, timeout: httpx.Timeout | None = None) -> httpx.Request:
        return self._http.build_request(
            call.method,
            call.url,
            params=call.params,
            json=call.json,
            data=call.data,
            files=call.files,
            headers=call.headers,
            timeout=timeout if timeout is not None else self._http.timeout,
        )

    async def _send(self, call: Call) -> httpx.Response:
        try:
            if call.save_to is None:
                return await self._http.send(self._request(call))
            response = await self._http.send(self._request(call), stream=True)
            try:
                if response.is_success:
                    out = AtomicFile(call.save_to)
                    try:
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
                    except BaseException:
                        out.abort()
                        raise
                    out.commit()
                else:
                    await response.aread()
            finally:
                await response.aclose()
            return response
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc

    async def _run(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                call = flow.send(await self._send(call))
        except StopIteration as done:
            result: T = done.value
            return result
        finally:
            flow.close()

    # -- jobs -----------------------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        *,
        files: Mapping[str, FileSource] | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """See `Client.submit`."""
        return await self._run(
            submit_flow(kind, params, files, queue, priority, max_attempts, timeout_s, idempotency_key)
        )

    async def get(self, job_id: JobId) -> Job:
        return await self._run(get_flow(job_id))

    async def list(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """See `Client.list`."""
        return await self._run(list_flow(status, kind, queue, limit, cursor))

    async def iter_jobs(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        queue: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[Job]:
        """See `Client.iter_jobs`."""
        cursor: str | None = None
        while True:
            page = await self.list(status=status, kind=kind, queue=queue, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: JobId, *, confirm: bool = True, confirm_token: str | None = None) -> Job:
        """See `Client.cancel`."""
        return await self._run(cancel_flow(job_id, confirm, confirm_token))

    async def set_priority(self, job_id: JobId, priority: int) -> tuple[Job, int | None]:
        """See `Client.set_priority`."""
        return await self._run(set_priority_flow(job_id, priority))

    async def retry(self, job_id: JobId) -> Job:
        """See `Client.retry`."""
        return await self._run(retry_flow(job_id))

    async def download(self, job_id: JobId, name: str, path: str | os.PathLike[str]) -> Path:
        """See `Client.download`."""
        return await self._run(download_flow(job_id, name, path))

    # -- following a job ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _stream(self, call: Call, read_timeout: float) -> AsyncIterator[AsyncIterator[JobEvent]]:
        request = self._request(call, _stream_timeout(self._http.timeout, read_timeout))
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc
        try:
            if response.is_error:
                try:
                    await response.aread()
                except httpx.TransportError as exc:
                    raise transport_error(self.url, exc) from exc
                raise error_from_response(response)
            check_event_stream(response)
            yield self._decode(response)
        finally:
            await response.aclose()

    async def _decode(self, response: httpx.Response) -> AsyncIterator[JobEvent]:
        decoder = SseDecoder()
        try:
            async for line in response.aiter_lines():
                if (event := decoder.feed(line)) is not None:
                    yield event
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc

    async def events(self, job_id: JobId, *, last_event_id: int | None = None) -> AsyncIterator[JobEvent]:
        """See `Client.events`."""
        async with self._stream(events_call(job_id, last_event_id), STREAM_READ_TIMEOUT_S) as events:
            async for event in events:
                yield event

    async def watch(
        self,
        job_id: JobId,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  (the same signature as Client.watch)
        poll_interval: float = 0.5,
    ) -> AsyncIterator[Job]:
        """See `Client.watch`."""
        state = Watch(job_id, poll_interval=poll_interval, timeout=timeout)
        while (step := state.next_step()) is not Step.DONE:
            if step is Step.SLEEP:
                await asyncio.sleep(state.delay)
                state.slept()
            elif step is Step.FETCH:
                try:
                    job = await self.get(job_id)
                except RateLimited as exc:
                    state.on_rate_limited(exc)
                    continue
                if (shown := state.on_job(job)) is not None:
                    yield shown
            else:
                async for shown in self._follow(state):
                    yield shown

    async def _follow(self, state: Watch) -> AsyncIterator[Job]:
        try:
            call = events_call(state.job_id, state.last_seq)
            async with self._stream(call, state.stream_read_timeout()) as events:
                async for event in events:
                    shown, stop = state.on_event(event)
                    if shown is not None:
                        yield shown
                    if stop:
                        return
            state.on_stream_end()
        except (NotFound, UnexpectedResponse):
            state.on_stream_unavailable()
        except RateLimited as exc:
            state.on_rate_limited(exc)
        except (ConnectionFailed, ServerError):
            state.on_stream_end()

    async def wait(
        self,
        job_id: JobId,
        *,
        on_update: Callable[[Job], object] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  (the same signature as Client.wait)
        poll_interval: float = 0.5,
    ) -> Job:
        """See `Client.wait`; `on_update` may be a plain function or a coroutine function."""
        last: Job | None = None
        async for job in self.watch(job_id, timeout=timeout, poll_interval=poll_interval):
            last = job
            if on_update is not None:
                outcome = on_update(job)
                if inspect.isawaitable(outcome):
                    await outcome
        assert last is not None  # watch() always yields the job at least once
        return last


__all__ = ["AsyncClient", "Client"]
