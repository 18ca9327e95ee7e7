-- Reverts V014: instances no longer record their fence bound.
ALTER TABLE encryption.glc_instances DROP COLUMN IF EXISTS fence_seconds;
