-- One Postgres, four databases: metadata, Airflow, the Iceberg catalog, the warehouse.
CREATE DATABASE airflow;
CREATE DATABASE iceberg_catalog;
CREATE DATABASE warehouse;
