"""Entry script of the quality_check template: the logic is in lakehouse_jobs.templates.quality_check.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import quality_check

quality_check.main(sys.argv[1:])
