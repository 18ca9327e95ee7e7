"""The synchronous app: ``uvicorn app.main:app`` (``DATABASE_URL``, ``GLC_DATA_DIR``).

Routes:

* ``POST /users``: creates a user; 409 if the tenant already has one with that e-mail.
* ``GET /users/{id}``: one user, e-mail decrypted.
* ``GET /users/by-email?tenant_id=...&email=...``: the tenant's users with that e-mail
  (case and surrounding spaces ignored, as the blind index normalizes them).
* ``/api/v1/encryption/...``, ``/metrics``, ``/healthz``: the library's routers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from greenlang_crypto.sqlalchemy import lookup, psycopg_engine_options
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from app import crypto
from app.models import User
from app.schemas import UserIn, UserOut

# psycopg_engine_options: bytea comes back in binary (no hex decoding per envelope) and a
# failing statement's message never shows its parameters (plaintexts).
engine = create_engine(os.environ["DATABASE_URL"], **psycopg_engine_options())
sessions = sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Closes the stack (flushing the audit log) and the pool at shutdown."""
    yield
    engine.dispose()
    crypto.close()


app = FastAPI(title="users (sync)", lifespan=lifespan)
crypto.mount_library_routes(app)


@app.post("/users", status_code=201)
def create_user(body: UserIn) -> UserOut:
    """Creates a user (the ORM encrypts the e-mail and fills its blind index on flush)."""
    with sessions() as session:
        # matches() compares the blind index in SQL, with the tenant's index key. A
        # concurrent request can still race this check; a UNIQUE index on
        # (tenant_id, email_bidx) would close that outside an index-key rotation.
        taken = session.scalar(
            select(User.id)
            .where(User.tenant_id == body.tenant_id)
            .where(User.email.matches(body.email, tenant_id=body.tenant_id))
            .limit(1)
        )
        if taken is not None:
            raise HTTPException(status_code=409, detail="e-mail already registered")
        user = User(tenant_id=body.tenant_id, email=body.email, name=body.name)
        session.add(user)
        session.commit()
        return UserOut.of(user)


# Declared before /users/{user_id}, which would otherwise take "by-email" as an id.
@app.get("/users/by-email")
def users_by_email(tenant_id: str, email: str) -> list[UserOut]:
    """The tenant's users with this e-mail address (by the blind index, then verified)."""
    with sessions() as session:
        found = lookup(
            session,
            User.email,
            email,
            tenant_id=tenant_id,
            statement=select(User).where(User.tenant_id == tenant_id),
        )
        return [UserOut.of(u) for u in found]


@app.get("/users/{user_id}")
def get_user(user_id: uuid.UUID) -> UserOut:
    """One user, its e-mail decrypted; 404 if there is none."""
    with sessions() as session:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404, detail="no such user")
        return UserOut.of(user)
