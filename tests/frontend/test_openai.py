"""The official ``openai`` Python package against the live stack, with tiny models."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from broker.client import Client
from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama
from tests.frontend.conftest import running_api
from tests.harness import wait_until


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama")), build_tiny_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def api(tmp_path_factory, model_dirs):
    """One stack for the module: loading models is the slow part."""
    llama, encoder = model_dirs
    with running_api(
        tmp_path_factory.mktemp("openai-stack"),
        workers=(
            ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
             "--option", "max_new_tokens_limit=4000"),
            ("embed", "embedding", "--option", f"model={encoder}", "--option", "cpu_threads=1"),
        ),
        frontend={"request_timeout": 30.0},
    ) as api:
        yield api


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_services_the_key_may_use(api):
    everything = api.openai(timeout=30, secret=api.key())
    assert {m.id for m in everything.models.list()} == {"tiny", "embed"}
    restricted = api.openai(timeout=30, secret=api.key(services=["tiny"]))
    assert [m.id for m in restricted.models.list()] == ["tiny"]


def test_a_chat_completion_has_the_openai_shape_and_token_counts(api):
    response = api.openai(timeout=30, secret=api.key()).chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=12, temperature=0
    )
    assert response.object == "chat.completion" and response.model == "tiny"
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0 and 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_a_text_completion_has_the_openai_shape(api):
    response = api.openai(timeout=30, secret=api.key()).completions.create(model="tiny", prompt="Once upon", max_tokens=8, temperature=0)
    assert response.object == "text_completion" and response.choices[0].text
    assert response.usage.completion_tokens <= 8


def test_streamed_chat_chunks_join_to_the_greedy_answer(api):
    client = api.openai(timeout=30, secret=api.key())
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_streamed_text_completion_joins_to_the_greedy_answer(api):
    client = api.openai(timeout=30, secret=api.key())
    whole = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, temperature=0)
    pieces = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text


def test_embeddings_work_with_the_clients_default_base64_encoding(api):
    client = api.openai(timeout=30, secret=api.key())
    response = client.embeddings.create(model="embed", input=["first text", "second text"])
    assert [d.index for d in response.data] == [0, 1]
    vector = response.data[0].embedding
    assert len(vector) > 8 and abs(sum(x * x for x in vector) - 1) < 1e-3
    as_floats = client.embeddings.create(model="embed", input="first text", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(vector, abs=1e-6)
    assert response.usage.prompt_tokens > 0


def test_each_error_maps_to_the_clients_exception_class(api):
    good = api.openai(timeout=30, secret=api.key())
    with pytest.raises(openai.AuthenticationError):
        api.openai(timeout=30, secret="llmapi_not_a_key").models.list()
    with pytest.raises(openai.PermissionDeniedError):
        api.openai(timeout=30, secret=api.key(services=["embed"])).chat.completions.create(model="tiny", messages=CHAT)
    with pytest.raises(openai.NotFoundError):
        good.chat.completions.create(model="no-such-model", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as refused:
        good.chat.completions.create(model="tiny", messages=CHAT, n=500)
    assert "'n' must be at most 16" in refused.value.message and refused.value.param == "n"
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model="tiny", messages=CHAT, max_tokens=10**9)
    with pytest.raises(openai.BadRequestError):
        good.chat.completions.create(model="tiny", messages=[])
    limited = api.openai(timeout=30, secret=api.key(max_requests=1))
    limited.completions.create(model="tiny", prompt="a", max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        limited.completions.create(model="tiny", prompt="a", max_tokens=1)


def test_an_error_body_has_openais_fields(api):
    response = requests.post(api.url + "/v1/chat/completions", json={"model": "tiny", "messages": CHAT}, timeout=10)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["type"] == "authentication_error"


def test_a_client_that_leaves_mid_stream_frees_the_worker(api):
    client = api.openai(timeout=30, secret=api.key())
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4000, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    left = time.monotonic()
    with Client(api.stack.endpoint) as bus:
        wait_until(lambda: bus.service_info("tiny")["idle"] == 1, what="the worker to be idle")
    assert time.monotonic() - left < 5
    answer = client.completions.create(model="tiny", prompt="again", max_tokens=3, temperature=0)
    assert answer.choices[0].text is not None


def test_a_retried_request_with_an_idempotency_key_is_charged_once(api):
    info, secret = api.store.create_key(email="retry@example.com", max_requests=5)
    client = api.openai(timeout=30, secret=secret)
    for _ in range(3):
        client.completions.create(
            model="tiny", prompt="Once", max_tokens=2, temperature=0, extra_headers={"Idempotency-Key": "job-7"}
        )
    assert api.store.get_key(info.id).used == 1


@pytest.mark.parametrize(
    "model, refusal",
    [
        ("modèle", openai.NotFoundError),
        ("x" * 200, openai.NotFoundError),
        ("../etc", openai.NotFoundError),
        ("org/name", openai.NotFoundError),
        ("ft:tiny:acme::abc123", openai.NotFoundError),
        ("no-such-model", openai.NotFoundError),
        ("", openai.BadRequestError),
    ],
)
def test_a_model_nobody_serves_is_404_model_not_found_and_not_charged(api, model, refusal):
    info, secret = api.store.create_key(email="names@example.com", max_requests=5)
    with pytest.raises(refusal) as refused:
        api.openai(timeout=30, secret=secret).completions.create(model=model, prompt="a", max_tokens=1)
    assert refused.value.code == ("model_not_found" if refusal is openai.NotFoundError else "invalid_value")
    assert refused.value.param == "model"
    assert api.store.get_key(info.id).used == 0


def test_n_choices_come_back_as_rows_of_one_batch_and_count_as_one_request(api):
    info, secret = api.store.create_key(email="choices@example.com", max_requests=5)
    client = api.openai(timeout=30, secret=secret)
    alone = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0)
    several = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=12, temperature=0, n=3)
    assert [choice.index for choice in several.choices] == [0, 1, 2]
    assert {choice.message.content for choice in several.choices} == {alone.choices[0].message.content}
    assert several.usage.completion_tokens == 3 * alone.usage.completion_tokens
    assert several.usage.prompt_tokens == alone.usage.prompt_tokens
    sampled = client.completions.create(model="tiny", prompt="Once", max_tokens=16, temperature=1.0, seed=7, n=4)
    assert len({choice.text for choice in sampled.choices}) > 1  # each choice has its own seed
    assert api.store.get_key(info.id).used == 3


def test_n_streamed_choices_arrive_interleaved_each_with_its_index_and_finish(api):
    client = api.openai(timeout=30, secret=api.key())
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=20, temperature=0)
    texts = {0: "", 1: ""}
    finished = {}
    usage = None
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=20, temperature=0, n=2, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert texts == {0: whole.choices[0].message.content, 1: whole.choices[0].message.content}
    assert finished == {0: "length", 1: "length"}
    assert usage.completion_tokens == 2 * whole.usage.completion_tokens


def test_round_trips_of_what_the_server_sends_and_nulls_are_accepted(api):
    secret = api.key()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "refusal": None},
                {"role": "user", "content": "ok"}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 2, "stream": None, "moderation": None,
            "stream_options": None}
    assert api.post("/v1/chat/completions", secret, body).status_code == 200
    embedded = api.post("/v1/embeddings", secret, {"model": "embed", "input": "x", "encoding_format": None})
    assert isinstance(embedded.json()["data"][0]["embedding"], list)  # null: the default, floats


@pytest.mark.parametrize(
    "body, param",
    [
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 4001}, "max_tokens"),  # over the worker's max_new_tokens_limit
        ({"stop": ["s" * 65]}, "stop"),  # over its max_stop_chars
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_a_400_names_the_field_and_what_a_worker_would_refuse_is_refused_uncharged(api, body, param):
    info, secret = api.store.create_key(email="fields@example.org")
    response = api.post("/v1/chat/completions", secret, {"model": "tiny", "messages": CHAT, **body})
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert api.store.get_key(info.id).used == 0


def test_a_forced_tool_call_cut_by_the_budget_ends_as_length_with_no_half_call(api):
    add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
    body = {"model": "tiny", "messages": CHAT, "tools": [add], "tool_choice": "required", "max_tokens": 3}
    choice = api.post("/v1/chat/completions", api.key(), body).json()["choices"][0]
    assert choice["finish_reason"] == "length" and not choice["message"].get("tool_calls")
    assert not choice["message"]["content"]
    streamed = requests.post(api.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30,
                             headers={"Authorization": f"Bearer {api.key()}"}, stream=True)
    text = b"".join(streamed.iter_content(None))
    assert b"<tool_call>" not in text and b'"finish_reason": "length"' in text


def test_with_usage_asked_for_every_chunk_has_usage_null_but_the_last(api):
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with requests.post(api.url + "/v1/chat/completions", json=body, timeout=30, stream=True,
                       headers={"Authorization": f"Bearer {api.key()}"}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith(b"data: {")]
    assert all(chunk["usage"] is None for chunk in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] == 4


def test_embeddings_take_token_ids_as_openai_does_read_as_the_models_own(api, model_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs[1])
    ids = [tokenizer("Paris", add_special_tokens=False)["input_ids"], tokenizer("Rome", add_special_tokens=False)["input_ids"]]
    client = api.openai(timeout=30, secret=api.key())
    as_text = client.embeddings.create(model="embed", input=["Paris", "Rome"])
    as_ids = client.embeddings.create(model="embed", input=ids)
    one = client.embeddings.create(model="embed", input=ids[0])
    assert [d.embedding for d in as_ids.data] == [d.embedding for d in as_text.data]
    assert one.data[0].embedding == as_text.data[0].embedding
    refused = api.post("/v1/embeddings", api.key(), {"model": "embed", "input": [[10**6]]})
    assert refused.status_code == 400


def test_max_prompt_tokens_is_judged_by_the_worker_on_the_prompt_it_renders(api):
    long_chat = [{"role": "user", "content": "Paris " * 200}]
    limited = api.openai(timeout=30, secret=api.key(max_prompt_tokens=100))
    with pytest.raises(openai.BadRequestError) as refused:
        limited.chat.completions.create(model="tiny", messages=long_chat, max_tokens=2)
    assert "this key may send at most 100" in str(refused.value)
    short = limited.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, temperature=0)
    assert 0 < short.usage.prompt_tokens <= 100
    unlimited = api.openai(timeout=30, secret=api.key()).chat.completions.create(model="tiny", messages=long_chat, max_tokens=2)
    assert unlimited.usage.prompt_tokens > 100
