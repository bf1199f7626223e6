"""The job side of the lakehouse: Spark code shared by the template entry scripts.

Runs under ``spark-submit`` locally and on AWS Glue 5 (Spark 3.5, Python 3.11), shipped there as
``--extra-py-files lakehouse_jobs.zip``. It depends on pyspark, boto3 and the standard library
only, never on the orchestration package: the contract between the two is the ``--name value``
arguments (:mod:`lakehouse_jobs.args`) and the metrics JSON (:mod:`lakehouse_jobs.metrics`).
"""
