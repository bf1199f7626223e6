"""Airflow DAG file: every active lakehouse flow (a row in lakehouse.flows) becomes a DAG here."""

from lakehouse.dag_factory import build_dags

globals().update(build_dags())
