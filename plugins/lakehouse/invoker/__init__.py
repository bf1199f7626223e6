"""The invoker: object events in, one Airflow DAG run per (flow, file version) out."""
