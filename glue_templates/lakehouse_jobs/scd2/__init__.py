"""SCD Type 2 history in an Iceberg table: one raw batch in, one commit out.

The contract is docs/scd2.md (with the reasoning behind the design); ``tests/glue_templates/
scd2_reference.py`` is its plain-Python reference model and the property tests hold this package to
it. Where to look, in the order a batch goes through:

* ``contract``: parameters, the row hash, when values may be compared instead of hashes;
* ``events``: the raw batch as events, bad records flagged;
* ``storage``: the table's creation, layout and schema changes, the lock;
* ``reads``: how a batch reads the table (whole, or only the rows of its own keys);
* ``plan``: the common path (records that change something, changes that need no history);
* ``history``: keys whose history must be rebuilt (several records, late records, returning keys);
* ``row_delta`` / ``merge``: the two ways to commit the difference;
* ``jvm``: every call into Spark's or Iceberg's JVM internals;
* ``apply`` / ``batch``: ``apply_changes``, and the run of one batch that puts the steps in order;
* ``columns``: the names of the columns the steps hand to each other.
"""

from __future__ import annotations

from lakehouse_jobs.scd2.apply import apply_changes
from lakehouse_jobs.scd2.columns import SYSTEM_COLUMNS
from lakehouse_jobs.scd2.contract import DEFAULT_OP_MAPPING, DELETED, MODES, Scd2Error, Scd2Result, row_hash
from lakehouse_jobs.scd2.storage import TABLE_PROPERTIES

__all__ = [
    "DEFAULT_OP_MAPPING",
    "DELETED",
    "MODES",
    "SYSTEM_COLUMNS",
    "TABLE_PROPERTIES",
    "Scd2Error",
    "Scd2Result",
    "apply_changes",
    "row_hash",
]
