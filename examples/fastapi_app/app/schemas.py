"""Request and response bodies shared by the sync and the async app."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from app.models import User


class UserIn(BaseModel):
    """A user to create."""

    tenant_id: str = Field(min_length=1, max_length=64)
    email: str = Field(min_length=3, max_length=320)
    name: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    """A user as the API returns it (the e-mail address decrypted)."""

    id: uuid.UUID
    tenant_id: str
    email: str
    name: str

    @classmethod
    def of(cls, user: User) -> UserOut:
        """The response body of a loaded user."""
        return cls(id=user.id, tenant_id=user.tenant_id, email=user.email, name=user.name)
