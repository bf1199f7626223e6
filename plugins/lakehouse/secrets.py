"""Task secrets: a task names a secret (``secret_id``); the value never sits in a metadata row.

Locally ``secret_id`` is an Airflow connection id (``AIRFLOW_CONN_<ID>``, the UI, or any secrets
backend configured in Airflow), resolved when the task runs and handed to the job through its
environment, not its arguments. On AWS it is the name of a Secrets Manager secret that the Glue
job reads itself with its own role, so the value never passes through Airflow at all; MWAA's
Secrets Manager backend makes the same id work for Airflow connections too.

Secret values are registered with Airflow's log masker as soon as they are read, and the audit
and alert texts are redacted with :func:`redact`, so a job that echoes its login does not leak it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "SECRET_PARAMETER",
    "literal_secret_problems",
    "redact",
    "secret_values",
]

SECRET_PARAMETER = "secret_id"
#: parameter names that hold credentials: whole ``_``-separated words, so ``author`` or ``passenger`` pass
_SECRET_NAME = re.compile(
    r"(^|_)(password|passwd|pass|pwd|secret|token|api_?key|credentials?|private_?key)($|_)", re.IGNORECASE
)
_URL_WITH_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)(@)", re.IGNORECASE)
_MASK = "***"


def literal_secret_problems(parameters: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(parameter, why) for every value that looks like a credential written into the row."""
    found: list[tuple[str, str]] = []

    def walk(path: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(f"{path}.{key}", inner)
            return
        if isinstance(value, list):
            for index, inner in enumerate(value):
                walk(f"{path}[{index}]", inner)
            return
        leaf = path.rsplit(".", 1)[-1]
        if leaf != SECRET_PARAMETER and _SECRET_NAME.search(leaf) and isinstance(value, str) and value:
            found.append(
                (
                    path,
                    "looks like a credential: keep it in a connection or Secrets Manager and "
                    f"pass its id as {SECRET_PARAMETER!r}",
                )
            )
        elif isinstance(value, str) and _URL_WITH_PASSWORD.search(value):
            found.append(
                (
                    path,
                    "contains a URL with a password: keep the login in a connection or Secrets "
                    f"Manager and pass its id as {SECRET_PARAMETER!r}",
                )
            )

    for name, value in parameters.items():
        walk(name, value)
    return found


def secret_values(secrets: Iterable[Mapping[str, Any]]) -> list[str]:
    """The strings worth masking: passwords and anything else a secret marks as such."""
    values: list[str] = []
    for secret in secrets:
        for key, value in secret.items():
            if isinstance(value, str) and len(value) >= 4 and (key == "password" or _SECRET_NAME.search(key)):
                values.append(value)
    return values


def redact(text: str | None, values: Iterable[str]) -> str | None:
    """``text`` with every secret value (and any URL password) replaced by ``***``."""
    if not text:
        return text
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, _MASK)
    return _URL_WITH_PASSWORD.sub(rf"\g<1>{_MASK}\g<3>", text)
