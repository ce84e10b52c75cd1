"""direct_route(): an API route answered by a hand-written handler, documented as FastAPI documents it.

FastAPI's work per request (solving dependencies, validating parameters, validating and serialising the
response model) costs about as much as a whole minimal FastAPI endpoint. For the API's most frequent
request that is the larger part of its cost, so such a route can name a `fast` handler that does the same
steps itself, in the same order, with the same answers. The route keeps its declared endpoint: the OpenAPI
document is built from it as for any route, and every request the fast handler declines (it answers None:
malformed input, say) goes to FastAPI's own handling of that endpoint, so the rare paths stay FastAPI's.
Exceptions raised by the fast handler reach the app's exception handlers, as an endpoint's do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

FastHandler = Callable[[Request], Awaitable[Response | None]]


class DirectRoute(APIRoute):
    """An APIRoute whose requests go to `fast` first (see the module docstring)."""

    fast: FastHandler

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.standard_app = self.app  # FastAPI's handling of the endpoint, for the declined requests
        self.app = _direct_app(type(self).fast, standard=self.standard_app)


def _direct_app(fast: FastHandler, standard: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await fast(Request(scope, receive, send))
        if response is None:
            await standard(scope, receive, send)
        else:
            await response(scope, receive, send)

    return app


def direct_route(fast: FastHandler) -> type[APIRoute]:
    """A route class for `APIRouter.add_api_route(..., route_class_override=direct_route(fast))`, for a
    route of the app's own router (in an included router, FastAPI dispatches to its standard handling)."""
    return type(f"DirectRoute_{fast.__name__}", (DirectRoute,), {"fast": staticmethod(fast)})
