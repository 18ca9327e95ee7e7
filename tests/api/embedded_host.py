"""A host FastAPI application that embeds the API, as a team's service would, run by uvicorn.

``python -m tests.api.embedded_host DATA_DIR PORT GO`` creates ``GO.ready-PORT``, waits until the
file ``GO`` exists (so that several processes build their stack at the same instant), builds
the stack with ``initialize_if_missing=True`` on ``DATA_DIR``, and serves on 127.0.0.1:PORT:

* the host's own routes: ``POST /orders`` (a pydantic body), ``GET /orders/{n}`` (raises the
  host's ``OutOfStockError``, answered by the host's handler with 409);
* the API under ``/api/v1/encryption`` (development tokens of ``DATA_DIR``);
* ``/internal/metrics`` and ``/healthz`` from the library's routers.

Everything is imported from :mod:`greenlang_crypto.api` by the names README.md uses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from greenlang_crypto.api import (
    JwtAuthorizer,
    build_stack,
    dev_settings,
    health_router,
    metrics_router,
    mount_encryption_api,
)
from greenlang_crypto.config import EncryptionServiceConfig


class Order(BaseModel):
    """The host's own request body."""

    sku: str
    quantity: int


class OutOfStockError(Exception):
    """The host's own error."""


def make_app(data_dir: Path) -> FastAPI:
    """The host app with the API, metrics and health embedded."""
    config = EncryptionServiceConfig(data_dir=data_dir)
    stack = build_stack(config, flush_interval=0.2, initialize_if_missing=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        stack.close()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(OutOfStockError)
    async def out_of_stock(request: Request, exc: OutOfStockError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"error": "out of stock"})

    @app.post("/orders")
    def place(order: Order) -> dict[str, str]:
        return {"sku": order.sku}

    @app.get("/orders/{number}")
    def order(number: int) -> dict[str, int]:
        raise OutOfStockError

    mount_encryption_api(
        app, stack.service, stack.audit, authorizer=JwtAuthorizer(dev_settings(data_dir))
    )
    app.include_router(metrics_router(stack.registry), prefix="/internal")
    app.include_router(health_router(stack.service, stack.audit))
    return app


def main() -> None:
    """Runs the host app (arguments: data directory, port, start file)."""
    data_dir, port, go = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    Path(f"{go}.ready-{port}").touch()
    while not go.exists():
        time.sleep(0.001)
    app = make_app(data_dir)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
