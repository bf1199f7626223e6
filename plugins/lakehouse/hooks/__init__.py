"""Hooks: small clients of outside systems (Airflow's REST API, S3, AWS services)."""
