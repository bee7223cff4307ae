-- Run once by the postgres image on an empty data volume
-- (/docker-entrypoint-initdb.d), as POSTGRES_USER: one database per service
-- that keeps state in PostgreSQL, as in production (k8s: agentmesh-databases).
-- Each service creates its own tables at start (its migrations).
CREATE DATABASE orchestrator;
CREATE DATABASE audit;
CREATE DATABASE alerting;
