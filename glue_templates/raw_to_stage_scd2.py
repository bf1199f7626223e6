"""Entry script of the raw_to_stage_scd2 template: the logic is in lakehouse_jobs.templates.raw_to_stage_scd2.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import raw_to_stage_scd2

raw_to_stage_scd2.main(sys.argv[1:])
