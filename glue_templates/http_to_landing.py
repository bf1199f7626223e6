"""Entry script of the http_to_landing template: the logic is in lakehouse_jobs.templates.http_to_landing.

Runs unchanged under spark-submit (locally) and as an AWS Glue 5 job script, which is why it has no
__main__ guard: Glue does not promise to run it as __main__.
"""

import sys

from lakehouse_jobs.templates import http_to_landing

http_to_landing.main(sys.argv[1:])
