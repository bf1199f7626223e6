"""Entry script of the maintain_table template: the logic is in lakehouse_jobs.templates.maintain_table.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import maintain_table

maintain_table.main(sys.argv[1:])
