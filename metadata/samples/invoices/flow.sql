-- The sample flow: invoice text files dropped into s3://landing/invoices/ become a daily expense
-- table in the warehouse, with the full invoice history kept as SCD2 in stage.invoices.
-- Re-running this file replaces the flow's rows (it is how `lakehouse demo` installs it).
BEGIN;

INSERT INTO lakehouse.flows (flow_id, dag_id, description, trigger_bucket, trigger_key_pattern,
                             trigger_pattern_syntax, owner, alert_target, tags)
VALUES ('invoices', 'invoices', 'Customer invoice files -> daily expenses in the warehouse',
        'landing', 'invoices/*.txt', 'glob', 'finance-data', NULL, '{sample,invoices}')
ON CONFLICT (flow_id) DO UPDATE SET
    dag_id = EXCLUDED.dag_id, description = EXCLUDED.description, trigger_bucket = EXCLUDED.trigger_bucket,
    trigger_key_pattern = EXCLUDED.trigger_key_pattern, trigger_pattern_syntax = EXCLUDED.trigger_pattern_syntax,
    owner = EXCLUDED.owner, tags = EXCLUDED.tags, is_active = true, updated_at = now();

DELETE FROM lakehouse.flow_tasks WHERE flow_id = 'invoices';

INSERT INTO lakehouse.flow_tasks (flow_id, task_id, task_order, template_id, parameters) VALUES
('invoices', 'landing_to_raw', 1, 'landing_to_raw', $json${
    "dataset": "invoices",
    "format": "regex",
    "regex": "^(?<invoice_date>\\d{4}-\\d{2}-\\d{2}) INVOICE (?<invoice_id>INV-\\d+) customer=\"(?<customer>[^\"]*)\" item=\"(?<item>[^\"]*)\" qty=(?<quantity>\\d+) amount=(?<amount>-?\\d+\\.\\d{2}) (?<currency>[A-Z]{3})$",
    "schema": {"invoice_date": "date", "invoice_id": "string", "customer": "string", "item": "string",
               "quantity": "int", "amount": "decimal(12,2)", "currency": "string"},
    "max_reject_ratio": 0.2
}$json$),
('invoices', 'raw_to_stage_scd2', 2, 'raw_to_stage_scd2', $json${
    "dataset": "invoices",
    "target_table": "stage.invoices",
    "keys": ["invoice_id"]
}$json$),
('invoices', 'stage_to_presentation', 3, 'stage_to_presentation', $json${
    "sql": "SELECT invoice_date, count(*) AS invoice_count, sum(amount) AS total_amount FROM stage.invoices WHERE _is_current AND NOT _is_deleted GROUP BY invoice_date",
    "target_table": "presentation.daily_expenses"
}$json$),
('invoices', 'presentation_to_warehouse', 4, 'presentation_to_warehouse', $json${
    "source_table": "presentation.daily_expenses",
    "target_table": "presentation.daily_expenses"
}$json$);

COMMIT;
