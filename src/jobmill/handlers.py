"""Handler registration: `@handler("kind", ...)` turns a plain function into a job kind.

The registry is what a worker runs and what the service consults for a kind's defaults (queue, timeout,
attempts) and to refuse unknown kinds at submission.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from jobmill.errors import UnknownKind, ValidationError

Isolation = Literal["thread", "process"]
F = TypeVar("F", bound=Callable[..., Any])

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_name(what: str, value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValidationError(
            f"{what} {value!r} must be 1-128 characters of letters, digits and _.:- (not starting with one)"
        )
    return value


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    kind: str
    fn: Callable[..., Any]
    queue: str = "default"
    timeout_s: float | None = None
    max_attempts: int = 1
    isolation: Isolation = "thread"  # for sync handlers: a thread, or a child process that can be killed
    cacheable: bool = False
    # Decided once: the worker asks for every job, and inspect's check is a few microseconds each time.
    is_async: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.fn))


def _identity(fn: Callable[..., Any]) -> tuple[str, str]:
    return (fn.__module__, fn.__qualname__)


class HandlerRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, HandlerSpec] = {}

    def register(self, spec: HandlerSpec) -> None:
        check_name("kind", spec.kind)
        check_name("queue", spec.queue)
        if spec.max_attempts < 1:
            raise ValidationError("max_attempts must be >= 1")
        if spec.timeout_s is not None and spec.timeout_s <= 0:
            raise ValidationError("timeout_s must be > 0")
        existing = self._specs.get(spec.kind)
        # Re-importing the same module registers the same function again: that is not a conflict.
        if existing is not None and _identity(existing.fn) != _identity(spec.fn):
            raise ValidationError(f"job kind {spec.kind!r} is registered twice")
        self._specs[spec.kind] = spec

    def get(self, kind: str) -> HandlerSpec:
        try:
            return self._specs[kind]
        except KeyError:
            raise UnknownKind(kind) from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._specs

    def __iter__(self) -> Iterator[HandlerSpec]:
        return iter(self._specs.values())

    def queues(self) -> list[str]:
        return sorted({spec.queue for spec in self._specs.values()})


default_registry = HandlerRegistry()


def handler(
    kind: str,
    *,
    queue: str = "default",
    timeout_s: float | None = None,
    max_attempts: int = 1,
    isolation: Isolation = "thread",
    cacheable: bool = False,
    registry: HandlerRegistry | None = None,
) -> Callable[[F], F]:
    """Register the decorated function (async or sync, taking a JobContext) as the handler of `kind`."""

    def decorate(fn: F) -> F:
        (registry or default_registry).register(
            HandlerSpec(kind, fn, queue, timeout_s, max_attempts, isolation, cacheable)
        )
        return fn

    return decorate
