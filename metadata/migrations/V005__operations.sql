-- Operating it: files held for an invalid flow, one-line failure reasons, and the lookups of
-- `lakehouse trace`.

-- 'flow_invalid': the file matched a flow whose rows are invalid (its DAG is a placeholder). The
-- row waits with the reason in last_error and becomes 'pending' once the fixed DAG is loaded.
ALTER TABLE lakehouse.file_ledger DROP CONSTRAINT file_ledger_status_check;
ALTER TABLE lakehouse.file_ledger ADD CONSTRAINT file_ledger_status_check
    CHECK (status IN ('pending', 'triggered', 'unmatched', 'failed', 'skipped', 'flow_invalid'));
CREATE INDEX file_ledger_flow_invalid ON lakehouse.file_ledger (flow_id) WHERE status = 'flow_invalid';
CREATE INDEX file_ledger_dag_run ON lakehouse.file_ledger (dag_run_id);

-- The job's own reason for a failed try, on one line (the file, row or field it names); `error`
-- keeps the whole text with the end of the job's output.
ALTER TABLE lakehouse.task_runs ADD COLUMN error_summary text;
CREATE INDEX task_runs_dag_run ON lakehouse.task_runs (dag_run_id);
ALTER TABLE lakehouse.notifications ADD COLUMN error_summary text;
