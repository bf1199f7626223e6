"""Glue-style ``--name value`` arguments, parsed against a declared spec.

Glue passes every job argument as a string and adds reserved ones of its own (``--JOB_NAME``,
``--JOB_RUN_ID``, ``--TempDir``, ``--enable-*`` ...). ``getResolvedOptions`` from ``awsglue`` is
not available under a plain ``spark-submit``, so templates parse their arguments here: the same
code runs on a laptop and on Glue. Unknown arguments are ignored rather than refused because the
set Glue adds changes between Glue versions; the declared ones are typed and validated so a bad
value fails before Spark does any work, with the argument's name in the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["COMMON_ARGS", "ArgSpec", "JobArgumentError", "parse_job_args"]

ArgType = Literal["str", "int", "float", "bool", "json", "list"]

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class JobArgumentError(ValueError):
    """An argument is missing or malformed; the message names it."""


@dataclass(frozen=True)
class ArgSpec:
    """One declared argument: mirrors a row of the template's ``parameter_spec`` in metadata."""

    name: str
    type: ArgType = "str"
    required: bool = False
    default: Any = None
    description: str = ""


COMMON_ARGS: tuple[ArgSpec, ...] = (
    ArgSpec("flow_id", description="the flow this job runs for (logging, lineage)"),
    ArgSpec("task_id", description="the flow task this job runs for"),
    ArgSpec("run_id", description="the orchestrator's run id"),
    ArgSpec("batch_id", required=True, description="the batch being processed; names output folders"),
    ArgSpec("batch_time", description="ISO-8601 time of the batch, the same on every re-run (default: now)"),
    ArgSpec("lake_uri", required=True, description="root of raw/, rejects/ (file:// or s3://)"),
    ArgSpec("metrics_uri", description="where the job writes its metrics JSON (path, file:// or s3://)"),
)


def _convert(spec: ArgSpec, text: str) -> Any:
    """One string from the command line to the declared type; raises naming the argument."""
    where = f"argument --{spec.name}"
    if spec.type == "str":
        return text
    if spec.type == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise JobArgumentError(f"{where} must be an integer, got {text!r}") from None
    if spec.type == "float":
        try:
            return float(text.strip())
        except ValueError:
            raise JobArgumentError(f"{where} must be a number, got {text!r}") from None
    if spec.type == "bool":
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise JobArgumentError(f"{where} must be true or false, got {text!r}")
    if spec.type == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise JobArgumentError(f"{where} is not valid JSON ({exc.msg} at position {exc.pos}): {text!r}") from None
    if spec.type == "list":
        # The orchestrator joins lists with commas; a JSON array is accepted too, for hand-run jobs.
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise JobArgumentError(f"{where} is not a valid JSON list: {exc.msg}") from None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise JobArgumentError(f"{where} must be a list of strings, got {text!r}")
            items = [v.strip() for v in value]
        else:
            items = [v.strip() for v in stripped.split(",")]
        items = [v for v in items if v]
        if not items:
            raise JobArgumentError(f"{where} must name at least one item, got {text!r}")
        return items
    raise JobArgumentError(f"{where} has an unknown declared type {spec.type!r}")


def parse_job_args(argv: Sequence[str], spec: Sequence[ArgSpec]) -> dict[str, Any]:
    """Parse ``--name value`` pairs (also ``--name=value``) into a dict keyed by every declared name.

    A declared argument always takes the next token as its value, even one starting with ``-``
    (a regex or a negative number may). Undeclared arguments are skipped together with their value.
    A missing required argument, a duplicate or a value of the wrong type raises
    :class:`JobArgumentError`; absent optional ones get their default (``None`` when none).
    """
    declared = {s.name: s for s in spec}
    if len(declared) != len(spec):
        raise JobArgumentError("the argument spec declares a name twice")
    raw: dict[str, str] = {}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            i += 1  # a stray positional (Glue passes none of ours this way): ignore it
            continue
        name, eq, inline_value = token[2:].partition("=")
        if name in declared:
            if eq:
                value = inline_value
                i += 1
            elif i + 1 < len(tokens):
                value = tokens[i + 1]
                i += 2
            else:
                raise JobArgumentError(f"argument --{name} needs a value")
            if name in raw:
                raise JobArgumentError(f"argument --{name} was given twice")
            raw[name] = value
            continue
        # unknown/reserved (e.g. Glue's --JOB_NAME x, --enable-metrics true): skip it and its value
        has_value = not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        i += 2 if has_value else 1
    result: dict[str, Any] = {}
    for s in spec:
        if not _NAME.match(s.name):
            raise JobArgumentError(f"invalid argument name in spec: {s.name!r}")
        if s.name in raw:
            result[s.name] = _convert(s, raw[s.name])
        elif s.required:
            raise JobArgumentError(
                f"missing required argument --{s.name}" + (f" ({s.description})" if s.description else "")
            )
        else:
            result[s.name] = s.default
    return result
