"""Fixtures of the client tests: one real service per module, and clients of both kinds.

`make_client` is parametrised over the blocking `Client` and the `AsyncClient`; the async one is driven
through `AsyncAsSync`, which runs each awaited call (and drains each async iterator) on its own event
loop, so that every test body runs against both twins unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from jobmill.client import AsyncClient, Client
from tests.client.live import Live, live_service

Intercept = Callable[[httpx.Request], httpx.Response | None]


class RecordingTransport(httpx.BaseTransport):
    """The real transport, recording each request; `intercept` may answer a request instead."""

    def __init__(self, intercept: Intercept | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.intercept = intercept
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.intercept is not None and (answer := self.intercept(request)) is not None:
            return answer
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncRecordingTransport(httpx.AsyncBaseTransport):
    def __init__(self, intercept: Intercept | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.intercept = intercept
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.intercept is not None and (answer := self.intercept(request)) is not None:
            return answer
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _drain(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


class AsyncAsSync:
    """An AsyncClient behind the blocking interface: coroutines are run, async iterators drained."""

    def __init__(self, client: AsyncClient, transport: AsyncRecordingTransport) -> None:
        self._client = client
        self._loop = asyncio.new_event_loop()
        self.transport = transport

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if inspect.isasyncgen(result):
                return iter(self._loop.run_until_complete(_drain(result)))
            if inspect.iscoroutine(result):
                return self._loop.run_until_complete(result)
            return result

        return call

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_service(tmp_path_factory.mktemp("client")) as service:
        yield service


MakeClient = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest, live: Live) -> Iterator[MakeClient]:
    """make(key=None, *, intercept=None, url=None): a client of the parametrised kind; `.transport`
    holds the requests it sent."""
    made: list[Any] = []

    def make(key: str | None = None, *, intercept: Intercept | None = None, url: str | None = None) -> Any:
        if request.param == "sync":
            sync_transport = RecordingTransport(intercept)
            client: Any = Client(url or live.url, key or live.admin_key, transport=sync_transport, timeout=10)
            client.transport = sync_transport
        else:
            async_transport = AsyncRecordingTransport(intercept)
            inner = AsyncClient(url or live.url, key or live.admin_key, transport=async_transport, timeout=10)
            client = AsyncAsSync(inner, async_transport)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> Any:
    return make_client()
