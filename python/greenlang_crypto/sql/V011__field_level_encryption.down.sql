-- Reverts V011: drops the encryption schema with the key store, audit log, job tables and the
-- migration ledger: run it only on a database whose encrypted data is disposable
-- (development, tests). Application tables are not touched (the example columns have their
-- own revert, example_columns.down.sql). pgcrypto stays installed (other users).

DROP SCHEMA IF EXISTS encryption CASCADE;
