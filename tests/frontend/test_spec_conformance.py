"""Every OpenAI answer this server gives, checked against OpenAI's specification (the
schemas of ``tests/frontend/openai_spec.py``, from its 2.3.0 document) and against our
own response models; and answers that say truthfully why they ended."""

from __future__ import annotations

import copy
import json

import pytest
import requests

from frontend import schemas
from tests.faults.conftest import balanced, sse_events, usage_outcomes
from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama
from tests.frontend import openai_spec as spec
from tests.frontend.conftest import running_api

CHAT = [{"role": "user", "content": "Say something."}]

# The specification gives a streamed text completion the whole object's schema, whose
# finish_reason may not be null; every chunk before the last has none yet (as OpenAI's own
# server streams them), so chunks are checked with that one field relaxed.
COMPLETION_CHUNK = copy.deepcopy(spec.COMPLETION)
_choice = COMPLETION_CHUNK["properties"]["choices"]["items"]
_choice["properties"]["finish_reason"] = {"type": ["string", "null"], "enum": ["stop", "length", "content_filter", None]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama")), build_tiny_encoder(tmp_path_factory.mktemp("encoder"))


def generation(llama):
    return ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
            "--option", "max_new_tokens_limit=4000")


@pytest.fixture(scope="module")
def api(tmp_path_factory, models):
    llama, encoder = models
    workers = (generation(llama), ("embed", "embedding", "--option", f"model={encoder}", "--option", "cpu_threads=1"))
    with running_api(tmp_path_factory.mktemp("spec"), workers=workers, frontend={"request_timeout": 10.0}) as api:
        yield api


def post(api, path, body, secret):
    return requests.post(api.url + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def stream(api, path, body, secret):
    response = requests.post(
        api.url + path, json={**body, "stream": True}, headers={"Authorization": f"Bearer {secret}"}, stream=True,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return sse_events(response.iter_lines())


def test_a_chat_completion_and_its_chunks_match_the_specification(api):
    secret = api.key()
    whole = post(api, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 8, "n": 2}, secret).json()
    spec.validate(whole, spec.CHAT_COMPLETION)
    schemas.ChatCompletion.model_validate(whole)
    assert all(choice["message"]["refusal"] is None for choice in whole["choices"])
    for include_usage in (False, True):
        events = stream(api, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 8,
                                                       "stream_options": {"include_usage": include_usage}}, secret)
        assert events[-1] == "[DONE]"
        for chunk in events[:-1]:
            spec.validate(chunk, spec.CHAT_COMPLETION_CHUNK)
            schemas.ChatCompletionChunk.model_validate(chunk)
        assert ("usage" in events[-2]) is include_usage


def test_a_text_completion_and_its_chunks_match_the_specification(api):
    secret = api.key()
    whole = post(api, "/v1/completions", {"model": "tiny", "prompt": "Once", "max_tokens": 8}, secret).json()
    spec.validate(whole, spec.COMPLETION)
    schemas.Completion.model_validate(whole)
    events = stream(api, "/v1/completions", {"model": "tiny", "prompt": "Once", "max_tokens": 8,
                                             "stream_options": {"include_usage": True}}, secret)
    for chunk in events[:-1]:
        spec.validate(chunk, COMPLETION_CHUNK)
        schemas.Completion.model_validate(chunk)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_in_both_encodings_match_the_specification(api, encoding):
    answer = post(api, "/v1/embeddings", {"model": "embed", "input": ["a", "b"], "encoding_format": encoding}, api.key())
    spec.validate(answer.json(), spec.EMBEDDING_LIST)
    schemas.EmbeddingList.model_validate(answer.json())


def test_the_model_list_and_one_model_match_the_specification(api):
    secret = api.key()
    listed = requests.get(api.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=10).json()
    spec.validate(listed, spec.MODEL_LIST)
    assert {model["id"] for model in listed["data"]} == {"tiny", "embed"}
    one = requests.get(api.url + "/v1/models/tiny", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    spec.validate(one.json(), spec.MODEL)
    missing = requests.get(api.url + "/v1/models/nope", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("post", "/v1/chat/completions", {"model": "tiny", "messages": CHAT}, 401),  # no key
        ("get", "/v1/no/such/path", None, 404),
        ("get", "/v1/models/nope", None, 404),
        ("post", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "temperature": 9}, 400),
        ("post", "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "store": True}, 400),
        ("post", "/v1/completions", {"model": "org/name", "prompt": "a"}, 404),
        ("post", "/v1/embeddings", {"model": "tiny", "input": "a"}, 400),
    ],
)
def test_every_error_matches_the_specification_and_names_its_field(api, method, path, body, status):
    headers = {} if status == 401 else {"Authorization": f"Bearer {api.key()}"}
    response = getattr(requests, method)(api.url + path, json=body, headers=headers, timeout=10)
    assert response.status_code == status
    spec.validate(response.json(), spec.ERROR_RESPONSE)
    error = response.json()["error"]
    if status == 400:
        assert error["param"] in ("temperature", "store", "model")


@pytest.mark.parametrize(
    "extra, accepted",
    [
        ({"tool_choice": "none"}, True),
        ({"modalities": ["text"]}, True),
        ({"store": False}, True),
        ({"service_tier": "default", "user": "u-1", "metadata": {"team": "a"}}, True),
        ({"presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}}, True),
        ({"store": True}, False),
        ({"reasoning_effort": "low"}, False),
        ({"verbosity": "low"}, False),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}, True),
        ({"logprobs": True, "top_logprobs": 2}, True),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, False),
        ({"prediction": {"type": "content", "content": "x"}}, False),
        ({"frobnicate": 1}, False),
    ],
)
def test_fields_with_a_trivial_meaning_are_accepted_and_others_refused_by_name(api, extra, accepted):
    info, secret = api.store.create_key(email="fields@example.org")
    response = post(api, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 2, **extra}, secret)
    if accepted:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400
    assert response.json()["error"]["param"] == next(iter(extra))
    assert api.store.get_key(info.id).used == 0


def test_max_tokens_zero_on_a_completion_answers_nothing_and_says_length(api):
    answer = post(api, "/v1/completions", {"model": "tiny", "prompt": "Once upon", "max_tokens": 0}, api.key())
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["text"] == "" and choice["finish_reason"] == "length"
    assert answer.json()["usage"]["completion_tokens"] == 0 and answer.json()["usage"]["prompt_tokens"] > 0


def test_an_answer_cut_at_its_deadline_is_never_called_whole(tmp_path, models):
    llama, _ = models
    with running_api(tmp_path, workers=(generation(llama),), frontend={"request_timeout": 1.0}) as api:
        info, secret = api.store.create_key(email="deadline@example.org")
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 4000, "temperature": 0}
        whole = post(api, "/v1/chat/completions", body, secret)
        assert whole.status_code == 504 and whole.json()["error"]["code"] == "timeout"
        events = stream(api, "/v1/chat/completions", body, secret)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
        assert all(choice.get("finish_reason") != "stop" for event in events[:-2] for choice in event["choices"])
        legacy = api.post("/api/tiny/", secret, {"text": "go on", "max_new_tokens": 4000})
        assert legacy.status_code == 504
        balanced(api.store, info.id, records=3)
        assert usage_outcomes(api.store, info.id) == [("timeout", False), ("timeout", True), ("timeout", False)]
        # The 504s and the stream's error event (after its 200) are all counted by their code.
        assert 'llmapi_http_errors_total{code="timeout"} 3.0' in api.get("/metrics").text
        assert json.loads(api.post("/api/tiny/", secret, {"text": "hi", "max_new_tokens": 3}).text)["finish_reason"] == "length"
