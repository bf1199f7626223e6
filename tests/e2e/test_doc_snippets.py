"""Every example a user copies from the README and docs/ runs as written, in the project's venv.

Python blocks of one page run in order in one interpreter, as a user would paste them into one
session; read-only SQL on the ``lakehouse`` schema runs on the metadata database; ``lakehouse``
commands that only read run as shell commands. The only change made to them is the stack's
address: the documented ports (5433 …) become the test stack's. Run after the sample flow has
loaded the demo's tables (the first sample file is dropped again: same version, same run).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pytest

from lakehouse.config import Settings
from lakehouse.demo import drop_file_and_wait, sample_dir
from lakehouse.hooks.airflow_api import AirflowApiClient

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
#: lakehouse subcommands that only read, so an example of them can run against the test stack
READ_ONLY = ("trace", "runs", "flow validate", "validate", "info", "status", "flow export")


def blocks(page: Path, language: str) -> list[str]:
    return [textwrap.dedent(body) for _, lang, body in _BLOCK.findall(page.read_text()) if lang == language]


def localised(text: str, stack: Settings) -> str:
    """The documented default address of Postgres is the test stack's."""
    return text.replace("127.0.0.1:5433", f"{stack.pg_host}:{stack.pg_port}")


@pytest.fixture(scope="module")
def demo_tables(stack: Settings, client: AirflowApiClient) -> Settings:
    first = sorted(sample_dir(stack).glob("*.txt"))[0]
    run = drop_file_and_wait(stack, client, "invoices", first, f"invoices/{first.name}")
    assert run["state"] == "success", run
    return stack


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_examples_run_as_written(demo_tables: Settings, page: Path) -> None:
    script = "\n".join(
        f"# --- example {i + 1} of {page.name}\n{localised(b, demo_tables)}"
        for i, b in enumerate(blocks(page, "python"))
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{page.name}:\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{page.name}: the examples printed nothing"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "sql")], ids=lambda p: p.name)
def test_metadata_queries_run_as_written(demo_tables: Settings, page: Path) -> None:
    queries = [
        b
        for b in blocks(page, "sql")
        if "lakehouse." in b
        and all(s.strip().upper().startswith("SELECT") for s in re.sub(r"--[^\n]*", "", b).split(";") if s.strip())
    ]
    if not queries:
        pytest.skip(f"{page.name} has no read-only query on the lakehouse schema")
    conn = psycopg2.connect(demo_tables.metadata_dsn)
    ran = []
    try:
        with conn.cursor() as cur:
            for query in queries:
                for statement in (s for s in re.sub(r"--[^\n]*", "", query).split(";") if s.strip()):
                    cur.execute(statement)  # a statement that does not run as written raises here
                    cur.fetchall()
                    ran.append(statement)
    finally:
        conn.close()
    assert ran, f"{page.name}: no query ran"


def test_read_only_commands_run_as_written(demo_tables: Settings) -> None:
    commands = [
        line.split("#")[0].strip()
        for page in PAGES
        for block in blocks(page, "bash")
        for line in block.splitlines()
        if line.startswith(".venv/bin/lakehouse ")
        and line.split()[1:3]
        and (line.split()[1] in READ_ONLY or " ".join(line.split()[1:3]) in READ_ONLY)
    ]
    assert commands, "no read-only lakehouse command found in the docs"
    for command in commands:
        result = subprocess.run(
            command.replace(".venv/bin/lakehouse", f"{Path(sys.executable).parent}/lakehouse"),
            shell=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        allowed = (0, 1) if " validate" in command else (0,)  # validate: 1 = it found problems (e2e flows)
        assert result.returncode in allowed and "Traceback" not in result.stderr, f"{command}:\n{result.stderr}"
