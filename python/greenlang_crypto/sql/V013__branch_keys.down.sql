-- Reverts V013: drops the branch-key tables (data encrypted under branch keys stops decrypting).
DROP TABLE IF EXISTS encryption.glc_branch_key_changes;
DROP TABLE IF EXISTS encryption.glc_branch_keys;
