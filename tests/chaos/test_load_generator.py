"""The load generator's own HTTP/1.1 pieces (chaos/load.py): an event stream cut anywhere still yields
the same events, and the stream generators' tallies merge into one."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, cast

from chaos.load import EventStream, Tally, merge_tallies

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENTS = [b'id: 1\nevent: status\ndata: {"a":1}', b": keep-alive", b'id: 2\nevent: progress\ndata: {"b":2}']


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _feed(pieces: list[bytes]) -> tuple[list[bytes], EventStream]:
    async def run() -> tuple[list[bytes], EventStream]:
        seen: list[bytes] = []
        stream = EventStream(b"GET / HTTP/1.1\r\n\r\n", seen.append)
        stream.connection_made(cast(Any, _Transport()))
        for piece in pieces:
            stream.data_received(piece)
        return seen, stream

    return asyncio.run(run())


def test_events_are_the_same_however_the_bytes_arrive() -> None:
    # The second chunk holds the end of one event and the start of the next.
    body = _chunk(EVENTS[0] + b"\n\n" + EVENTS[1][:4]) + _chunk(EVENTS[1][4:] + b"\n\n")
    body += _chunk(EVENTS[2] + b"\n\n") + b"0\r\n\r\n"
    whole = HEAD + body
    for size in (1, 2, 7, 64, len(whole)):
        seen, stream = _feed([whole[i : i + size] for i in range(0, len(whole), size)])
        assert seen == EVENTS, size
        assert stream.status.result() == 200
        assert stream.ended.done() and stream.ended.exception() is None


def test_a_refused_stream_reports_its_status() -> None:
    seen, stream = _feed([b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}"])
    assert stream.status.result() == 404 and seen == []


def test_tallies_merge() -> None:
    one, two = Tally(streams_opened=3, held_samples=[3, 3, 3]), Tally(streams_opened=2, held_samples=[2, 1])
    one.stream_status = {"200": 3}
    two.stream_status = {"200": 2}
    two.ramp_s = 4.0
    merged = merge_tallies([asdict(one), asdict(two)])
    assert merged["streams_opened"] == 5
    assert merged["stream_status"] == {"200": 5}
    assert merged["held_samples"] == [5, 4]
    assert merged["ramp_s"] == 4.0
