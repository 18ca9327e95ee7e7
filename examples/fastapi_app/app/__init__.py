"""A small FastAPI + SQLAlchemy application whose users' e-mail addresses are encrypted."""
