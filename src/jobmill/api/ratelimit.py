"""Rate limiting: one token bucket per key.

Keys are chosen by the API: ``"principal:<subject>"`` for authenticated calls, ``"ip:<addr>"`` for failed
authentication. A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a hit costs one
token (or ``cost``). A refused hit consumes nothing and says how long until it would succeed.

- :class:`MemoryRateLimiter`: per process (a single API node, tests).
- :class:`RedisRateLimiter`: shared by every API node through one Redis; fails open when Redis is down.
- :func:`open_rate_limiter` picks one from the settings.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast, runtime_checkable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from jobmill.errors import ConfigError

__all__ = [
    "MemoryRateLimiter",
    "NullRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "open_rate_limiter",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float  # 0 when allowed; else seconds until it would be (send ceil() in Retry-After)
    remaining: float  # tokens left in the bucket after this hit


@runtime_checkable
class RateLimiter(Protocol):
    async def hit(self, key: str, cost: float = 1.0) -> RateDecision: ...

    async def close(self) -> None: ...


def _check_params(rate_per_s: float, burst: float) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ConfigError(f"rate limit: rate_per_s must be a positive number, not {rate_per_s!r}")
    if not (burst >= 1 and math.isfinite(burst)):
        raise ConfigError(f"rate limit: burst must be >= 1, not {burst!r}")


def _check_cost(cost: float, burst: float) -> None:
    # A cost above the burst could never be paid: refusing it forever with a finite Retry-After would lie.
    if not 0 <= cost <= burst:
        raise ValueError(f"rate limit cost must be between 0 and the burst ({burst}), not {cost!r}")


# ----------------------------------------------------------------------------------------------- memory


class MemoryRateLimiter:
    """Token buckets in this process. Safe from threads and coroutines (one short lock, no await under it).

    Memory is bounded: a bucket that has been idle long enough to be full again is dropped (it is then
    identical to a fresh one), and past ``max_keys`` the least recently used bucket is evicted.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = 100_000,
    ) -> None:
        _check_params(rate_per_s, burst)
        if max_keys < 1:
            raise ConfigError("rate limit: max_keys must be >= 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, time of the last update); ordered from least to most recently used.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._full_after_s = self.burst / self.rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)

    async def hit(self, key: str, cost: float = 1.0) -> RateDecision:
        return self.hit_sync(key, cost)

    def hit_sync(self, key: str, cost: float = 1.0) -> RateDecision:
        _check_cost(cost, self.burst)
        with self._lock:
            now = self._clock()
            state = self._buckets.get(key)
            if state is None:
                tokens = self.burst
            else:
                tokens, last = state
                # max(): a clock that steps back must not drain the bucket.
                tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate_per_s)
            if tokens >= cost:
                tokens -= cost
                decision = RateDecision(allowed=True, retry_after_s=0.0, remaining=tokens)
            else:
                decision = RateDecision(
                    allowed=False, retry_after_s=(cost - tokens) / self.rate_per_s, remaining=tokens
                )
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            self._evict(now)
            return decision

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        # Drop idle buckets from the cold end while they are refilled: losing them changes nothing.
        while buckets:
            oldest_key, (_, last) = next(iter(buckets.items()))
            if now - last < self._full_after_s:
                break
            del buckets[oldest_key]
        # Hard cap: under a flood of distinct keys, forget the least recently used ones.
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)

    async def close(self) -> None:
        with self._lock:
            self._buckets.clear()


class NullRateLimiter:
    """Allows everything (rate limiting disabled)."""

    async def hit(self, key: str, cost: float = 1.0) -> RateDecision:
        return RateDecision(allowed=True, retry_after_s=0.0, remaining=math.inf)

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------ Redis

# One atomic step per hit. Time comes from the Redis server (TIME), never from the API node, so nodes with
# skewed clocks share one notion of "now". Floats go back as strings: Lua numbers are truncated to
# integers in replies. The key expires once the bucket would be full again, so idle buckets vanish.
_TOKEN_BUCKET_LUA: Final = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local allowed = 0
local retry_after = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_after = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
local ttl_ms = math.min(math.ceil((burst - tokens) / rate * 1000) + 1000, 1000000000000)
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl_ms))
return {allowed, string.format('%.17g', tokens), string.format('%.17g', retry_after)}
"""
_TOKEN_BUCKET_SHA: Final = hashlib.sha1(_TOKEN_BUCKET_LUA.encode("utf-8"), usedforsecurity=False).hexdigest()


class _ScriptClient(Protocol):
    """The part of ``redis.asyncio.Redis`` used here, typed (the redis stubs leave eval untyped)."""

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: str | float) -> Any: ...

    async def eval(self, script: str, numkeys: int, *keys_and_args: str | float) -> Any: ...

    async def aclose(self) -> None: ...


class RedisRateLimiter:
    """Token buckets in Redis, shared by every API node.

    Create it, use it and close it on one event loop (the app's lifespan). If Redis cannot be reached or
    fails, hits are allowed (fail open) and Redis is left alone for ``retry_interval_s`` before the next
    attempt, so an outage costs one fast failure per interval instead of a timeout per request.
    """

    def __init__(
        self,
        url: str,
        rate_per_s: float,
        burst: float,
        prefix: str = "jobmill:rl:",
        *,
        socket_timeout_s: float = 0.5,
        retry_interval_s: float = 1.0,
        warn_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_params(rate_per_s, burst)
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.prefix = prefix
        self._retry_interval_s = retry_interval_s
        self._warn_interval_s = warn_interval_s
        self._clock = clock
        try:
            client = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                # One immediate retry on a connection error: a pooled connection that died with a Redis
                # restart is replaced transparently. No backoff sleeps: we are on the request path.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL for the rate limiter: {exc}") from None
        self._redis = cast(_ScriptClient, client)
        self._down_until = -math.inf  # skip Redis until then (clock time) after a failure
        self._last_warning = -math.inf
        self._failures_since_warning = 0
        self._failing = False

    async def hit(self, key: str, cost: float = 1.0) -> RateDecision:
        _check_cost(cost, self.burst)
        now = self._clock()
        if now < self._down_until:
            self._failures_since_warning += 1
            return self._fail_open()
        args = (self.prefix + key, self.rate_per_s, self.burst, cost)
        try:
            try:
                reply = await self._redis.evalsha(_TOKEN_BUCKET_SHA, 1, *args)
            except NoScriptError:
                # Script cache empty (fresh or restarted server, SCRIPT FLUSH): EVAL sends the source
                # and caches it, so the next EVALSHA works again.
                reply = await self._redis.eval(_TOKEN_BUCKET_LUA, 1, *args)
            decision = RateDecision(
                allowed=int(reply[0]) == 1, retry_after_s=float(reply[2]), remaining=float(reply[1])
            )
        except Exception as exc:
            # RedisError, OSError, and anything unexpected (a reply of the wrong shape): all fail open.
            self._on_failure(exc)
            return self._fail_open()
        if self._failing:
            self._failing = False
            log.warning("rate limiter: Redis is reachable again; rate limits are enforced")
        return decision

    def _fail_open(self) -> RateDecision:
        # Fail OPEN: the rate limiter protects the API, it must not become the reason the API is down.
        # Nothing is known about the bucket, so report it as full.
        return RateDecision(allowed=True, retry_after_s=0.0, remaining=self.burst)

    def _on_failure(self, exc: BaseException) -> None:
        now = self._clock()
        self._failing = True
        self._down_until = now + self._retry_interval_s
        self._failures_since_warning += 1
        # At most one warning per warn_interval_s: while Redis is down every request comes through here,
        # and a line per request would flood the logs (and their disk) exactly when operators need them.
        if now - self._last_warning >= self._warn_interval_s:
            log.warning(
                "rate limiter: Redis unavailable (%s: %s); allowing requests without rate limits "
                "(%d failed or skipped checks since the last warning)",
                type(exc).__name__,
                exc,
                self._failures_since_warning,
            )
            self._last_warning = now
            self._failures_since_warning = 0

    async def close(self) -> None:
        await self._redis.aclose()


# --------------------------------------------------------------------------------------------- factory


def open_rate_limiter(redis_url: str | None, rate_per_s: float, burst: float) -> RateLimiter:
    """The rate limiter the settings ask for.

    ``rate_per_s == 0`` disables rate limiting; otherwise a Redis URL (``redis://``, ``rediss://``,
    ``unix://``) gives a limiter shared by every node, and no URL a per-process one.
    """
    if rate_per_s == 0:
        return NullRateLimiter()
    _check_params(rate_per_s, burst)
    if not redis_url:
        return MemoryRateLimiter(rate_per_s, burst)
    scheme = redis_url.split("://", 1)[0].lower() if "://" in redis_url else ""
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(f"the rate limiter needs a redis://, rediss:// or unix:// URL, not {scheme!r}")
    return RedisRateLimiter(redis_url, rate_per_s, burst)
