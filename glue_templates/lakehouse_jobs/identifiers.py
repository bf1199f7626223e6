"""Names that end up in paths and SQL: validated first, then quoted, never pasted raw.

Table, schema and column names come from metadata rows that users write, and batch ids come from
file names and timestamps. Validating them against a plain lower-case pattern keeps SQL injection
and surprising case-folding out (Iceberg, Spark and Postgres fold or keep case differently); quoting
the validated name is a second, independent guard.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = [
    "IDENTIFIER",
    "TableName",
    "parse_table_name",
    "quote_postgres",
    "quote_spark",
    "sanitize_batch_id",
    "validate_identifier",
]

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_POSTGRES_MAX_IDENTIFIER = 63
_UNSAFE_IN_PATH = re.compile(r"[^A-Za-z0-9_.-]+")


def validate_identifier(name: object, what: str) -> str:
    """Return ``name`` if it matches ``^[a-z][a-z0-9_]*$``, else raise naming ``what`` it is."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError(
            f"{what} {name!r} is not a valid identifier: use lower-case letters, digits and _, starting with a letter"
        )
    if len(name) > _POSTGRES_MAX_IDENTIFIER:
        raise ValueError(f"{what} {name!r} is longer than {_POSTGRES_MAX_IDENTIFIER} characters")
    return name


@dataclass(frozen=True)
class TableName:
    """A validated two-part name: ``namespace.table`` (Iceberg) or ``schema.table`` (Postgres)."""

    namespace: str
    table: str

    def __str__(self) -> str:
        return f"{self.namespace}.{self.table}"

    @property
    def spark(self) -> str:
        """Quoted for Spark SQL; resolves in the session's default catalog."""
        return f"{quote_spark(self.namespace)}.{quote_spark(self.table)}"

    @property
    def postgres(self) -> str:
        return f"{quote_postgres(self.namespace)}.{quote_postgres(self.table)}"


def parse_table_name(text: str, what: str) -> TableName:
    """``namespace.table`` with both parts validated; ``what`` names the argument in errors."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 2:
        raise ValueError(f"{what} {text!r} must be namespace.table (two parts separated by one dot)")
    return TableName(validate_identifier(parts[0], f"{what} namespace"), validate_identifier(parts[1], f"{what} table"))


def quote_spark(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def quote_postgres(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def sanitize_batch_id(batch_id: str) -> str:
    """A batch id safe as a path segment and unique per batch id.

    Batch ids like ``scheduled__2026-11-23T00:00:00+00:00`` contain ``:`` and ``+``, which Hadoop
    paths reject or mangle. Unsafe runs become ``_``; when anything was replaced, a short hash of
    the original is appended so two ids differing only in punctuation still get different folders.
    The result is deterministic: a re-run of a batch writes to the same folder.
    """
    if not batch_id:
        raise ValueError("batch_id must not be empty")
    cleaned = _UNSAFE_IN_PATH.sub("_", batch_id).strip("._") or "batch"
    if cleaned == batch_id and len(cleaned) <= 120:
        return cleaned
    digest = hashlib.sha1(batch_id.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned[:120]}-{digest}"
