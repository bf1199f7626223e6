"""Identifiers and batch ids that end up in SQL and paths."""

from __future__ import annotations

import pytest

from lakehouse_jobs.identifiers import parse_table_name, quote_postgres, quote_spark, sanitize_batch_id


def test_table_names_are_validated_and_quoted() -> None:
    table = parse_table_name("stage.invoices", "--target_table")
    assert (table.namespace, table.table, str(table)) == ("stage", "invoices", "stage.invoices")
    assert (table.spark, table.postgres) == ("`stage`.`invoices`", '"stage"."invoices"')
    assert quote_spark("a`b") == "`a``b`" and quote_postgres('a"b') == '"a""b"'


@pytest.mark.parametrize("text", ["invoices", "a.b.c", "Stage.invoices", "stage.in-voices", 'x.y"; drop', ".x", "1a.b"])
def test_bad_table_names_are_refused_naming_the_argument(text: str) -> None:
    with pytest.raises(ValueError, match="--target_table"):
        parse_table_name(text, "--target_table")


def test_batch_ids_become_safe_distinct_deterministic_folders() -> None:
    assert sanitize_batch_id("s3__invoices__3f2a9c") == "s3__invoices__3f2a9c"
    scheduled = sanitize_batch_id("scheduled__2026-11-23T00:00:00+00:00")
    assert (
        scheduled.startswith("scheduled__2026-11-23T00_00_00_00_00-") and ":" not in scheduled and "+" not in scheduled
    )
    assert scheduled == sanitize_batch_id("scheduled__2026-11-23T00:00:00+00:00")
    assert sanitize_batch_id("a:b") != sanitize_batch_id("a+b") != sanitize_batch_id("a_b")
    assert "/" not in sanitize_batch_id("../../etc") and not sanitize_batch_id("../../etc").startswith(".")
    assert len(sanitize_batch_id("x" * 500)) < 140
