"""The local stack: Postgres, SeaweedFS, the invoker and Airflow, started and stopped by process group."""
