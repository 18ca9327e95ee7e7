-- V014: self-fencing instances (greenlang-crypto).
-- Idempotent. Each instance records the fence bound it seals under, so that a retirement
-- counts it dead only after that bound has passed, whatever refresh setting the retiring
-- process itself runs with.

-- group: keystore
ALTER TABLE encryption.glc_instances
    ADD COLUMN IF NOT EXISTS fence_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
