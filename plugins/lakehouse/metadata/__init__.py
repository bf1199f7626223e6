"""Access to the metadata database: migrations, the flow catalogue, the ledger and the audit."""
