"""Entry script of the db_to_raw template: the logic is in lakehouse_jobs.templates.db_to_raw.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import db_to_raw

db_to_raw.main(sys.argv[1:])
