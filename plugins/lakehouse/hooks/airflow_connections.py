"""A task's ``secret_id`` resolved through Airflow's connections (any secrets backend Airflow has).

Apart from :mod:`lakehouse.secrets` because it imports Airflow: the invoker, which ships as a
Lambda without Airflow, uses that module's pure checks.
"""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_connection_secret"]


def resolve_connection_secret(secret_id: str) -> dict[str, Any]:
    """The Airflow connection ``secret_id`` in the RDS/Redshift secret shape the jobs read.

    Raises Airflow's ``AirflowNotFoundException`` naming the id when no backend knows it.
    """
    from airflow.sdk import Connection
    from airflow.sdk.log import mask_secret

    conn = Connection.get(secret_id)
    engine = "redshift" if conn.conn_type == "redshift" else "postgres"
    secret: dict[str, Any] = {
        "engine": engine,
        "host": conn.host or "",
        "port": conn.port or (5439 if engine == "redshift" else 5432),
        "dbname": conn.schema or "",
        "username": conn.login or "",
        "password": conn.password or "",
    }
    if secret["password"]:
        mask_secret(secret["password"])
    return secret
