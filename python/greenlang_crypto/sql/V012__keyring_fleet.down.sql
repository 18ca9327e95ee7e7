-- Reverts V012: drops the fleet tables. The DEK use counters stay (V011 creates them too), and
-- a key store moved out of `public` stays in `encryption`.
DROP TABLE IF EXISTS encryption.glc_instances;
DROP TABLE IF EXISTS encryption.glc_wrapping_keys;
DROP TABLE IF EXISTS encryption.glc_keyring_changes;
