"""Property-based fuzzing of every service's OpenAPI (schemathesis): no 500s, and answers match their documented schema.

Each running service's own document is loaded and every operation gets generated requests, valid and invalid,
with a real token: an admin's for the domain services, a throwaway customer's for auth_service (so that
`/logout` revokes nothing another test needs). `RELIABILITY_SCALE` multiplies the examples per operation.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import register_customer
from tests.fleet import Fleet
from tests.reliability.conftest import SCALE, SEED, Admin, say

pytestmark = pytest.mark.integration

FUZZED = ["auth_service", "order_service", "inventory_service", "payment_service", "carrier_service",
          "shipment_service", "saga_orchestrator"]
UNFUZZED = {"/api/auth/login"}
EXAMPLES = 6 * SCALE  # per operation and generation mode


def _fuzz_operation(operation: Any, base_url: str, headers: dict[str, str], mode: GenerationMode,
                    client: httpx.Client) -> list[str]:
    """Run the operation's generated cases; the failures found, one line each (the first per check)."""
    failures: list[str] = []

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
        kwargs.pop("timeout", None)
        if not kwargs.get("cookies"):
            kwargs.pop("cookies", None)
        if isinstance(kwargs.get("data"), bytes | str):  # raw bodies go as content= in httpx
            kwargs["content"] = kwargs.pop("data")
        try:
            response = client.request(**kwargs)
        except httpx.InvalidURL:  # longer than httpx will send (a 64 KiB query): not the service's concern
            return
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except Exception as exc:
            request = response.request
            failures.append(f"{operation.label} [{mode.value}] {response.status_code}: {str(exc).strip()[:600]}\n"
                            f"    sent {request.method} {request.url} {request.content[:300]!r}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
        assert mode == GenerationMode.NEGATIVE, f"no valid case could be generated for {operation.label}"
    return failures[:1]


@pytest.mark.parametrize("package", FUZZED)
def test_openapi_fuzzing(fleet: Fleet, rel_admin: Admin, gateway_url: str, package: str) -> None:
    base_url = fleet.processes[package].url
    if package == "auth_service":
        with httpx.Client(base_url=gateway_url, timeout=30) as api:
            token = register_customer(api).token
    else:
        token = rel_admin.token
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    # Not /login: every failed login counts against the client address (127.0.0.1 for the whole session), and
    # 20 of them lock every login out for 15 minutes. tests/reliability/test_bad_input.py sends it bad bodies.
    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            if result.ok().path not in UNFUZZED:
                operations.append(result.ok())
        else:  # the service's own document is broken
            failures.append(f"invalid operation in {package}'s OpenAPI: {result.err()}")
    with httpx.Client(timeout=30) as client:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures.extend(_fuzz_operation(operation, base_url, headers, mode, client))
    say(f"tried: {len(operations)} operations of {package}, up to {EXAMPLES} valid and {EXAMPLES} invalid"
          f" requests each (seed {SEED}); found {len(failures)} failing")
    assert not failures, "\n".join(failures)
