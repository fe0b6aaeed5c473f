"""The one table of error codes: every failure of the accounts store and of the bus becomes one
of its codes, every code the frontend raises is in it, each has one status, OpenAI type and retry
rule, and /openapi.json lists exactly its codes."""

from __future__ import annotations

import inspect
import re

import pytest

from accounts import errors as accounts_errors
from broker import errors as bus_errors
from frontend import errors
from frontend.openapi import document
from tests.harness import ROOT

OPENAI_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "rate_limit_error", "server_error"}


def bus_error_classes() -> list[type[bus_errors.BusError]]:
    return [
        value
        for value in vars(bus_errors).values()
        if inspect.isclass(value) and issubclass(value, bus_errors.BusError)
    ]


def test_every_accounts_failure_and_bus_error_becomes_one_code_of_the_table() -> None:
    assert set(errors.ACCOUNT_CODES) == set(accounts_errors.MESSAGES)
    assert set(errors.ACCOUNT_CODES.values()) <= set(errors.CODES)
    for error_class in bus_error_classes():
        assert errors.bus_code(error_class.code) in errors.CODES, error_class
    # Retry-After is sent only where the bus says the same request may succeed later.
    for error_class in bus_error_classes():
        if errors.CODES[errors.bus_code(error_class.code)].retry == "later":
            assert error_class.retryable, error_class


def test_every_code_the_frontend_raises_is_in_the_table() -> None:
    raised = set()
    for path in (ROOT / "frontend").rglob("*.py"):
        text = path.read_text()
        raised |= set(re.findall(r'ApiError\(\s*"([a-z_]+)"', text))
    assert raised and raised <= set(errors.CODES), raised - set(errors.CODES)


@pytest.mark.parametrize("code", sorted(errors.CODES))
def test_each_code_has_one_status_type_and_retry_rule_that_its_answers_carry(code: str) -> None:
    kind = errors.CODES[code]
    assert kind.openai_type in OPENAI_TYPES and kind.meaning
    assert (kind.openai_type == "server_error") == (kind.status >= 500)
    answer = errors.ApiError(code, "message")
    assert answer.status == kind.status
    headers = answer.retry_headers()
    assert ("Retry-After" in headers) == (kind.retry == "later")
    assert (headers.get("x-should-retry") == "false") == (kind.retry == "never")


def test_openapi_lists_exactly_the_codes_of_the_table_under_their_statuses() -> None:
    spec = document()
    assert set(spec["x-error-codes"]) == set(errors.CODES)
    for code, kind in errors.CODES.items():
        assert spec["x-error-codes"][code]["status"] == kind.status
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for status, answer in operation.get("responses", {}).items():
                if int(status) < 400 or "Error" not in str(answer.get("content")):
                    continue  # /readyz's 503 is its plain report, not an error
                named = set(re.findall(r"`([a-z_]+)`:", answer["description"]))
                expected = {code for code, kind in errors.CODES.items() if kind.status == int(status)}
                assert named == expected, (path, status)
