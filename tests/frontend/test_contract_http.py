"""The typed worker contract end to end: HTTP bodies that set every field of a
``GenerationRequest`` go through the real frontend and broker to a worker that answers with
the request as it read it (``tests.fixtures.contract_echo``), and arrive as the bodies asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from broker.contract.generation import GenerationRequest
from tests.frontend.conftest import running_api
from tests.frontend.test_contract import CHAT, TOOL

SERVICE = "contract"
ECHO = "tests.fixtures.contract_echo:ContractEcho"

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
# The earlier turns of a chat about the weather, as the worker reads them: a developer's
# message is a system message, a call's JSON arguments an object, the call's type a default.
EARLIER_CALL = {"id": "c1", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
CALLED_AND_ANSWERED = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": "", "tool_calls": [EARLIER_CALL]},
    {"role": "tool", "content": "cold", "tool_call_id": "c1"},
]


@dataclass(frozen=True)
class Case:
    """One HTTP call, where its answer holds the worker's text, and the request the worker must read."""

    path: str
    body: dict[str, Any]
    answer_text: Callable[[dict[str, Any]], str]
    expected: dict[str, Any]


CASES = {
    "chat": Case(
        "/v1/chat/completions",
        # The in-process test's chat, with two stop strings and a JSON answer asked for too.
        {**CHAT, "model": SERVICE, "stop": ["\n\n", "END"], "response_format": {"type": "json_object"}},
        lambda answer: answer["choices"][0]["message"]["content"],
        {
            "messages": [{"role": "system", "content": "be brief"}, *CALLED_AND_ANSWERED],
            "max_tokens": 9,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n\n", "END"],
            "seed": 7,
            "tools": [TOOL],
            "tool_choice": {"function": {"name": "weather"}},
            "response_format": {"type": "json_object"},
            "logprobs": True,
            "top_logprobs": 2,
        },
    ),
    "completion": Case(
        "/v1/completions",
        {
            "model": SERVICE,
            "prompt": "Once",
            "max_tokens": 5,
            "stop": "\n",
            "seed": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
            "logprobs": 3,
        },
        lambda answer: answer["choices"][0]["text"],
        {
            "prompt": "Once",
            "max_tokens": 5,
            "stop": ["\n"],
            "seed": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
            "logprobs": True,
            "top_logprobs": 3,
        },
    ),
    "responses": Case(
        "/v1/responses",
        {
            "model": SERVICE,
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Oslo"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "cold"},
            ],
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "tool_choice": "required",
            "text": {"format": {"type": "json_object"}},
            "max_output_tokens": 4,
            "temperature": 0.25,
            "top_p": 0.5,
            "store": False,
        },
        lambda answer: answer["output"][0]["content"][0]["text"],
        {
            "messages": [{"role": "system", "content": "be brief"}, *CALLED_AND_ANSWERED],
            "max_tokens": 4,
            "temperature": 0.25,
            "top_p": 0.5,
            "tools": [TOOL],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
    ),
    # The Django server's body, passed through untouched.
    "api": Case(
        f"/api/{SERVICE}/",
        # A client's own key_limits never reach a worker: only its key's do.
        {"text": "hello", "max_new_tokens": 6, "key_limits": {"max_prompt_tokens": 10**6}},
        lambda answer: answer["message"],
        {"text": "hello", "max_new_tokens": 6},
    ),
}


@pytest.fixture(scope="module")
def received(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Each case's request as the worker read it, sent once through one live stack."""
    with running_api(tmp_path_factory.mktemp("contract-stack"), workers=((SERVICE, ECHO),)) as api:
        secret = api.key()
        seen = {}
        for name, case in CASES.items():
            response = api.post(case.path, secret, case.body)
            assert response.status_code == 200, (name, response.text)
            seen[name] = json.loads(case.answer_text(response.json()))
        return seen


@pytest.mark.parametrize("name", CASES)
def test_every_field_the_body_sets_reaches_the_worker_as_asked(received, name):
    assert received[name] == CASES[name].expected


def test_the_openai_bodies_set_every_field_of_the_contract_but_the_django_clients_own(received):
    wire_names = {field.alias or name for name, field in GenerationRequest.model_fields.items()}
    openai_fields = set().union(*(received[name].keys() for name in ("chat", "completion", "responses")))
    # key_limits comes from the key's admission (this key has none), not from a body.
    assert wire_names - openai_fields - {"key_limits"} == {"text", "max_new_tokens"} == received["api"].keys()
