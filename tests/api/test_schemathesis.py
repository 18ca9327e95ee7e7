"""Property-based fuzzing of the OpenAPI schema in-process (schemathesis): never a 5xx.

Bounded (a few dozen examples per operation and mode) so the whole file runs in well under a
minute. Half of the generated bodies get the token's tenant, so the fuzzer also reaches the
base64 decoding and the service, not only the tenant check.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from .conftest import TENANT, TokenFactory, bearer

EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
def test_schema_fuzzing_finds_no_server_error(
    app: FastAPI, make_token: TokenFactory, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = bearer(make_token())
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    failures: list[str] = []
    skipped: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), own_tenant=st.booleans())
        def run(case: Any, own_tenant: bool) -> None:
            body = case.body
            if own_tenant and isinstance(body, dict) and isinstance(body.get("context"), dict):
                body["context"]["tenant_id"] = TENANT
            response = case.call(headers=headers)
            if response.status_code >= 500:
                label = case.operation.label
                failures.append(f"{label}: {response.status_code} for {case.body!r:.200}")

        try:
            run()
        except Unsatisfiable:
            # Negative mode cannot invalidate an operation without inputs (GET /keys).
            assert mode is GenerationMode.NEGATIVE
            skipped.append(operation.label)
    assert not failures, failures[:5]
    assert len(skipped) < len(operations)
    assert time.monotonic() - started < 60
