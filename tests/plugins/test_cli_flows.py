"""`lakehouse flow apply / export / validate` and `lakehouse runs` from the command line."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from lakehouse.cli import main
from lakehouse.config import Settings

GOOD = """
flow_id: cli_orders
trigger: {bucket: landing, key_pattern: "cli/*.csv"}
tasks:
  - task_id: build
    template: stage_to_presentation
    parameters: {sql: "select 1 as x", target_table: presentation.cli_x}
"""


@pytest.fixture
def cli_db(pg: Settings, monkeypatch: pytest.MonkeyPatch):
    yield pg
    with psycopg2.connect(pg.metadata_dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM lakehouse.flows WHERE flow_id LIKE 'cli\\_%'")
        cur.execute("DELETE FROM lakehouse.task_runs WHERE flow_id LIKE 'cli\\_%'")
    conn.close()


def test_apply_export_validate_round_trip(cli_db: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "orders.yaml"
    source.write_text(GOOD)
    assert main(["flow", "apply", str(source)]) == 0
    assert "flow 'cli_orders' applied (1 task(s))" in capsys.readouterr().out
    assert main(["flow", "export", "cli_orders"]) == 0
    exported = capsys.readouterr().out
    assert "key_pattern: cli/*.csv" in exported and "target_table: presentation.cli_x" in exported
    (tmp_path / "again.yaml").write_text(exported)
    assert main(["flow", "apply", str(tmp_path / "again.yaml")]) == 0
    assert main(["flow", "validate", "cli_orders"]) == 0
    assert "every flow is valid" in capsys.readouterr().out


def test_apply_prints_every_problem_and_fails(
    cli_db: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("target_table: presentation.cli_x", "password: hunter22"))
    assert main(["flow", "apply", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: not applied, 3 problem(s):" in err
    assert "flow_tasks[build].parameters.password: looks like a credential" in err
    assert "flow_tasks[build].parameters.password: template 'stage_to_presentation' has no parameter" in err
    assert "flow_tasks[build].parameters.target_table: required by template" in err
    (tmp_path / "broken.yaml").write_text("flow_id: [unclosed")
    assert main(["flow", "apply", str(tmp_path / "broken.yaml")]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["flow", "export", "cli_nowhere"]) == 1
    assert "no flow 'cli_nowhere'" in capsys.readouterr().err


def test_runs_failed_lists_timeouts_and_kills(cli_db: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg2.connect(cli_db.metadata_dsn) as conn, conn.cursor() as cur:
        for n, status in enumerate(("success", "timeout", "killed"), start=1):
            cur.execute(
                "INSERT INTO lakehouse.task_runs (flow_id, task_id, template_id, dag_id, dag_run_id, "
                "try_number, status) VALUES ('cli_runs', 't', 'x', 'cli_runs', 'r', %s, %s)",
                (n, status),
            )
    conn.close()
    assert main(["runs", "--flow", "cli_runs", "--failed"]) == 0
    out = capsys.readouterr().out
    assert "timeout" in out and "killed" in out and "success" not in out
