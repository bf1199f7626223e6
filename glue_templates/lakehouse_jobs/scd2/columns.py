"""Names of the columns the SCD2 steps pass to each other, and of the table's system columns.

Each step of the plan adds columns the next one reads; naming them here, once, makes those hand-overs
visible (``grep`` a constant to see who writes and who reads it) instead of string literals that
must agree across modules. Working columns start with ``__``: data columns are validated lower-case
identifiers starting with a letter, so the two can never collide.
"""

from __future__ import annotations

from pyspark.sql.types import BooleanType, StringType, StructField, TimestampType

# -- the table's own columns, after the data columns (docs/scd2.md, "What comes out") ----------------
VALID_FROM, VALID_TO, IS_CURRENT, IS_DELETED = "_valid_from", "_valid_to", "_is_current", "_is_deleted"
ROW_HASH, BATCH_ID, SOURCE_FILE, LOADED_AT = "_row_hash", "_batch_id", "_source_file", "_loaded_at"
SYSTEM_COLUMNS: tuple[StructField, ...] = (
    StructField(VALID_FROM, TimestampType()),
    StructField(VALID_TO, TimestampType()),
    StructField(IS_CURRENT, BooleanType()),
    StructField(IS_DELETED, BooleanType()),
    StructField(ROW_HASH, StringType()),
    StructField(BATCH_ID, StringType()),
    StructField(SOURCE_FILE, StringType()),
    StructField(LOADED_AT, TimestampType()),
)
SYSTEM_NAMES: tuple[str, ...] = tuple(f.name for f in SYSTEM_COLUMNS)

# -- lineage columns a raw batch may carry (landing_to_raw writes them) -----------------------------
LINE_NUMBER, INGESTED_AT = "_line_number", "_ingested_at"

# -- Iceberg's metadata columns of a table row: the data file it is in and its row number there -----
ICEBERG_FILE, ICEBERG_POS = "_file", "_pos"

# -- events: the batch's records, and stored rows turned back into events ---------------------------
SEQ = "__seq"  # the sequence value as a timestamp: becomes _valid_from
LINE = "__line"  # the record's line number: at one sequence value the file's latest line counts
HASH = "__hash"  # the event's content: row hash (hex), or DELETED for a delete
DELETE = "__delete"  # the record is a delete
OP_VALUE = "__op_value"  # the op column's value as a string (for the error message)
OP = "__op"  # the op column's value mapped to I, U or D (NULL: unmapped)
PROBLEM = "__problem"  # cdc mode: NULL key, bad sequence value or unmapped op; never taken as unchanged
DIGEST = "__digest"  # the row hash as 32 bytes, when hashes are compared instead of values

# -- a stored row's position (see reads.TableRead), as the row delta finds it again --------------
FILE_ID = "__file_id"  # 64-bit hash of the data file's location
POS = "__pos"  # row number in that file
FILE = "__file"  # the data file's location

# -- a record joined with its key's open version (plan.affected) -----------------------------------
CUR_FROM = "__cur_from"  # the open version's _valid_from (NULL: the key has no open version)
CUR_DELETED = "__cur_deleted"
CUR_DIGEST = "__cur_digest"
CUR_FILE_ID, CUR_POS = "__cur_file_id", "__cur_pos"
SAME = "__same"  # the record's content equals the open version's
CHANGES = "__changes"  # 1 when any record of the key changes something
RECORDS = "__n"  # records of the key in the batch
PRESENT = "__present"  # snapshot mode: the key is in the batch
SIMPLE = "__simple"  # applied without its key's history (see plan.direct)
MAYBE_NEW = "__maybe_new"  # one record, and the key has no open version
NEW = "__new"  # the key has no row at all
KNOWN = "__known"  # the table has rows of the key

# -- stored rows in the history rebuild (history.rebuild / history.diff) ---------------------------
PRIO = "__prio"  # 0: from the table (wins at an equal sequence value), 1: from the batch
OLD_FROM, OLD_TO, OLD_CURRENT = "__old_from", "__old_to", "__old_current"
OLD_FILE_ID, OLD_POS = "__old_file_id", "__old_pos"
NEXT_FROM = "__next_from"
PREV_SEQ, PREV_HASH, PREV_PRIO = "__prev_seq", "__prev_hash", "__prev_prio"
DUP = "__dup"  # a later event at the same sequence value: it does not count
CONFLICT = "__conflict"  # ... and it has other content
WITH_TABLE = "__with_table"  # the conflict is with a stored version
STARTS = "__starts"  # the event starts a run of equal events
RUN = "__run"  # the run's number within its key
FIRST, LAST, FIRST_UNTRACKED, PAD = "__first", "__last", "__first_untracked", "__pad"

# -- the difference: rows to insert, update or delete (the commit's input) --------------------------
ACTION = "__action"  # insert / update / delete, or conflict / conflict_table (refused batch)
CLOSED = "__closed"  # the update closes an open version
MK_VALID_FROM = "__mk_valid_from"  # the stored row's _valid_from, to find it by key (MERGE)

# -- the stored rows a row delta changes (row_delta.read_changed_rows) -----------------------------
CHANGE = "__change"  # update or delete


def current(column: str) -> str:
    """The open version's value of a data column, beside the record's own (plan.affected)."""
    return f"__cur_{column}"


def merge_key(key: str) -> str:
    """A copy of a key column that is NULL on insert rows, so a MERGE never matches them."""
    return f"__mk_{key}"


def new_value(column: str) -> str:
    """What a row delta sets a changed stored row's column to (row_delta.read_changed_rows)."""
    return f"__new_{column}"
