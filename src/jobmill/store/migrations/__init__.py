"""Schema migrations: numbered SQL files per dialect, applied in order and recorded in the database."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

MIGRATIONS_TABLE = "jobmill_schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of `dialect` ("sqlite" or "postgres"), oldest first."""
    folder = resources.files("jobmill.store.migrations").joinpath(dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        version = int(entry.name.split("_", 1)[0])
        found.append(Migration(version, entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..n without gaps: {versions}")
    return found


def missing_migrations(dialect: str, applied: set[int]) -> list[str]:
    """The names of the migrations of `dialect` whose versions are not in `applied`, oldest first."""
    return [m.name for m in load_migrations(dialect) if m.version not in applied]
