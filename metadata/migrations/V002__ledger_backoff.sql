-- Invoker, part 2: retry backoff for the outbox, forced replays, skipped rows, and the per-flow
-- opt-out from multi-match triggering.

-- When a pending row may be tried again. The live path sets it a lease ahead while it calls
-- Airflow (so the retry loop leaves the row alone); a failed attempt sets it to an exponential
-- backoff; the retry loop claims rows whose time has come.
ALTER TABLE lakehouse.file_ledger ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();

-- '' for the one ordinary run of a file version; a distinct suffix per `lakehouse replay --force`,
-- so a forced re-run is a second row (and a second run id) instead of overwriting the history.
ALTER TABLE lakehouse.file_ledger ADD COLUMN run_suffix text NOT NULL DEFAULT '';
DROP INDEX lakehouse.file_ledger_one_row_per_version_and_flow;
CREATE UNIQUE INDEX file_ledger_one_row_per_version_flow_and_run
    ON lakehouse.file_ledger (bucket, object_key, etag, coalesce(flow_id, ''), run_suffix);

-- 'skipped': the key matched this flow, but the flow opted out of multi-match and another flow
-- matched too (see flows.trigger_multi_match).
ALTER TABLE lakehouse.file_ledger DROP CONSTRAINT file_ledger_status_check;
ALTER TABLE lakehouse.file_ledger ADD CONSTRAINT file_ledger_status_check
    CHECK (status IN ('pending', 'triggered', 'unmatched', 'failed', 'skipped'));

DROP INDEX lakehouse.file_ledger_pending;
CREATE INDEX file_ledger_pending_due ON lakehouse.file_ledger (next_attempt_at) WHERE status = 'pending';

-- true (default): a key matching several flows starts every one of them.
-- false: this flow starts only when it is the ONLY active flow matching the key; when others match
-- too it is recorded as 'skipped' in the ledger (e.g. a catch-all archive flow that should not
-- also fire for files a specific flow handles).
ALTER TABLE lakehouse.flows ADD COLUMN trigger_multi_match boolean NOT NULL DEFAULT true;
