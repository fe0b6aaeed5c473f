"""The typed worker contract: every HTTP body maps onto one GenerationRequest, every field of
which some endpoint sets, and what the frontend sends is what the worker's decoder reads."""

from __future__ import annotations

import pytest

from broker.contract.embedding import EmbeddingRequest
from broker.contract.generation import GenerationPiece, GenerationRequest, GenerationResult
from broker.errors import InvalidInput
from frontend import schemas
from frontend.errors import ApiError
from frontend.policies.usage import summed_usage, with_every_workers_time
from gpuworker.models.options import GenerationOptions
from gpuworker.models.params import Prompt, generation_params

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
CHAT = {
    "model": "tiny",
    "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}
        ]},
        {"role": "tool", "content": "cold", "tool_call_id": "c1"},
    ],
    "max_completion_tokens": 9,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": "\n\n",
    "seed": 7,
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "weather"}},
    "logprobs": True,
    "top_logprobs": 2,
}
COMPLETION = {
    "model": "tiny",
    "prompt": "Once",
    "max_tokens": 5,
    "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
    "logprobs": 3,
}
RESPONSES = {"model": "tiny", "input": "hi", "instructions": "be brief", "max_output_tokens": 4, "tools": [
    {"type": "function", "name": "weather", "parameters": {"type": "object"}}
], "tool_choice": "required", "text": {"format": {"type": "json_object"}}}


def sent(kind, body, *args):
    """What the frontend puts on the wire for ``body``, as the worker reads it back."""
    return GenerationRequest.from_wire(schemas.parse(kind, body).worker_request(*args).to_wire())


def test_a_chat_body_reaches_the_decoder_field_by_field():
    params = generation_params(sent(schemas.ChatCompletionRequest, CHAT).to_wire(), GenerationOptions())
    assert params.prompt.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
        ]},
        {"role": "tool", "content": "cold", "tool_call_id": "c1"},
    )
    assert (params.max_new_tokens, params.temperature, params.top_p, params.stop, params.seed) == (9, 0.5, 0.9, ("\n\n",), 7)
    assert params.tools is not None and params.tools.choice == "weather" and params.tools.functions == (TOOL,)
    assert params.top_logprobs == 2 and params.json_schema is None


def test_completions_and_responses_bodies_reach_the_decoder():
    completion = generation_params(sent(schemas.CompletionRequest, COMPLETION).to_wire(), GenerationOptions())
    assert completion.prompt == Prompt(text="Once", raw=True)
    assert (completion.max_new_tokens, completion.json_schema, completion.top_logprobs) == (5, SCHEMA, 3)
    conversation = schemas.parse(schemas.ResponsesRequest, RESPONSES).input_items()
    response = generation_params(sent(schemas.ResponsesRequest, RESPONSES, conversation).to_wire(), GenerationOptions())
    assert response.prompt.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    assert response.tools is not None and response.tools.choice == "required"
    assert (response.max_new_tokens, response.json_schema) == (4, {"type": "object"})


def test_every_field_of_the_contract_is_set_by_some_endpoint():
    conversation = schemas.parse(schemas.ResponsesRequest, RESPONSES).input_items()
    requests = [
        sent(schemas.ChatCompletionRequest, CHAT),
        sent(schemas.CompletionRequest, COMPLETION),
        sent(schemas.ResponsesRequest, RESPONSES, conversation),
    ]
    set_by_http = set().union(*(request.model_fields_set for request in requests))
    # `text` and `max_new_tokens` are what the Django server's clients send, through /api/;
    # `key_limits` comes from the key's admission, not from a body.
    assert set(GenerationRequest.model_fields) - set_by_http == {"text", "max_new_tokens", "key_limits"}


def test_a_body_that_does_not_fit_the_contract_is_a_400_before_admission():
    call = {"id": "c", "type": "function", "function": {"name": "weather", "arguments": "{not json"}}
    body = {"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [call]}]}
    with pytest.raises(ApiError) as refused:
        schemas.parse(schemas.ChatCompletionRequest, body).worker_request()
    assert refused.value.status == 400 and refused.value.param == "messages"
    assert "arguments must be a JSON object" in refused.value.message


def test_embedding_bodies_map_onto_the_embedding_contract():
    texts = EmbeddingRequest.from_wire(schemas.parse(schemas.EmbeddingRequest, {"model": "e", "input": "a"}).worker_request())
    assert (texts.texts, texts.count) == (["a"], 1)
    ids = schemas.parse(schemas.EmbeddingRequest, {"model": "e", "input": [[1, 2], [3]]}).worker_request()
    assert EmbeddingRequest.from_wire(ids).input_ids == [[1, 2], [3]]
    with pytest.raises(InvalidInput, match="exactly one of 'input'"):
        EmbeddingRequest.from_wire({"input": "a", "input_ids": [[1]]})


def test_a_null_field_takes_its_default_as_json_clients_expect():
    sent_nulls = {"text": "a", "logprobs": None, "tool_choice": None, "key_limits": None, "stop": None}
    assert GenerationRequest.from_wire(sent_nulls) == GenerationRequest.from_wire({"text": "a"})
    assert GenerationRequest.from_wire({"prompt": "a", "logprobs": 3}).logprobs  # older completions clients


def test_an_answer_field_in_an_unexpected_shape_loses_only_itself():
    usage = {"prompt_tokens": 2, "completion_tokens": 3}
    for odd in ({"output": ["a"]}, {"timing": {"first_token_ms": 3}}, {"finish_reason": 1}, {"output": None}):
        read = GenerationResult.read({"output": "x", "usage": usage, **odd})
        assert (read.usage.completion_tokens, read.usage.prompt_tokens) == (3, 2)
    assert GenerationResult.read({"output": "x", "interrupted": True}).interrupted  # any true value is a cut
    assert GenerationResult.read("not an object") == GenerationResult()


def test_the_usage_record_sums_the_choices_that_carry_usage():
    counted = {"usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    for results in ([counted, {"output": ""}], [{"output": ""}, counted]):
        summed = summed_usage(list(map(GenerationResult.read, results)))
        assert summed == {"prompt_tokens": 5, "completion_tokens": 3, "gpu_seconds": None}
    assert summed_usage([GenerationResult.read({"output": "no usage"})]) == {}


def test_the_usage_record_adds_the_gpu_time_of_every_choice_and_drops_a_bad_one():
    timed = [{"usage": {"prompt_tokens": 5, "completion_tokens": n, "gpu_seconds": n / 4}} for n in (1, 2)]
    assert summed_usage(list(map(GenerationResult.read, timed)))["gpu_seconds"] == 0.75
    for bad in (-1, "1", float("nan")):
        read = GenerationResult.read({"usage": {"prompt_tokens": 5, "gpu_seconds": bad}})
        assert summed_usage([read]) == {"prompt_tokens": 5, "completion_tokens": None, "gpu_seconds": None}


def test_a_migrated_streams_device_time_is_every_workers_last_report_added():
    def piece(seconds: float, resumed: int | None = None) -> GenerationPiece:
        return GenerationPiece.read({"usage": {"gpu_seconds": seconds, "resumed_tokens": resumed}})

    first, second, third = [piece(0.1), piece(0.4)], [piece(0.05, 7), piece(0.2, 7)], [piece(0.3, 12)]
    summary = GenerationResult.read({"usage": {"prompt_tokens": 5, "completion_tokens": 20, "gpu_seconds": 0.3,
                                               "resumed_tokens": 12}})
    counted = with_every_workers_time(summary.usage, [*first, *second, *third, summary])
    assert counted == {"prompt_tokens": 5, "completion_tokens": 20, "gpu_seconds": pytest.approx(0.9),
                       "resumed_tokens": 12}
    # A stream that never moved keeps its usage as sent; a later worker that does not say where
    # it went on from is told apart by its time starting again.
    assert with_every_workers_time(summary.usage, [*third, summary])["gpu_seconds"] == 0.3
    assert with_every_workers_time(piece(0.2).usage, [*first, piece(0.05), piece(0.2)])["gpu_seconds"] == (
        pytest.approx(0.6))


def test_a_bad_count_of_resumed_tokens_is_dropped_and_the_usage_beside_it_kept():
    for bad in (-1, "3", 2.5, True):
        read = GenerationResult.read({"usage": {"prompt_tokens": 5, "gpu_seconds": 0.5, "resumed_tokens": bad}})
        assert (read.usage.resumed_tokens, summed_usage([read])["gpu_seconds"]) == (None, 0.5)


def test_a_first_token_time_no_record_could_hold_is_left_unknown_rather_than_losing_the_record():
    from frontend.policies.base import Ending
    from frontend.policies.usage import UsageRecords

    records = UsageRecords(None, timeout=5.0)  # type: ignore[arg-type]  # only its timing is read here

    def first_token(first_token_ms: float) -> float | None:
        timing = {"deadline_left_ms": 5000.0, "first_token_ms": first_token_ms, "decode_ms": 1.0}
        return records._first_token(Ending("ok", True, result={"output": "x", "timing": timing}))

    assert first_token(20.0) == 0.02
    assert first_token(-6000.0) is None and first_token(float("inf")) is None
