-- Floods of small files: a flow may gather its pending files into one run (a micro-batch).

-- max_files_per_run = 1 (the default): one run per file version, as before. Above 1, the invoker
-- gathers the flow's pending files into batches of at most that many, one run each; with
-- batch_window_seconds > 0 it waits up to that long after a batch's first file for more.
ALTER TABLE lakehouse.flows
    ADD COLUMN max_files_per_run integer NOT NULL DEFAULT 1 CHECK (max_files_per_run BETWEEN 1 AND 100000),
    ADD COLUMN batch_window_seconds integer NOT NULL DEFAULT 0 CHECK (batch_window_seconds BETWEEN 0 AND 86400);

-- One row per micro-batch: the outbox item of its files. It is written, with its files assigned,
-- in one transaction before Airflow is called, and its dag_run_id is derived from it, so a retry
-- sends the same id (409 = already there) and a file is never in two runs.
CREATE TABLE lakehouse.file_batches (
    batch_id         bigserial PRIMARY KEY,
    flow_id          text NOT NULL,
    dag_id           text NOT NULL,
    dag_run_id       text NOT NULL UNIQUE,
    files            integer NOT NULL CHECK (files >= 1),
    manifest_uri     text,           -- the list of its files in the lake (the run's conf names it)
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'triggered', 'failed', 'flow_invalid')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX file_batches_pending_due ON lakehouse.file_batches (next_attempt_at) WHERE status = 'pending';

-- 'queued': a file of a batched flow waiting to be gathered into a batch. A gathered file keeps
-- its batch_id; its status follows the batch's ('pending' until the batch's run exists).
ALTER TABLE lakehouse.file_ledger ADD COLUMN batch_id bigint REFERENCES lakehouse.file_batches (batch_id);
ALTER TABLE lakehouse.file_ledger DROP CONSTRAINT file_ledger_status_check;
ALTER TABLE lakehouse.file_ledger ADD CONSTRAINT file_ledger_status_check
    CHECK (status IN ('pending', 'triggered', 'unmatched', 'failed', 'skipped', 'flow_invalid', 'queued'));
CREATE INDEX file_ledger_queued ON lakehouse.file_ledger (flow_id, ledger_id) WHERE status = 'queued';
CREATE INDEX file_ledger_batch ON lakehouse.file_ledger (batch_id) WHERE batch_id IS NOT NULL;
