"""Structured output, tool calls and log-probabilities through the HTTP API, with the tiny
model: its random weights make constrained decoding the only reason an answer is valid."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import pydantic
import pytest
import requests

from tests.faults.conftest import sse_events
from tests.fixtures.tiny_model import build_tiny_llama
from tests.frontend.conftest import running_api
from tests.harness import ROOT

ASK = [{"role": "user", "content": "Answer in JSON."}]

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"],
     "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 9}}, "required": ["n"],
     "additionalProperties": False},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": -1.5, "maximum": 2.5}}, "required": ["x"],
     "additionalProperties": False},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
     "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": ["string", "null"], "maxLength": 8}},
     "required": ["ok", "note"], "additionalProperties": False},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1,
                                                "maxItems": 3}}, "required": ["tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "integer"},
                                                                                  "y": {"type": "integer"}},
                                                "required": ["x", "y"], "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
    {"type": "object", "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99},
                                                       {"type": "string", "maxLength": 4}]}},
     "required": ["id"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "integer", "maximum": 5}, "b": {"type": "string", "maxLength": 5}},
     "required": ["a"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["sku", "qty"], "additionalProperties": False}}}, "required": ["items"], "additionalProperties": False},
    {"type": "string", "enum": ["yes", "no", "maybe"]},
]

ADD = {"type": "function", "function": {"name": "add", "description": "Add two small numbers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a", "b"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    llama = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    worker = ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
              "--option", "max_new_tokens_limit=400")
    with running_api(tmp_path_factory.mktemp("structured"), workers=(worker,), frontend={"max_choices": 20}) as api:
        yield api


def chat(api, secret, **body):
    response = requests.post(api.url + "/v1/chat/completions", json={"model": "tiny", "messages": ASK, **body},
                             headers={"Authorization": f"Bearer {secret}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_twenty_sampled_answers_held_to_a_schema_each_parse_and_validate(api, schema):
    answer = chat(api, api.key(), n=20, temperature=1.0, seed=3, max_tokens=300,
                  response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert len(answer["choices"]) == 20
    for choice in answer["choices"]:
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)
        assert choice["finish_reason"] == "stop"


def test_a_streamed_answer_held_to_a_schema_joins_to_a_valid_document(api):
    schema = SCHEMAS[10]
    response = requests.post(
        api.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": ASK, "stream": True, "max_tokens": 300,
              "response_format": {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}},
        headers={"Authorization": f"Bearer {api.key()}"}, stream=True, timeout=60,
    )
    events = sse_events(response.iter_lines())
    text = "".join(choice["delta"].get("content") or "" for event in events[:-1] for choice in event["choices"])
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode_answers_objects(api):
    # Any object: a random model may write one string for ever, so only finished answers are whole.
    answer = chat(api, api.key(), response_format={"type": "json_object"}, n=10, temperature=1.0, seed=1, max_tokens=300)
    finished = [choice for choice in answer["choices"] if choice["finish_reason"] == "stop"]
    assert finished and all(isinstance(json.loads(choice["message"]["content"]), dict) for choice in finished)
    assert all(choice["message"]["content"].startswith("{") for choice in answer["choices"])


@pytest.mark.parametrize("keyword", [{"uniqueItems": True}, {"if": {"minItems": 1}, "then": {"maxItems": 2}}])
def test_a_schema_keyword_that_cannot_be_enforced_is_a_400_before_admission(api, keyword):
    info, secret = api.store.create_key(email="schema@example.org")
    response = requests.post(
        api.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": ASK, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", **keyword}}}},
        headers={"Authorization": f"Bearer {secret}"}, timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_schema"
    assert response.json()["error"]["param"] == "response_format"
    assert api.store.get_key(info.id).used == 0


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "weather"}}])
def test_a_forced_tool_call_always_parses_and_its_arguments_validate(api, choice):
    answer = chat(api, api.key(), tools=[ADD, WEATHER], tool_choice=choice, n=10, temperature=1.0, seed=5)
    for item in answer["choices"]:
        assert item["finish_reason"] == "tool_calls" and item["message"]["content"] is None
        (call,) = item["message"]["tool_calls"]
        tool = {"add": ADD, "weather": WEATHER}[call["function"]["name"]]
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
        if isinstance(choice, dict):
            assert call["function"]["name"] == "weather"


def test_a_streamed_tool_call_arrives_as_a_tool_calls_delta_and_never_as_content(api):
    response = requests.post(
        api.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": ASK, "stream": True, "tools": [ADD], "tool_choice": "required"},
        headers={"Authorization": f"Bearer {api.key()}"}, stream=True, timeout=60,
    )
    events = sse_events(response.iter_lines())[:-1]
    deltas = [choice["delta"] for event in events for choice in event["choices"]]
    assert not "".join(delta.get("content") or "" for delta in deltas)
    (calls,) = [delta["tool_calls"] for delta in deltas if delta.get("tool_calls")]
    assert calls[0]["function"]["name"] == "add" and json.loads(calls[0]["function"]["arguments"])
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_conversation_with_an_assistants_call_and_the_tools_answer_is_accepted(api):
    messages = [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    answer = chat(api, api.key(), messages=messages, tools=[ADD], max_tokens=5)
    assert answer["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def test_logprobs_come_with_each_token_and_its_alternatives_whole_and_streamed(api):
    answer = chat(api, api.key(), max_tokens=6, logprobs=True, top_logprobs=3, temperature=0)
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and all(len(entry["top_logprobs"]) == 3 for entry in content)
    assert all(entry["logprob"] <= 0 and entry["logprob"] == entry["top_logprobs"][0]["logprob"] for entry in content)
    assert "".join(entry["token"] for entry in content) == answer["choices"][0]["message"]["content"]
    events = sse_events(requests.post(
        api.url + "/v1/chat/completions",
        json={"model": "tiny", "messages": ASK, "max_tokens": 6, "logprobs": True, "top_logprobs": 2,
              "temperature": 0, "stream": True},
        headers={"Authorization": f"Bearer {api.key()}"}, stream=True, timeout=60).iter_lines())
    streamed = [entry for event in events[:-1] for choice in event["choices"]
                for entry in ((choice.get("logprobs") or {}).get("content") or [])]
    assert [entry["token"] for entry in streamed] == [entry["token"] for entry in content]
    completion = requests.post(api.url + "/v1/completions", json={
        "model": "tiny", "prompt": "Once", "max_tokens": 4, "logprobs": 2, "temperature": 0},
        headers={"Authorization": f"Bearer {api.key()}"}, timeout=60).json()["choices"][0]["logprobs"]
    assert len(completion["tokens"]) == 4 and all(len(top) <= 2 for top in completion["top_logprobs"])


# -- real clients ----------------------------------------------------------------------------------


class Order(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    sku: str = pydantic.Field(max_length=6)
    quantity: int = pydantic.Field(ge=1, le=5)


def test_the_openai_sdks_parse_returns_the_pydantic_model(api):
    completion = api.openai().chat.completions.parse(model="tiny", messages=ASK, response_format=Order,
                                                        temperature=1.0, max_tokens=200)
    assert isinstance(completion.choices[0].message.parsed, Order)


def test_an_openai_sdk_tool_round_trip(api):
    client = api.openai()
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=[ADD], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    messages = [*ASK, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": str(arguments["a"] + arguments["b"])}]
    second = client.chat.completions.create(model="tiny", messages=messages, tools=[ADD], max_tokens=5)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_openai_sdk_logprobs(api):
    answer = api.openai().chat.completions.create(model="tiny", messages=ASK, max_tokens=3, logprobs=True,
                                                     top_logprobs=2)
    assert len(answer.choices[0].logprobs.content) == 3


def test_langchains_structured_output_and_bound_tools(api):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="tiny", base_url=api.url + "/v1", api_key=api.key(), max_retries=0, temperature=1.0,
                       max_tokens=200, timeout=60)
    assert isinstance(model.with_structured_output(Order).invoke("An order, please."), Order)
    bound = model.bind_tools([ADD], tool_choice="add")
    message = bound.invoke("Add two numbers.")
    assert message.tool_calls and message.tool_calls[0]["name"] == "add"
    assert set(message.tool_calls[0]["args"]) == {"a", "b"}


def test_token_metrics_come_from_the_workers_own_timing(api):
    chat(api, api.key(), max_tokens=5)
    metrics = requests.get(api.url + "/metrics", timeout=10).text
    for name in ("llmapi_queue_wait_seconds", "llmapi_time_to_first_token_seconds",
                 "llmapi_time_per_output_token_seconds", "llmapi_output_tokens"):
        assert f'{name}_count{{service="tiny"}}' in metrics, name
    assert 'llmapi_output_tokens_bucket{le="8.0",service="tiny"}' in metrics
    # The same figures in `llmapi status`, read from this frontend's /metrics.
    shown = subprocess.run(
        [sys.executable, "-m", "commands.cli", "status", "--config", str(api.stack.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    answers = int(float(re.search(r'llmapi_output_tokens_count\{service="tiny"\} (\S+)', metrics).group(1)))
    line = next(line for line in shown.splitlines() if line.startswith(f"tokens tiny: {answers} answers;"))
    assert "first token mean" in line and "per token mean" in line and "tokens/answer mean" in line
    as_json = subprocess.run(
        [sys.executable, "-m", "commands.cli", "status", "--json", "--config", str(api.stack.config_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert json.loads(as_json)["frontend"]["services"]["tiny"]["output_tokens"]["count"] == answers
