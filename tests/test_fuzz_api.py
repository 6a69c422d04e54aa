"""Schemathesis over the live app's /openapi.json: every documented route, each case sent with a staff, a
reviewer and an admin key. No request may get a 5xx, and responses must match the schema where it declares one.

The server is the real app on the tiny model (uvicorn in a thread), with two settings that keep a fuzz run
cheap without hiding any route: `max_tokens_limit=32` (larger `max_tokens` are refused with 400 instead of
generating for seconds) and an impossible `training_min_free_mb` (POST /v1/training/runs validates its config
overrides, then refuses for lack of disk instead of launching a training worker).
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import ThreadServer, free_port, tiny_settings

ROLES = ("staff", "reviewer", "admin")
MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 8,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "warnings": False,
    }
)
SEEN: Counter[tuple[str, str, str, int]] = Counter()  # (operation, mode, role, status) → responses


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_model_dir, tiny_engine):
    from app import create_app

    workdir = tmp_path_factory.mktemp("fuzz-server")
    config = tiny_settings(
        workdir, tiny_model_dir, max_body_bytes=64_000, max_tokens_limit=32, training_min_free_mb=10**12
    )
    with ThreadServer(create_app(config, engine=tiny_engine), free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def fuzz_keys(fuzz_server) -> dict[str, str]:
    return {role: fuzz_server.add_user(f"fuzz-{role}", role)["api_key"] for role in ROLES}


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json", config=CONFIG)


def fuzz_operation(operation, mode: GenerationMode, url: str, keys: dict[str, str]) -> None:
    """Up to MAX_EXAMPLES cases of one operation in one mode, each sent once per role; raises the first failure."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure reports its curl command instead
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        for role, key in keys.items():
            response = case.call(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            SEEN[(operation.label, mode.value, role, response.status_code)] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:
                raise AssertionError(f"{role}: {case.as_curl_command()}\n{exc}") from exc

    run()


def test_schemathesis_every_operation_every_role(api_schema, fuzz_server, fuzz_keys):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    failures = []
    for operation in operations:
        for mode in GenerationMode:
            try:
                fuzz_operation(operation, mode, fuzz_server.url, fuzz_keys)
            except Unsatisfiable:  # nothing to make invalid: no parameters and no body
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collect them all: one run shows every broken operation
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    by_role = {role: Counter() for role in ROLES}
    for (_, _, role, status), n in SEEN.items():
        by_role[role][status] += n
    print(f"\n{len(operations)} operations, {sum(SEEN.values())} requests; statuses by role: {by_role}")
    assert not failures, "\n\n".join(failures)
    # the keys worked and every role reached every operation: 401 only where the fuzzer broke the request itself
    assert {(label, role) for label, _, role, _ in SEEN} == {(op.label, role) for op in operations for role in ROLES}
    for role in ROLES:
        assert sum(n for status, n in by_role[role].items() if status < 300) > 0, role
    assert by_role["staff"][403] and by_role["reviewer"][403] and not by_role["admin"][403]
