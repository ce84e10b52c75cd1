"""The declared schema of each dialect (store/schema/<dialect>.sql) is what its migrations build.

Migrations are the history; the declared schema is the readable current state. Each test builds one fresh
database from the migrations and another from the declared file, and compares what the catalog says about
tables, columns, indexes and constraints (the migrations' bookkeeping table aside). A migration that is
not mirrored in the declared file, or the other way round, fails here.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobmill.store.migrations import MIGRATIONS_TABLE, load_migrations
from jobmill.store.sqlite import SqliteJobStore
from tests.support.postgres import ScratchDatabase, require_server

# Read from the source tree, next to the migrations they mirror.
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "src" / "jobmill" / "store" / "schema"


def declared(dialect: str) -> str:
    return (SCHEMA_DIR / f"{dialect}.sql").read_text("utf-8")


# -- SQLite -------------------------------------------------------------------------------------------


def _normalise_sql(sql: str | None) -> str | None:
    if sql is None:  # automatic indexes (UNIQUE constraints) have no SQL text
        return None
    text = re.sub(r"--[^\n]*", "", sql)
    # ALTER TABLE ... ADD COLUMN splices ", column" into the stored CREATE TABLE text just before its
    # closing parenthesis, on the last column's line: blanks around punctuation do not count.
    text = re.sub(r"\s*([(),])\s*", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def sqlite_catalog(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        objects = sorted(
            (type_, name, table, _normalise_sql(sql))
            for type_, name, table, sql in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")
            if table != MIGRATIONS_TABLE
        )
        tables = sorted({table for type_, _, table, _ in objects if type_ == "table"})
        columns = {table: conn.execute(f'PRAGMA table_xinfo("{table}")').fetchall() for table in tables}
        indexes = {
            table: sorted(
                (name, unique, origin, partial, conn.execute(f'PRAGMA index_xinfo("{name}")').fetchall())
                for _, name, unique, origin, partial in conn.execute(f'PRAGMA index_list("{table}")')
            )
            for table in tables
        }
    finally:
        conn.close()
    return {"objects": objects, "columns": columns, "indexes": indexes}


def test_sqlite_declared_schema_matches_migrations(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    SqliteJobStore(f"sqlite:///{migrated}").close()
    fresh = tmp_path / "declared.db"
    conn = sqlite3.connect(fresh)
    try:
        conn.executescript(declared("sqlite"))
    finally:
        conn.close()
    want, got = sqlite_catalog(migrated), sqlite_catalog(fresh)
    assert got["objects"] == want["objects"]
    assert got["columns"] == want["columns"]
    assert got["indexes"] == want["indexes"]
    assert any(name == "jobmill_jobs" for _, name, _, _ in want["objects"])


# -- PostgreSQL ---------------------------------------------------------------------------------------

COLUMNS_SQL = """
SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default, is_identity,
       identity_generation, identity_start, identity_increment, identity_cycle, is_generated,
       generation_expression, character_maximum_length, numeric_precision, collation_name
FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name <> %(skip)s
ORDER BY table_name, ordinal_position
"""
TABLES_SQL = """
SELECT table_name, table_type FROM information_schema.tables
WHERE table_schema = current_schema() AND table_name <> %(skip)s ORDER BY table_name
"""
INDEXES_SQL = """
SELECT tablename, indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename <> %(skip)s ORDER BY tablename, indexname
"""
CONSTRAINTS_SQL = """
SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid), c.condeferrable
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = current_schema() AND c.conrelid <> 0 AND c.conrelid::regclass::text <> %(skip)s
ORDER BY 1, 2
"""
SEQUENCES_SQL = """
SELECT sequencename, data_type::text, start_value, increment_by, cycle FROM pg_sequences
WHERE schemaname = current_schema() AND sequencename NOT LIKE %(skip_like)s ORDER BY 1
"""

POLICIES_SQL = """
SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies
WHERE schemaname = current_schema() ORDER BY 1, 2
"""
ROW_SECURITY_SQL = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname <> %(skip)s ORDER BY 1
"""
GRANTS_SQL = """
SELECT table_name, privilege_type FROM information_schema.role_table_grants
WHERE table_schema = current_schema() AND grantee = 'jobmill_tenant' ORDER BY 1, 2
"""

TRIGGERS_SQL = """
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND NOT t.tgisinternal
ORDER BY 1, 2
"""
FUNCTIONS_SQL = """
SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() ORDER BY 1
"""


def pg_catalog(url: str) -> dict[str, Any]:
    args = {"skip": MIGRATIONS_TABLE, "skip_like": MIGRATIONS_TABLE + "%"}
    with psycopg.connect(url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        qualified = re.compile(rf"\b{re.escape(schema[0])}\.")
        columns: dict[str, list[tuple[Any, ...]]] = {}
        # Compared in order but without ordinal_position: a dropped column leaves a gap in the numbers.
        for row in conn.execute(COLUMNS_SQL, args):
            columns.setdefault(row[0], []).append(row[1:])
        return {
            "tables": conn.execute(TABLES_SQL, args).fetchall(),
            "columns": columns,
            "indexes": [
                (table, name, qualified.sub("", definition))
                for table, name, definition in conn.execute(INDEXES_SQL, args)
            ],
            "constraints": conn.execute(CONSTRAINTS_SQL, args).fetchall(),
            "sequences": conn.execute(SEQUENCES_SQL, args).fetchall(),
            "policies": conn.execute(POLICIES_SQL, args).fetchall(),
            "row_security": conn.execute(ROW_SECURITY_SQL, args).fetchall(),
            "tenant_grants": conn.execute(GRANTS_SQL, args).fetchall(),
            "triggers": [
                (table, name, qualified.sub("", definition))
                for table, name, definition in conn.execute(TRIGGERS_SQL, args)
            ],
            "functions": [(name, qualified.sub("", d)) for name, d in conn.execute(FUNCTIONS_SQL, args)],
        }


@pytest.fixture
def two_databases() -> Iterator[tuple[ScratchDatabase, ScratchDatabase]]:
    require_server()
    migrated, fresh = ScratchDatabase(), ScratchDatabase()
    migrated.create()
    try:
        fresh.create()
        try:
            yield migrated, fresh
        finally:
            fresh.drop()
    finally:
        migrated.drop()


def test_postgres_declared_schema_matches_migrations(
    two_databases: tuple[ScratchDatabase, ScratchDatabase],
) -> None:
    from jobmill.store.postgres import PostgresJobStore

    migrated, fresh = two_databases
    store = PostgresJobStore(migrated.url)
    try:
        assert store.migrate() == [m.name for m in load_migrations("postgres")]
    finally:
        store.close()
    with psycopg.connect(fresh.url, autocommit=True) as conn:
        conn.execute(declared("postgres").encode())  # no parameters: a whole script
    want, got = pg_catalog(migrated.url), pg_catalog(fresh.url)
    assert got["tables"] == want["tables"]
    assert got["columns"] == want["columns"]
    assert got["indexes"] == want["indexes"]
    assert got["constraints"] == want["constraints"]
    assert got["sequences"] == want["sequences"]
    # Row-level security, and the triggers and functions that keep the queue-position counts.
    for part in ("policies", "row_security", "tenant_grants", "triggers", "functions"):
        assert got[part] == want[part], part
    assert ("jobmill_jobs", "BASE TABLE") in want["tables"]
    assert any(name == "jobmill_jobs_claim" for _, name, _ in want["indexes"])
