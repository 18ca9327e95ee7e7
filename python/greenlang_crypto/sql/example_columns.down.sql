-- Reverts example_columns.sql: drops the encrypted and blind-index columns and their indexes
-- from the application tables that have them. The encrypted values in them are lost; run it
-- only once the application no longer reads those columns.

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
            EXECUTE format('DROP INDEX IF EXISTS %s',
                           CASE WHEN position('.' in target.tbl) > 0
                                THEN split_part(target.tbl, '.', 1) || '.' ELSE '' END
                           || quote_ident('glc_' || replace(target.tbl, '.', '_') || '_'
                                          || target.col || '_bidx'));
            EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I, DROP COLUMN IF EXISTS %I, '
                           'DROP COLUMN IF EXISTS %I', target.tbl, target.col || '_enc',
                           target.col || '_key_version', target.col || '_bidx');
        END IF;
    END LOOP;
END
$$;
