-- V011: field-level encryption (greenlang-crypto).
-- Idempotent: every statement is IF NOT EXISTS / guarded, so it can run again safely.
-- Applied by `greenlang-crypto db migrate`, which records it in
-- encryption.glc_schema_migrations. Like every V*.sql file it creates and alters objects of
-- the `encryption` schema only (plus the pgcrypto extension); the application's own tables
-- are left to the application (example_columns.sql shows the encrypted columns they need).
-- The `-- group:` lines mark which part of the package creates the tables that follow at run
-- time (greenlang_crypto.sql.statements): these files are the only DDL of the project.

CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE SCHEMA IF NOT EXISTS encryption;

-- group: keystore
-- Key store (greenlang_crypto/keys/store.py; wrapped keys only).
CREATE SCHEMA IF NOT EXISTS encryption;
CREATE TABLE IF NOT EXISTS encryption.glc_key_versions (
    version INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    provider TEXT NOT NULL,
    wrapping_key_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    rotated_at DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS encryption.glc_keyring (
    id INTEGER PRIMARY KEY,
    min_decryption_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS encryption.glc_deks (
    dek_id BIGINT PRIMARY KEY,
    key_version INTEGER NOT NULL,
    provider TEXT NOT NULL,
    wrapping_key_id TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    context_json TEXT NOT NULL,
    context_digest BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    rewrapped_at DOUBLE PRECISION,
    messages BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS glc_deks_version ON encryption.glc_deks (key_version);
CREATE TABLE IF NOT EXISTS encryption.glc_index_keys (
    version INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    provider TEXT NOT NULL,
    wrapping_key_id TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- group: audit
-- Audit log: append-only records chained by HMAC (no plaintext, no key bytes). The same
-- schema as greenlang_crypto.audit.PostgresAuditSink, which finds it through its search_path
-- (encryption, public).
CREATE TABLE IF NOT EXISTS encryption.glc_audit (
    seq BIGINT PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    key_id TEXT,
    key_version INTEGER,
    context_digest TEXT,
    data_class TEXT,
    request_id TEXT,
    reason TEXT,
    details TEXT NOT NULL,
    hmac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS glc_audit_time ON encryption.glc_audit (time);
CREATE TABLE IF NOT EXISTS encryption.glc_audit_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- group: jobs
-- Column jobs (greenlang_crypto/sqlalchemy/migrate.py).
CREATE TABLE IF NOT EXISTS encryption.glc_job_ranges (
    job TEXT NOT NULL,
    range_id INTEGER NOT NULL,
    lo TEXT,
    hi TEXT,
    last_pk TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    owner TEXT,
    lease_until TIMESTAMPTZ,
    processed BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job, range_id)
);
CREATE TABLE IF NOT EXISTS encryption.glc_quarantine (
    job TEXT NOT NULL,
    table_name TEXT NOT NULL,
    column_name TEXT NOT NULL,
    pk TEXT NOT NULL,
    reason TEXT NOT NULL,
    key_version INTEGER,
    detected_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job, pk)
);
