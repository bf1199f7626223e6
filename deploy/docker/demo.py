"""The demo against the compose stack: ``docker compose exec airflow-scheduler python deploy/docker/demo.py``.

``lakehouse demo`` first starts the local stack as processes; in compose every service already
runs in its own container, so this runs only the demo itself (sample flow rows in, the two
invoice files dropped through SeaweedFS's S3 API, the warehouse table and SCD2 history printed),
with the same code and the same output as ``make demo``.
"""

from __future__ import annotations

import sys

from lakehouse.config import load_settings
from lakehouse.demo import run_demo

if __name__ == "__main__":
    sys.exit(run_demo(load_settings()))
