"""Rate limiting: the in-process buckets with a fake clock, and the shared buckets against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobmill.api.ratelimit import (
    MemoryRateLimiter,
    NullRateLimiter,
    RateDecision,
    RateLimiter,
    RedisRateLimiter,
    open_rate_limiter,
)
from jobmill.errors import ConfigError
from tests.support.processes import REPO, wait_until

REDIS_URL = os.environ.get("JOBMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_REQUIRED = os.environ.get("JOBMILL_REQUIRE_REDIS") == "1"
LOGGER = "jobmill.api.ratelimit"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the real Redis; its keys are removed afterwards."""
    if not _ping(REDIS_URL):
        message = f"Redis is not reachable at {REDIS_URL}"
        if REDIS_REQUIRED:
            pytest.fail(message + " and JOBMILL_REQUIRE_REDIS=1", pytrace=False)
        pytest.skip(message)
    prefix = f"jobmill-test:rl:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# ----------------------------------------------------------------------------------------------- memory


def test_memory_burst_then_refused_then_refill() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(rate_per_s=2, burst=3, clock=clock)

    async def scenario() -> None:
        decisions = [await limiter.hit("principal:alice") for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, True]
        assert [d.remaining for d in decisions] == [2, 1, 0]
        assert all(d.retry_after_s == 0 for d in decisions)

        refused = await limiter.hit("principal:alice")
        assert refused == RateDecision(allowed=False, retry_after_s=0.5, remaining=0)
        assert math.ceil(refused.retry_after_s) == 1  # what Retry-After will say
        # A refused hit costs nothing: the wait does not grow.
        assert (await limiter.hit("principal:alice")).retry_after_s == 0.5

        clock.advance(0.25)
        half = await limiter.hit("principal:alice")
        assert not half.allowed and half.retry_after_s == pytest.approx(0.25)
        clock.advance(0.25)
        assert (await limiter.hit("principal:alice")).allowed
        assert not (await limiter.hit("principal:alice")).allowed

        # Other keys have their own buckets.
        assert (await limiter.hit("ip:10.0.0.1")).allowed

        # A long idle period refills up to the burst, not beyond.
        clock.advance(3600)
        assert [(await limiter.hit("principal:alice")).allowed for _ in range(4)] == [True, True, True, False]

    asyncio.run(scenario())


def test_memory_cost_and_clock_going_back() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(rate_per_s=1, burst=5, clock=clock)
    assert limiter.hit_sync("k", cost=4).remaining == 1
    refused = limiter.hit_sync("k", cost=3)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(2)
    clock.advance(-100)  # a clock that steps back neither drains nor refills
    assert limiter.hit_sync("k", cost=1).allowed
    assert not limiter.hit_sync("k", cost=1).allowed
    assert limiter.hit_sync("k", cost=0).allowed
    with pytest.raises(ValueError):
        limiter.hit_sync("k", cost=6)  # more than the burst could never be allowed
    with pytest.raises(ValueError):
        limiter.hit_sync("k", cost=-1)


def test_memory_bounded() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(rate_per_s=1, burst=2, clock=clock, max_keys=3)
    for i in range(10):
        limiter.hit_sync(f"ip:{i}")
    assert len(limiter) == 3
    # Idle buckets that are full again are dropped: they are the same as fresh ones.
    clock.advance(2.0)
    limiter.hit_sync("ip:new")
    assert len(limiter) == 1
    # A recently used key survives LRU eviction; the least recently used one goes.
    limiter.hit_sync("a")
    limiter.hit_sync("b")
    limiter.hit_sync("ip:new")
    limiter.hit_sync("c")
    assert len(limiter) == 3
    assert not limiter.hit_sync("ip:new").allowed  # its bucket (2 hits so far) was kept


def test_memory_thread_and_task_safe() -> None:
    limiter = MemoryRateLimiter(rate_per_s=0.001, burst=50)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [limiter.hit_sync("shared").allowed for _ in range(25)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 50 and len(results) == 200

    async def tasks() -> list[RateDecision]:
        return await asyncio.gather(*(limiter.hit("tasks") for _ in range(80)))

    assert sum(d.allowed for d in asyncio.run(tasks())) == 50


def test_open_rate_limiter_choices() -> None:
    assert isinstance(open_rate_limiter(None, 5, 10), MemoryRateLimiter)
    assert isinstance(open_rate_limiter("", 5, 10), MemoryRateLimiter)
    assert isinstance(open_rate_limiter(None, 0, 10), NullRateLimiter)
    assert isinstance(open_rate_limiter(None, 5, 10), RateLimiter)

    async def opened_redis() -> None:
        limiter = open_rate_limiter("redis://127.0.0.1:1/0", 5, 10)
        assert isinstance(limiter, RedisRateLimiter)
        await limiter.close()

    asyncio.run(opened_redis())
    for url, rate, burst in [
        ("postgresql://x/y", 5, 10),
        ("localhost:6379", 5, 10),
        (None, -1, 10),
        (None, 5, 0),
        (None, math.inf, 10),
        (None, math.nan, 10),
    ]:
        with pytest.raises(ConfigError):
            open_rate_limiter(url, rate, burst)


def test_null_rate_limiter() -> None:
    async def scenario() -> None:
        limiter = NullRateLimiter()
        assert all([(await limiter.hit("k")).allowed for _ in range(1000)])
        await limiter.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------------ Redis


def test_redis_burst_and_retry_after(redis_prefix: str) -> None:
    async def scenario() -> None:
        limiter = RedisRateLimiter(REDIS_URL, rate_per_s=1, burst=5, prefix=redis_prefix)
        try:
            decisions = [await limiter.hit("principal:alice") for _ in range(5)]
            assert all(d.allowed and d.retry_after_s == 0 for d in decisions)
            assert decisions[0].remaining == pytest.approx(4, abs=0.5)
            assert decisions[-1].remaining == pytest.approx(0, abs=0.5)

            refused = await limiter.hit("principal:alice")
            assert not refused.allowed
            # One token at 1/s is 1 s away, minus what has refilled since the bucket emptied.
            assert refused.retry_after_s == pytest.approx(1 - refused.remaining)
            assert 0.5 < refused.retry_after_s <= 1.0
            assert math.ceil(refused.retry_after_s) == 1
            # Other keys are independent.
            assert (await limiter.hit("ip:192.0.2.1")).allowed
        finally:
            await limiter.close()

    asyncio.run(scenario())

    client = redis.Redis.from_url(REDIS_URL)
    try:
        key = redis_prefix + "principal:alice"
        # The bucket expires once it would be full again (5 s here, + 1 s margin): idle keys vanish.
        assert 4000 < client.pttl(key) <= 6000
        # Its timestamp is the Redis server's clock, not this process's monotonic clock.
        seconds, micros = client.time()
        stored = float(client.hget(key, "ts") or 0)
        assert abs(stored - (seconds + micros / 1e6)) < 5
    finally:
        client.close()


def test_redis_refill(redis_prefix: str) -> None:
    async def scenario() -> None:
        limiter = RedisRateLimiter(REDIS_URL, rate_per_s=10, burst=2, prefix=redis_prefix)
        try:
            first = [await limiter.hit("k") for _ in range(3)]
            assert [d.allowed for d in first] == [True, True, False]
            await asyncio.sleep(first[-1].retry_after_s + 0.01)  # as a client obeying Retry-After
            assert (await limiter.hit("k")).allowed
            await asyncio.sleep(1.0)  # five times the time to fill the bucket: capped at the burst
            assert (await limiter.hit("k")).remaining == pytest.approx(1.0)
        finally:
            await limiter.close()

    asyncio.run(scenario())


def test_redis_concurrent_hits_are_atomic(redis_prefix: str) -> None:
    async def scenario() -> None:
        limiter = RedisRateLimiter(REDIS_URL, rate_per_s=0.001, burst=10, prefix=redis_prefix)
        try:
            decisions = await asyncio.gather(*(limiter.hit("shared") for _ in range(40)))
            assert sum(d.allowed for d in decisions) == 10
        finally:
            await limiter.close()

    asyncio.run(scenario())


_HITTER = textwrap.dedent(
    """
    import asyncio
    import sys

    from jobmill.api.ratelimit import RedisRateLimiter


    async def main() -> None:
        url, prefix, hits = sys.argv[1], sys.argv[2], int(sys.argv[3])
        limiter = RedisRateLimiter(url, rate_per_s=0.001, burst=10, prefix=prefix)
        assert (await limiter.hit("warm-up")).allowed  # connect and load the script before the race
        print("ready", flush=True)
        sys.stdin.readline()
        allowed = 0
        for _ in range(hits):
            allowed += (await limiter.hit("shared")).allowed
        await limiter.close()
        print(allowed, flush=True)


    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_redis_bucket_shared_by_two_processes(redis_prefix: str, tmp_path: Path) -> None:
    script = tmp_path / "hitter.py"
    script.write_text(_HITTER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), REDIS_URL, redis_prefix, "15"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:  # start both at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        counts = []
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert "Redis unavailable" not in err  # a fail-open would make the count meaningless
            counts.append(int(out.strip()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert sum(counts) == 10, counts  # 30 hits, one shared bucket of 10


def test_redis_unreachable_fails_open_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there

    async def scenario() -> None:
        # retry_interval_s=0: every hit really tries Redis (the default skips it for a second).
        limiter = RedisRateLimiter(url, rate_per_s=1, burst=2, retry_interval_s=0, clock=clock)
        try:
            started = time.monotonic()
            decisions = [await limiter.hit("principal:alice") for _ in range(20)]
            assert time.monotonic() - started < 5  # refused connections fail fast: no backoff sleeps
            assert all(d.allowed and d.retry_after_s == 0 for d in decisions)
            assert len(caplog.records) == 1
            clock.advance(29)
            await limiter.hit("principal:alice")
            assert len(caplog.records) == 1
            clock.advance(2)  # more than 30 s since the first warning
            await limiter.hit("principal:alice")
            assert len(caplog.records) == 2
            assert "21 failed or skipped checks" in caplog.records[1].getMessage()
        finally:
            await limiter.close()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        asyncio.run(scenario())
    assert all(r.levelno == logging.WARNING and "Redis unavailable" in r.getMessage() for r in caplog.records)


def test_redis_unreachable_is_not_retried_on_every_request(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    url = f"redis://127.0.0.1:{_free_port()}/0"

    async def scenario() -> None:
        limiter = RedisRateLimiter(url, rate_per_s=1, burst=2, retry_interval_s=1.0, clock=clock)
        attempts = 0
        real_evalsha = limiter._redis.evalsha

        async def counting_evalsha(sha: str, numkeys: int, *keys_and_args: str | float) -> Any:
            nonlocal attempts
            attempts += 1
            return await real_evalsha(sha, numkeys, *keys_and_args)

        monkeypatch.setattr(limiter._redis, "evalsha", counting_evalsha)
        try:
            for _ in range(50):
                assert (await limiter.hit("k")).allowed
            assert attempts == 1
            clock.advance(1.5)
            assert (await limiter.hit("k")).allowed
            assert attempts == 2
        finally:
            await limiter.close()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        asyncio.run(scenario())


class _RedisServer:
    """A private redis-server on a free port, so the test may stop and restart it."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _ping(self.url), timeout=10, message="redis-server to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def command_calls(self, name: str) -> int:
        client = redis.Redis.from_url(self.url)
        try:
            stats = client.info("commandstats").get(f"cmdstat_{name}", {})
            return int(stats.get("calls", 0))
        finally:
            client.close()


@pytest.mark.slow
def test_redis_outage_fails_open_then_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed")
    server = _RedisServer(tmp_path)
    server.start()

    async def hits(limiter: RedisRateLimiter, n: int) -> list[bool]:
        return [(await limiter.hit("principal:bob")).allowed for _ in range(n)]

    async def scenario() -> None:
        limiter = RedisRateLimiter(server.url, rate_per_s=0.001, burst=2, retry_interval_s=0.05)
        try:
            # A fresh server has no cached script: EVALSHA answers NOSCRIPT once, EVAL loads it.
            assert await hits(limiter, 3) == [True, True, False]
            assert server.command_calls("eval") == 1
            assert server.command_calls("evalsha") == 3

            server.stop()
            assert await hits(limiter, 5) == [True] * 5  # fail open
            await asyncio.sleep(0.1)
            assert await hits(limiter, 5) == [True] * 5
            warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
            assert len(warnings) == 1

            server.start()  # back, empty (no persistence) and without the script
            await asyncio.sleep(0.1)  # past retry_interval_s
            assert await hits(limiter, 3) == [True, True, False]
            assert any("reachable again" in r.getMessage() for r in caplog.records)
        finally:
            await limiter.close()

    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            asyncio.run(scenario())
    finally:
        server.stop()
