"""The asyncio app: ``uvicorn app.main_async:app``, the routes of :mod:`app.main` on asyncio.

The same ``DATABASE_URL`` (``postgresql+psycopg://...``) serves: ``create_async_engine``
picks psycopg's asyncio driver. Key-store and KMS calls the column types need (a DEK or
index key not cached yet) run on a worker thread, so they never stall the event loop.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from greenlang_crypto.sqlalchemy import alookup, async_engine_options
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app import crypto
from app.models import User
from app.schemas import UserIn, UserOut

_URL = os.environ["DATABASE_URL"]
engine = create_async_engine(_URL, **async_engine_options(_URL))
# expire_on_commit=False: reading an expired attribute would need a query an AsyncSession
# cannot run implicitly.
sessions = async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Closes the pool and the stack (flushing the audit log) at shutdown."""
    yield
    await engine.dispose()
    crypto.close()


app = FastAPI(title="users (async)", lifespan=lifespan)
crypto.mount_library_routes(app)


@app.post("/users", status_code=201)
async def create_user(body: UserIn) -> UserOut:
    """Creates a user; 409 if the tenant already has one with that e-mail."""
    async with sessions() as session:
        taken = await session.scalar(
            select(User.id)
            .where(User.tenant_id == body.tenant_id)
            .where(User.email.matches(body.email, tenant_id=body.tenant_id))
            .limit(1)
        )
        if taken is not None:
            raise HTTPException(status_code=409, detail="e-mail already registered")
        user = User(tenant_id=body.tenant_id, email=body.email, name=body.name)
        session.add(user)
        await session.commit()
        return UserOut.of(user)


@app.get("/users/by-email")
async def users_by_email(tenant_id: str, email: str) -> list[UserOut]:
    """The tenant's users with this e-mail address (by the blind index, then verified)."""
    async with sessions() as session:
        found = await alookup(
            session,
            User.email,
            email,
            tenant_id=tenant_id,
            statement=select(User).where(User.tenant_id == tenant_id),
        )
        return [UserOut.of(u) for u in found]


@app.get("/users/{user_id}")
async def get_user(user_id: uuid.UUID) -> UserOut:
    """One user, its e-mail decrypted; 404 if there is none."""
    async with sessions() as session:
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404, detail="no such user")
        return UserOut.of(user)
