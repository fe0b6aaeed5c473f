"""The Responses API through real HTTP, with the OpenAI SDK as its users call it: plain and
streamed answers, tools and their round trip, structured output, kept responses continued with
``previous_response_id``, read and deleted by their key alone, and every refusal naming its field."""

from __future__ import annotations

import json

import openai
import pydantic
import pytest
import requests
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from frontend.schemas import ResponseObject
from tests.faults.conftest import balanced, sse_events
from tests.fixtures.tiny_model import build_tiny_llama
from tests.frontend.conftest import running_api

pytest.importorskip("transformers")

ADD = {"type": "function", "name": "add", "description": "Add two small numbers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a", "b"], "additionalProperties": False}}


class Place(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str = pydantic.Field(max_length=12)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    llama = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    worker = ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
              "--option", "max_new_tokens_limit=400")
    with running_api(tmp_path_factory.mktemp("responses"), workers=(worker,)) as api:
        yield api


def post(api, secret: str, **body) -> requests.Response:
    return requests.post(api.url + "/v1/responses", json={"model": "tiny", **body},
                         headers={"Authorization": f"Bearer {secret}"}, timeout=60)


# The OpenAI SDK's types are generated from OpenAI's OpenAPI document: validated strictly against
# them, what this server sends is what that document describes.
OFFICIAL_RESPONSE = TypeAdapter(Response)
OFFICIAL_EVENT = TypeAdapter(ResponseStreamEvent)


def official(adapter: TypeAdapter, value: dict) -> None:
    """Raises when ``value`` lacks a field the document requires, or has one of another type."""
    adapter.validate_python(value)


def test_every_response_and_event_fits_the_documented_objects(api):
    secret = api.key()
    whole = post(api, secret, input="Hello", tools=[ADD], max_output_tokens=6)
    forced = post(api, secret, input="Add.", tools=[ADD], tool_choice="required", max_output_tokens=60)
    for answer in (whole.json(), forced.json()):
        ResponseObject.model_validate(answer)
        official(OFFICIAL_RESPONSE, answer)
    for body in ({"input": "Hi", "max_output_tokens": 4}, {"input": "Add.", "tools": [ADD], "tool_choice": "required"}):
        with requests.post(api.url + "/v1/responses", stream=True, timeout=60,
                           json={"model": "tiny", "stream": True, "max_output_tokens": 60, **body},
                           headers={"Authorization": f"Bearer {secret}"}) as response:
            events = sse_events(response.iter_lines())
        for event in events:
            official(OFFICIAL_EVENT, event)
            if "response" in event:
                ResponseObject.model_validate(event["response"])
    kept = requests.get(api.url + "/v1/responses/" + whole.json()["id"], headers={"Authorization": f"Bearer {secret}"},
                        timeout=30)
    assert kept.json() == whole.json()


def test_a_plain_answer_has_its_text_usage_and_why_it_ended(api):
    info, secret = api.store.create_key(email="plain@example.org")
    response = api.openai(secret).responses.create(model="tiny", input="Tell me about Paris.",
                                                        instructions="Be brief.", max_output_tokens=12)
    assert response.object == "response" and response.id.startswith("resp_") and response.output_text
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    (message,) = response.output
    assert (message.type, message.role, message.content[0].type) == ("message", "assistant", "output_text")
    assert response.usage.output_tokens == 12 and response.usage.input_tokens > 5
    assert response.usage.total_tokens == response.usage.input_tokens + 12
    state = balanced(api.store, info.id, records=1)
    assert state.used == 1 and state.tokens_used == response.usage.total_tokens


def test_a_streamed_answer_sends_the_typed_events_and_its_deltas_join_to_the_answer(api):
    secret = api.key()
    whole = post(api, secret, input="Tell me about Paris.", max_output_tokens=16, store=False).json()
    with requests.post(api.url + "/v1/responses", stream=True, timeout=60,
                       json={"model": "tiny", "input": "Tell me about Paris.", "max_output_tokens": 16, "stream": True,
                             "store": False},
                       headers={"Authorization": f"Bearer {secret}"}) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    events = sse_events(lines)
    kinds = [event["type"] for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert [line[7:].decode() for line in lines if line.startswith(b"event: ")] == kinds
    text = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert text == events[-1]["response"]["output"][0]["content"][0]["text"] == whole["output"][0]["content"][0]["text"]


def test_the_sdks_stream_reads_every_event(api):
    # The tiny model never ends an answer itself: its streams end incomplete, as OpenAI's do.
    with api.openai().responses.stream(model="tiny", input="Hello", max_output_tokens=8) as stream:
        events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    final = events[-1]
    assert final.type == "response.incomplete" and final.response.usage.output_tokens == 8
    assert "".join(deltas) == final.response.output_text


def test_a_kept_response_is_continued_read_and_deleted_by_its_key_alone(api):
    secret, other = api.key(), api.key()
    client = api.openai(secret)
    first = client.responses.create(model="tiny", input="My name is Ana.", max_output_tokens=6)
    second = client.responses.create(model="tiny", input="What is my name?", max_output_tokens=6,
                                     previous_response_id=first.id)
    # The second's prompt is the first conversation (its input and answer) and its own input.
    assert second.usage.input_tokens > first.usage.input_tokens + 6 and second.previous_response_id == first.id
    assert client.responses.retrieve(first.id).output_text == first.output_text
    for foreign in (api.openai(other).responses.retrieve, api.openai(other).responses.delete):
        with pytest.raises(openai.NotFoundError):
            foreign(first.id)
    refused = post(api, other, input="x", previous_response_id=first.id)
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "previous_response_id"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unkept = client.responses.create(model="tiny", input="Forget me.", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_a_forced_function_call_round_trip(api):
    client = api.openai()
    first = client.responses.create(model="tiny", input="Add two numbers.", tools=[ADD], tool_choice="required")
    (call,) = first.output
    arguments = json.loads(call.arguments)
    assert call.type == "function_call" and call.name == "add" and set(arguments) == {"a", "b"}
    output = {"type": "function_call_output", "call_id": call.call_id, "output": str(arguments["a"] + arguments["b"])}
    second = client.responses.create(model="tiny", input=[output], previous_response_id=first.id, tools=[ADD],
                                     max_output_tokens=5)
    assert second.output[0].type in ("message", "function_call") and second.usage.input_tokens > first.usage.input_tokens
    # The same conversation sent whole, as agents that keep their own history do.
    history = [{"role": "user", "content": "Add two numbers."}, call.model_dump(exclude_none=True), output]
    again = client.responses.create(model="tiny", input=history, tools=[ADD], max_output_tokens=5, store=False)
    assert again.usage.input_tokens == second.usage.input_tokens


def test_a_forced_call_cut_short_by_the_budget_ends_incomplete_with_no_half_call(api):
    response = post(api, api.key(), input="Add.", tools=[ADD], tool_choice="required", max_output_tokens=3).json()
    assert (response["status"], response["output"]) == ("incomplete", [])


def test_structured_output_parses_as_its_schema(api):
    parsed = api.openai().responses.parse(model="tiny", input="Where is the Eiffel Tower?", text_format=Place,
                                             temperature=1.0, max_output_tokens=200)
    assert isinstance(parsed.output_parsed, Place)


@pytest.mark.parametrize(
    "field, value, param",
    [
        ("background", True, "background"),
        ("tools", [{"type": "web_search"}], "tools"),
        ("reasoning", {"effort": "high"}, "reasoning"),
        ("include", ["reasoning.encrypted_content"], "include"),
        ("tool_choice", "required", "tool_choice"),
        ("text", {"format": {"type": "json_schema", "name": "x"}}, "text"),
    ],
)
def test_what_it_does_not_serve_is_refused_before_admission_naming_the_field(api, field, value, param):
    info, secret = api.store.create_key(email=f"{field}@example.org")
    response = post(api, secret, input="x", **{field: value})
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert api.store.get_key(info.id).used == 0
