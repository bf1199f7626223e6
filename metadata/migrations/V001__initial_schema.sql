-- The metadata schema: templates, flows, their tasks, the file ledger and the task-run audit.
-- The database refuses what it can (keys, checks), so a bad INSERT fails at once, not at parse time.

CREATE SCHEMA IF NOT EXISTS lakehouse;

CREATE TABLE lakehouse.templates (
    template_id      text PRIMARY KEY CHECK (template_id ~ '^[a-z][a-z0-9_]{0,62}$'),
    version          integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    script_location  text NOT NULL CHECK (script_location <> ''),
    description      text NOT NULL DEFAULT '',
    -- [{"name", "type": str|int|float|bool|json|list, "required", "default", "description"}]
    parameter_spec   jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(parameter_spec) = 'array'),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE lakehouse.flows (
    flow_id                 text PRIMARY KEY CHECK (flow_id ~ '^[a-z][a-z0-9_]{0,62}$'),
    dag_id                  text UNIQUE CHECK (dag_id ~ '^[A-Za-z0-9_.-]{1,200}$'),  -- NULL: the flow_id
    description             text NOT NULL DEFAULT '',
    schedule                text,           -- cron expression or preset (@daily); NULL: not scheduled
    trigger_bucket          text,           -- S3 trigger: bucket + key pattern; NULL: no file trigger
    trigger_key_pattern     text,
    trigger_pattern_syntax  text NOT NULL DEFAULT 'glob' CHECK (trigger_pattern_syntax IN ('glob', 'regex')),
    is_active               boolean NOT NULL DEFAULT true,
    owner                   text NOT NULL DEFAULT 'lakehouse',
    alert_target            text,           -- e-mail, https:// webhook or arn:aws:sns:... topic
    tags                    text[] NOT NULL DEFAULT '{}',
    max_active_runs         integer NOT NULL DEFAULT 16 CHECK (max_active_runs >= 1),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((trigger_bucket IS NULL) = (trigger_key_pattern IS NULL))
);

CREATE TABLE lakehouse.flow_tasks (
    flow_id              text NOT NULL REFERENCES lakehouse.flows (flow_id) ON DELETE CASCADE ON UPDATE CASCADE,
    task_id              text NOT NULL CHECK (task_id ~ '^[a-z][a-z0-9_]{0,62}$'),
    task_order           integer NOT NULL DEFAULT 0,
    upstream             text[],          -- NULL: the previous task by task_order; '{}': none
    template_id          text NOT NULL REFERENCES lakehouse.templates (template_id) ON UPDATE CASCADE,
    parameters           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(parameters) = 'object'),
    retries              integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    retry_delay_seconds  integer NOT NULL DEFAULT 60 CHECK (retry_delay_seconds >= 0),
    timeout_seconds      integer CHECK (timeout_seconds > 0),
    PRIMARY KEY (flow_id, task_id)
);

-- One row per (file version, flow): what arrived, what it started, and what became of it.
CREATE TABLE lakehouse.file_ledger (
    ledger_id     bigserial PRIMARY KEY,
    bucket        text NOT NULL,
    object_key    text NOT NULL,
    etag          text NOT NULL DEFAULT '',
    size          bigint,
    event_time    timestamptz,
    flow_id       text,                  -- NULL while unmatched; no FK: history outlives flows
    dag_id        text,
    dag_run_id    text,
    status        text NOT NULL CHECK (status IN ('pending', 'triggered', 'unmatched', 'failed')),
    deliveries    integer NOT NULL DEFAULT 1,  -- how often the event arrived (duplicates counted)
    attempts      integer NOT NULL DEFAULT 0,  -- trigger calls made
    last_error    text,
    source        text NOT NULL DEFAULT '',
    received_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX file_ledger_one_row_per_version_and_flow
    ON lakehouse.file_ledger (bucket, object_key, etag, coalesce(flow_id, ''));
CREATE INDEX file_ledger_pending ON lakehouse.file_ledger (status) WHERE status = 'pending';

-- One row per task try, written whatever happens.
CREATE TABLE lakehouse.task_runs (
    task_run_id      bigserial PRIMARY KEY,
    flow_id          text NOT NULL,
    task_id          text NOT NULL,
    template_id      text NOT NULL,
    dag_id           text NOT NULL,
    dag_run_id       text NOT NULL,
    try_number       integer NOT NULL DEFAULT 1,
    batch_id         text,
    runner           text,
    external_run_id  text,
    status           text NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    rows_in          bigint,
    rows_out         bigint,
    rows_rejected    bigint,
    metrics          jsonb,
    error            text,
    UNIQUE (dag_id, dag_run_id, task_id, try_number)
);
CREATE INDEX task_runs_flow ON lakehouse.task_runs (flow_id, started_at DESC);

-- Failure notifications: the row is the local channel; webhooks / e-mail / SNS are extra.
CREATE TABLE lakehouse.notifications (
    notification_id  bigserial PRIMARY KEY,
    flow_id          text NOT NULL,
    task_id          text,
    dag_run_id       text,
    file_uri         text,
    error            text NOT NULL,
    log_url          text,
    channels         jsonb NOT NULL DEFAULT '{}',   -- channel -> "sent" | error text
    created_at       timestamptz NOT NULL DEFAULT now()
);
