-- One PostgreSQL instance, one database per service: MLflow's tracking store and
-- Prefect's orchestration database never share tables.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
