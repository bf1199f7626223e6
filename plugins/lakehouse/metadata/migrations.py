"""Versioned (``V###__name.sql``, applied once, in order) and repeatable (``R__name.sql``,
re-applied when their checksum changes) migrations, Flyway-style, so the schema in every
environment is the result of the same files.

Runs under a transaction-level advisory lock: two processes migrating at once (the CLI and a
test session, say) apply each file exactly once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from lakehouse.config import load_settings
from lakehouse.flows import FlowProblem

__all__ = ["Migration", "TemplateChangeBreaksFlowsError", "discover", "migrate"]

_VERSIONED = re.compile(r"^V(\d+)__([a-z0-9_]+)\.sql$")
_REPEATABLE = re.compile(r"^R__([a-z0-9_]+)\.sql$")
_LOCK_ID = 7_305_001  # arbitrary, constant: identifies this migrator's advisory lock


@dataclass(frozen=True)
class Migration:
    key: str  # "V001" or "R__template_catalogue"
    path: Path
    repeatable: bool

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """Versioned files by number, then repeatable ones by name; anything else is an error."""
    versioned: list[tuple[int, Migration]] = []
    repeatable: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        if m := _VERSIONED.match(path.name):
            versioned.append((int(m.group(1)), Migration(f"V{int(m.group(1)):03d}", path, False)))
        elif m := _REPEATABLE.match(path.name):
            repeatable.append(Migration(f"R__{m.group(1)}", path, True))
        else:
            raise ValueError(f"{path}: not a migration name (V001__name.sql or R__name.sql)")
    numbers = [n for n, _ in versioned]
    if len(numbers) != len(set(numbers)):
        raise ValueError(f"{directory}: two versioned migrations share a number")
    return [m for _, m in sorted(versioned, key=lambda item: item[0])] + repeatable


def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply what is pending; returns the keys applied (empty when the schema is current)."""
    directory = directory or load_settings().root / "metadata" / "migrations"
    applied: list[str] = []
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute("CREATE SCHEMA IF NOT EXISTS lakehouse")
            cur.execute(
                """CREATE TABLE IF NOT EXISTS lakehouse.schema_migrations (
                       migration_key text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            cur.execute("SELECT migration_key, checksum FROM lakehouse.schema_migrations")
            done = dict(cur.fetchall())
            found = _flow_problems(cur)
            before = None if found is None else {str(p) for p in found}
            for migration in discover(directory):
                checksum = migration.checksum
                if migration.key in done:
                    if done[migration.key] == checksum:
                        continue
                    if not migration.repeatable:
                        raise RuntimeError(f"{migration.path.name} changed after it was applied")
                cur.execute(migration.path.read_text())
                cur.execute(
                    """INSERT INTO lakehouse.schema_migrations (migration_key, checksum) VALUES (%s, %s)
                       ON CONFLICT (migration_key) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
                    (migration.key, checksum),
                )
                applied.append(migration.key)
            if applied and before is not None:
                broken = [p for p in _flow_problems(cur) or () if str(p) not in before]
                if broken:  # raising rolls the whole migration back: the templates stay as they were
                    raise TemplateChangeBreaksFlowsError(broken)
    finally:
        conn.close()
    return applied


class TemplateChangeBreaksFlowsError(RuntimeError):
    """A template change (usually ``R__template_catalogue.sql``) would make stored flows invalid.

    Applying it would make their DAGs vanish at the next parse; instead nothing is applied and
    every flow and field it would break is named, so the flows can be fixed (or pinned) first.
    """

    def __init__(self, problems: Sequence[FlowProblem]) -> None:
        flows = sorted({p.flow_id for p in problems})
        super().__init__(
            f"migration not applied: it would break {len(flows)} flow(s) ({', '.join(flows)}): "
            + "; ".join(str(p) for p in problems)
        )
        self.problems = list(problems)


def _flow_problems(cur: Any) -> list[FlowProblem] | None:
    """Problems of every stored flow, or None before the flow tables exist (a fresh database)."""
    cur.execute(
        "SELECT to_regclass('lakehouse.flow_tasks') IS NOT NULL AND to_regclass('lakehouse.templates') IS NOT NULL"
    )
    if not cur.fetchone()[0]:
        return None
    from lakehouse.metadata.flow_documents import stored_flow_problems

    return stored_flow_problems(cur)
