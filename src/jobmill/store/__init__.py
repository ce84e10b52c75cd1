"""Job stores: the protocol and its backends, chosen by URL."""

from __future__ import annotations

from jobmill.errors import ConfigError
from jobmill.store.base import JobStore

__all__ = ["JobStore", "open_store"]


def open_store(url: str, *, migrate: bool | None = None) -> JobStore:
    """Open the store at `url`: sqlite:///path, memory://, or postgresql://...

    SQLite is always migrated on open. PostgreSQL is migrated only when `migrate=True` (or by
    `jobmill migrate`), because many nodes share one database and an upgrade should be a deliberate step.
    """
    if url.startswith(("sqlite:", "memory:")):
        from jobmill.store.sqlite import SqliteJobStore

        return SqliteJobStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from jobmill.store.postgres import PostgresJobStore

        store = PostgresJobStore(url)
        if migrate:
            store.migrate()
        return store
    raise ConfigError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/file.db, memory:// or postgresql://..."
    )
