"""Orchestration side of the lakehouse framework: metadata, DAG factory, runners, invoker, CLI.

This package never imports pyspark; the job side lives in ``glue_templates/lakehouse_jobs``.
"""

__version__ = "0.1.0"
