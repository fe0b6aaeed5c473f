"""Property-based HTTP fuzzing from the served document: schemathesis generates requests
for every operation of /openapi.json; none may get a 5xx or an answer the document does not
describe, and the document must validate."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.admin.conftest import running_console
from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama

# No 5xx, and every answer as the document describes it: status, media type, headers, body.
# (Not "schema-valid data is accepted": limits across fields, such as a report that ends
# before it starts, are not in the document, and are rightly refused.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    llama = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    encoder = build_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    workers = (
        ("default", "echo"),
        ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
         "--option", "default_max_new_tokens=2", "--option", "max_new_tokens_limit=8"),
        ("embed", "embedding", "--option", f"model={encoder}", "--option", "cpu_threads=1"),
    )
    with running_console(tmp_path_factory.mktemp("fuzz"), workers=workers) as console:
        yield console, console.api.key()


def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(fuzzed):
    console, secret = fuzzed
    document = console.api.url + "/openapi.json"
    schema = schemathesis.openapi.from_url(document)  # fails on a document that does not validate
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        # /admin/api/ is on the console's own listener, and takes an admin token.
        admin = operation.path.startswith("/admin/api/")
        fuzz(operation, console.url if admin else console.api.url, console.token if admin else secret)


def fuzz(operation, base_url: str, secret: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {secret}"}, checks=CHECKS)

    run()
