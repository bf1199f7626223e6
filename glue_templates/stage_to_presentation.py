"""Entry script of the stage_to_presentation template: the logic is in lakehouse_jobs.templates.stage_to_presentation.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import stage_to_presentation

stage_to_presentation.main(sys.argv[1:])
