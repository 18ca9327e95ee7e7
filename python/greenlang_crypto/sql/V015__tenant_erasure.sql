-- V015: tenant erasure (greenlang-crypto). Idempotent, like V011 to V014.
-- Erasing a tenant is two-phase: the tenant is first marked `erasing` (every instance stops
-- encrypting for it and confirms), then its keys are deleted and it is marked `erased`. The
-- deleted keys leave tombstones, so reading erased data says "erased" rather than "unknown".

-- group: keystore
CREATE SCHEMA IF NOT EXISTS encryption;

-- One row per tenant ever erased. `changed_epoch` is the keyring epoch of the row's last
-- change; `index_salt` (set when an erasure completes, replaced by every later one) enters the
-- derivation of the tenant's blind-index keys from then on, so lookups stop matching its old
-- index values.
CREATE TABLE IF NOT EXISTS encryption.glc_tenant_erasures (
    tenant_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    started_epoch BIGINT NOT NULL,
    changed_epoch BIGINT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    erased_at DOUBLE PRECISION,
    erasures INTEGER NOT NULL DEFAULT 0,
    index_salt BYTEA
);
CREATE INDEX IF NOT EXISTS glc_tenant_erasures_state
    ON encryption.glc_tenant_erasures (state);

-- Tombstones of erased keys: `kind` is `stored` (a DEK id) or `branch` (a branch key id). No
-- key material, wrapped or not, is kept.
CREATE TABLE IF NOT EXISTS encryption.glc_erased_keys (
    kind TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    tenant_id TEXT,
    erased_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, key_id)
);

-- The tenant of each stored DEK, so an erasure finds them with an index (rows written before
-- V015 have NULL here and are matched on their stored context instead).
ALTER TABLE encryption.glc_deks ADD COLUMN IF NOT EXISTS tenant_id TEXT;
CREATE INDEX IF NOT EXISTS glc_deks_tenant ON encryption.glc_deks (tenant_id);
