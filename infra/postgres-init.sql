-- One Postgres, two databases: MLflow's store and Prefect's.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
