-- Flows at scale, part 1: per-task Airflow pools, and audit outcomes that say how a try ended.

-- An Airflow pool name limits how many tasks of this kind run at once across all flows
-- (e.g. a pool of 2 for loads into one warehouse). NULL: Airflow's default_pool.
ALTER TABLE lakehouse.flow_tasks ADD COLUMN pool text CHECK (pool ~ '^[A-Za-z0-9_.-]+$' AND length(pool) <= 256);

-- 'timeout': the task's timeout_seconds elapsed; 'killed': the try ended without the task itself
-- finishing its row (worker killed, heartbeat lost, SIGKILL); Airflow's failure callback, which
-- the scheduler runs for such tries too, closes the row.
ALTER TABLE lakehouse.task_runs DROP CONSTRAINT task_runs_status_check;
ALTER TABLE lakehouse.task_runs ADD CONSTRAINT task_runs_status_check
    CHECK (status IN ('running', 'success', 'failed', 'timeout', 'killed'));
