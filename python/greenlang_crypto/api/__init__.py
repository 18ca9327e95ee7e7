"""FastAPI admin router, authentication and the `serve` command (needs the `api` extra)."""
