"""Airflow operators: one generic operator runs any template task from metadata."""
