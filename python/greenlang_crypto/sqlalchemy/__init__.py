"""SQLAlchemy column types, blind indexes, pgcrypto mode and migration jobs."""
