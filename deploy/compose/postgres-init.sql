-- Run by the postgres image on its first start (an empty data directory): the MLflow server's database, beside the
-- backend's own (POSTGRES_DB=platform).
CREATE DATABASE mlflow;
