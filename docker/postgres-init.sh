#!/bin/sh
# Runs once, on an empty data directory, as the superuser: one database per service, each
# owned by its own login role, so neither server holds the superuser or can open the other's
# database. The passwords come from the environment docker/entrypoint.sh loaded; psql reads
# them with \getenv and quotes them itself, so they appear on no command line.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
-- Owners keep their rights; every other role loses the default CONNECT and TEMP.
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
-- Prefect's migrations create this extension; doing it here needs no trust in the role.
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
