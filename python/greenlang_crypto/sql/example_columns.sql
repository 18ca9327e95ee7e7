-- Example (greenlang-crypto): the encrypted columns of an application's own tables.
-- NOT a migration: `greenlang-crypto db migrate` never applies it, because these tables belong
-- to the application and its own migration tool (Alembic, Flyway...) should own their columns.
-- `greenlang-crypto db migrate --example-columns` applies it on request (idempotent), and
-- `greenlang-crypto db migrate --down --example-columns` reverts it (example_columns.down.sql).
-- An application that manages its schema itself copies the columns it needs into its own
-- migrations instead: for a PII column `<col>`, `<col>_enc BYTEA` holds the envelope,
-- `<col>_key_version INTEGER` mirrors its key version (written in the same UPDATE) and
-- `<col>_bidx BYTEA` the blind index (first byte = index key version), with an index on it.

-- group: columns
-- The PII columns of the requirements document's tables, each table only where it exists
-- (the `columns` group of greenlang_crypto.sql.statements).
DO $$
DECLARE
    target RECORD;
BEGIN
    FOR target IN
        SELECT * FROM (VALUES
            ('security.login_attempts', 'ip_address'),
            ('users', 'email'),
            ('users', 'phone'),
            ('api_keys', 'key_value')
        ) AS t(tbl, col)
    LOOP
        IF to_regclass(target.tbl) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %I BYTEA',
                           target.tbl, target.col || '_enc');
            EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %I INTEGER',
                           target.tbl, target.col || '_key_version');
            EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS %I BYTEA',
                           target.tbl, target.col || '_bidx');
            EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s (%I)',
                           'glc_' || replace(target.tbl, '.', '_') || '_' || target.col || '_bidx',
                           target.tbl, target.col || '_bidx');
        END IF;
    END LOOP;
END
$$;
