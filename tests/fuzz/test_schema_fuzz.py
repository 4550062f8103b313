"""Schema-driven fuzzing of a real frontend + mocker from the frontend's own ``/openapi.json``
(schemathesis): every operation the document describes gets schema-valid and schema-breaking
requests (schemathesis's examples, coverage and fuzzing phases), and every answer is checked:

- never a 5xx, except a 503 that carries ``Retry-After``;
- the status, content type, headers and body are the ones the document gives for the operation;
- a request the document rules out is refused with a 4xx;
- after the run, a normal chat request still answers and the frontend logged no unexpected error.

Not checked: that every request the document allows is accepted (schemathesis's
``positive_data_acceptance``): the server also refuses what a JSON schema cannot say (a prompt
longer than the model's context, a token id outside its vocabulary, ``max_tokens`` 0 without
``echo``, ...), each with a 400 naming the field; ``test_hostile_input`` covers those.

Most bodies are steered to the served model (``map_case``) so that they get past the model lookup
into preprocessing, routing and the engine; the last test checks that they did.

Budget: schemathesis's coverage phase (boundary values of every field: a few hundred cases per
completion route) plus ``EXAMPLES`` fuzzed cases per operation, deterministic (the same cases every
run): about a minute on a busy two-core CI machine. ``DYN_FUZZ_EXAMPLES=150`` makes a longer run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import CHAT, MODEL, Served
from tests.support.graph import metric_value

pytestmark = [pytest.mark.timeout(240)]
EXAMPLES = int(os.environ.get("DYN_FUZZ_EXAMPLES", "20"))
REQUEST_TIMEOUT = 30.0


def no_server_error(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """No 500, 502, 504 or other 5xx ever; a 503 only with ``Retry-After``."""
    status = response.status_code
    if status >= 500 and not (status == 503 and "retry-after" in {k.lower() for k in response.headers}):
        raise AssertionError(
            f"{case.operation.label} answered {status}{' without Retry-After' if status == 503 else ''}: "
            f"{response.text[:500]}"
        )
    return True


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Iterator[Any]:
    config = schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=config, timeout=10)

    turn = itertools.count()

    @schema.hook
    def map_case(_ctx: Any, case: schemathesis.Case) -> schemathesis.Case:
        # Two bodies in three get the served model's name, so that they pass the model lookup and
        # reach preprocessing, routing and the engine; of those, schema-valid chat bodies get a
        # plain message list (the document cannot say that a message needs content), so that the
        # other fields reach the engine too. A string replaces a string and a valid list a valid
        # list: a schema-breaking body stays schema-breaking (schemathesis re-checks edited cases).
        body = case.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or next(turn) % 3 == 0:
            return case
        body = {**body, "model": MODEL}
        positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
        if positive and "messages" in body:
            body["messages"] = CHAT
        case.body = body
        return case

    yield schema


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's lazy schemas read and rename ``node._nodeid`` to report each operation;
    # pytest 9.2 keeps the id elsewhere (``node._id``), so give it the attribute it reads.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz_every_operation(case: schemathesis.Case, served: Served) -> None:
    case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT)


def test_healthy_after_fuzzing(served: Served) -> None:
    # The fuzzing reached the engine, not only the validation at the door.
    metrics = served.frontend.metrics()
    for endpoint in ("chat_completions", "completions", "responses"):
        answered = metric_value(
            metrics, "dynamo_frontend_requests_total", endpoint=endpoint, model=MODEL, status="200"
        )
        assert answered >= 5, (endpoint, answered)
    served.healthy()
