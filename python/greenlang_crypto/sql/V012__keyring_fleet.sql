-- V012: key lifecycle across a fleet (greenlang-crypto).
-- Idempotent, like V011. Adds the keyring change counter, the wrapping-key history and the
-- instance table; adds the DEK use counters to stores created by V011 before it had them; and
-- moves a key store and an audit log that an older release created in `public` into the
-- `encryption` schema.

-- group: keystore
CREATE SCHEMA IF NOT EXISTS encryption;

-- Older releases created the key store in `public` while V011 created empty tables in
-- `encryption`. Move each table whose `encryption` twin is missing or empty; leave both (with
-- a warning) when both hold rows, which only an operator can merge. Indexes move with their
-- table.
DO $$
DECLARE
    t TEXT;
    has_rows BOOLEAN;
BEGIN
    FOREACH t IN ARRAY ARRAY['glc_key_versions', 'glc_keyring', 'glc_deks', 'glc_index_keys']
    LOOP
        IF to_regclass('public.' || t) IS NULL THEN
            CONTINUE;
        END IF;
        IF to_regclass('encryption.' || t) IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM encryption.%I)', t) INTO has_rows;
            IF has_rows THEN
                RAISE WARNING 'public.% and encryption.% both hold rows; merge by hand', t, t;
                CONTINUE;
            END IF;
            EXECUTE format('DROP TABLE encryption.%I', t);
        END IF;
        EXECUTE format('ALTER TABLE public.%I SET SCHEMA encryption', t);
    END LOOP;
END
$$;

ALTER TABLE encryption.glc_deks ADD COLUMN IF NOT EXISTS messages BIGINT NOT NULL DEFAULT 0;
ALTER TABLE encryption.glc_deks ADD COLUMN IF NOT EXISTS bytes BIGINT NOT NULL DEFAULT 0;

-- The change counter: every key-state change increments it in the same transaction, and
-- every instance polls this one row (PostgreSQL also notifies on channel glc_keyring).
CREATE TABLE IF NOT EXISTS encryption.glc_keyring_changes (
    id INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL
);
INSERT INTO encryption.glc_keyring_changes (id, epoch, changed_at) VALUES (1, 0, 0)
    ON CONFLICT (id) DO NOTHING;

-- Every wrapping key a version ever had: inline envelopes name the key that wrapped their DEK,
-- so a rewrap keeps the old ones until an operator destroys them.
CREATE TABLE IF NOT EXISTS encryption.glc_wrapping_keys (
    version INTEGER NOT NULL,
    provider TEXT NOT NULL,
    wrapping_key_id TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL,
    destroyed_at DOUBLE PRECISION,
    PRIMARY KEY (version, wrapping_key_id)
);
INSERT INTO encryption.glc_wrapping_keys (version, provider, wrapping_key_id, added_at)
    SELECT version, provider, wrapping_key_id, created_at FROM encryption.glc_key_versions
    WHERE 1 = 1 ON CONFLICT DO NOTHING;

-- Service instances and the keyring epoch each one runs (heartbeats).
CREATE TABLE IF NOT EXISTS encryption.glc_instances (
    instance_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    epoch BIGINT NOT NULL,
    primary_version INTEGER NOT NULL,
    min_version INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL
);

-- group: audit
-- Older audit sinks created their tables in `public` when the `encryption` schema was missing.
-- Move them beside the key store, under the same rule: only when the `encryption` twin is
-- missing or empty, so a chain is never split or merged silently.
CREATE SCHEMA IF NOT EXISTS encryption;
DO $$
DECLARE
    t TEXT;
    has_rows BOOLEAN;
BEGIN
    FOREACH t IN ARRAY ARRAY['glc_audit', 'glc_audit_meta']
    LOOP
        IF to_regclass('public.' || t) IS NULL THEN
            CONTINUE;
        END IF;
        IF to_regclass('encryption.' || t) IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM encryption.%I)', t) INTO has_rows;
            IF has_rows THEN
                RAISE WARNING 'public.% and encryption.% both hold rows; merge by hand', t, t;
                CONTINUE;
            END IF;
            EXECUTE format('DROP TABLE encryption.%I', t);
        END IF;
        EXECUTE format('ALTER TABLE public.%I SET SCHEMA encryption', t);
    END LOOP;
END
$$;
