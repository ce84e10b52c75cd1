"""The per-block counts behind queue_position (migrations: postgres 0005, sqlite 0003), seen from outside
the store: set the block width, and compare the counts with a recount from jobmill_jobs."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

BLOCKS_SQL = "SELECT queue, priority, block, pending FROM jobmill_position_blocks ORDER BY 1, 2, 3"
RECOUNT_SQL = (
    "SELECT queue, priority, seq / {width}, count(*) FROM jobmill_jobs WHERE status = 'pending'"
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
WIDTH_SQL = "SELECT block_width FROM jobmill_position_settings"


class BlockCounts:
    """A second connection to a store's database (a SQLite file or PostgreSQL), for the block counts."""

    def __init__(self, url: str) -> None:
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        if url.startswith("sqlite:///"):
            self._sqlite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        else:
            self._pg = psycopg.connect(url, autocommit=True)

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return [tuple(r) for r in self._sqlite.execute(sql).fetchall()]
        assert self._pg is not None
        return self._pg.execute(sql.encode()).fetchall()

    def set_width(self, width: int) -> None:
        """Recount every block at `width` (jobs may exist already)."""
        if self._pg is not None:
            self._pg.execute("SELECT jobmill_position_reblock(%s)", (width,))
            return
        assert self._sqlite is not None
        conn = self._sqlite
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("UPDATE jobmill_position_settings SET block_width = ?", (width,))
            conn.execute("DELETE FROM jobmill_position_blocks")
            conn.execute(
                "INSERT INTO jobmill_position_blocks (queue, priority, block, pending) "
                + RECOUNT_SQL.format(width=width)
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def width(self) -> int:
        return int(self._rows(WIDTH_SQL)[0][0])

    def blocks(self) -> list[tuple[Any, ...]]:
        return self._rows(BLOCKS_SQL)

    def recount(self) -> list[tuple[Any, ...]]:
        return self._rows(RECOUNT_SQL.format(width=self.width()))

    def assert_consistent(self) -> None:
        """The counts equal a recount of the pending jobs, and no empty block is left behind."""
        blocks = self.blocks()
        assert blocks == self.recount()
        assert all(row[3] > 0 for row in blocks), blocks

    def execute(self, sql: str) -> None:
        if self._sqlite is not None:
            self._sqlite.execute(sql)
        else:
            assert self._pg is not None
            self._pg.execute(sql.encode())

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()
