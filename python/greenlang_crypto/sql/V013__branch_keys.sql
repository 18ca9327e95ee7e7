-- V013: branch keys (greenlang-crypto). Idempotent, like V011 and V012.
-- A branch key is a 256-bit key stored wrapped by the key version's wrapping key (KMS or the
-- local master key); DEKs are derived from it locally (HKDF), so KMS cost no longer grows with
-- the number of tenants. Envelopes name a branch key by its random 32-bit id.

-- group: keystore
CREATE SCHEMA IF NOT EXISTS encryption;
CREATE TABLE IF NOT EXISTS encryption.glc_branch_keys (
    branch_id BIGINT PRIMARY KEY,
    scope TEXT NOT NULL,
    branch_version INTEGER NOT NULL,
    key_version INTEGER NOT NULL,
    state TEXT NOT NULL,
    provider TEXT NOT NULL,
    wrapping_key_id TEXT NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    rewrapped_at DOUBLE PRECISION,
    UNIQUE (scope, key_version, branch_version)
);
CREATE INDEX IF NOT EXISTS glc_branch_keys_scope ON encryption.glc_branch_keys (scope, state);
CREATE INDEX IF NOT EXISTS glc_branch_keys_version ON encryption.glc_branch_keys (key_version);

-- One row per branch-key change (rotation, deletion, rewrap), numbered by the keyring epoch
-- the change produced: an instance that sees the epoch move reads only the rows after the
-- epoch it had, and drops just the keys those rows name.
CREATE TABLE IF NOT EXISTS encryption.glc_branch_key_changes (
    epoch BIGINT PRIMARY KEY,
    scope TEXT NOT NULL,
    action TEXT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL
);
