"""Entry script of the presentation_to_warehouse template.

The logic is in lakehouse_jobs.templates.presentation_to_warehouse.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import presentation_to_warehouse

presentation_to_warehouse.main(sys.argv[1:])
