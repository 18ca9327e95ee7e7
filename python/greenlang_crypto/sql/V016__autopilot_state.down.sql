-- Reverts V016: forgets the autopilot's last step (`keys status` then shows none).
DROP TABLE IF EXISTS encryption.glc_autopilot_state;
