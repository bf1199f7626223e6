"""The only task of an invalid flow's DAG: it says why the flow cannot run, and runs nothing.

An invalid flow keeps a DAG under its own name (tagged ``invalid``) instead of an import error,
because Airflow marks every DAG of a file stale when the file has one (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

__all__ = ["InvalidFlowOperator"]


class InvalidFlowOperator(BaseOperator):
    """Fails at once (no retries) with the flow's problems; a manual trigger shows them in the log."""

    ui_color = "#f4cccc"

    def __init__(self, *, flow_id: str, problems: Sequence[str], **kwargs: Any) -> None:
        super().__init__(retries=0, **kwargs)
        self.flow_id = flow_id
        self.problems = list(problems)

    def execute(self, context: Any) -> None:
        raise AirflowFailException(
            f"flow {self.flow_id!r} is invalid and runs nothing until its rows are fixed: " + "; ".join(self.problems)
        )
