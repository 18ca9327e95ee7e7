-- V016: the rotation autopilot's last step (greenlang-crypto). Idempotent, like V011 to V015.
-- The autopilot runs as a scheduled job, away from the people who read `keys status`: its
-- last outcome (done, progressing, blocked) and the reasons are kept here, beside the
-- keyring, so any instance can show why a due rotation or retirement has not happened.

-- group: keystore
CREATE SCHEMA IF NOT EXISTS encryption;

-- One row (`name` = 'last'). `reasons` is a JSON list of sentences naming tables, columns,
-- versions and counts, never a row value.
CREATE TABLE IF NOT EXISTS encryption.glc_autopilot_state (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    reasons TEXT NOT NULL,
    runner TEXT NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL
);
