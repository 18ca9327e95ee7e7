-- Reverts V015: drops the erasure records and tombstones (reads of erased data then report an
-- unknown key instead of erased data; the erased keys stay deleted).
DROP INDEX IF EXISTS encryption.glc_deks_tenant;
ALTER TABLE encryption.glc_deks DROP COLUMN IF EXISTS tenant_id;
DROP TABLE IF EXISTS encryption.glc_erased_keys;
DROP TABLE IF EXISTS encryption.glc_tenant_erasures;
