"""A sweep of malformed and hostile requests across every route: none is answered 5xx or
with anything but JSON, and each one's charge follows the rule (charged only when admitted
and answered, or refused by the algorithm for the caller's own input)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama
from tests.frontend.conftest import running_api

CHAT = [{"role": "user", "content": "hi"}]

BODIES = [
    b"", b"{", b"[]", b"null", b"1", b'"text"', b"{}", b"\xff\xfe\x00", b'{"text": "a"} trailing',
    b"[" * 5000 + b"]" * 5000, b'{"a": ' * 3000 + b"1" + b"}" * 3000, b'{"text": NaN}', b'{"text": Infinity}',
    b'{"text": "a\\ud800"}', b'{"text": "\\u0000"}', b'{"text": 1e999}',
]
API_BODIES = [
    {"text": 1}, {"text": None}, {"text": ["a"]}, {"text": {"a": 1}}, {"text": True}, {"txt": "a"},
    {"text": "a", "sleep_ms": -1}, {"text": "a" * 200_001},
]
CHAT_BODIES = [
    {"messages": CHAT}, {"model": "tiny"}, {"model": 1, "messages": CHAT}, {"model": "", "messages": CHAT},
    {"model": "tiny", "messages": []}, {"model": "tiny", "messages": "hi"}, {"model": "tiny", "messages": [{}]},
    {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, {"model": "tiny", "messages": [{"role": "user"}]},
    {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
    {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"model": "tiny", "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
    {"model": "tiny", "messages": CHAT, "max_tokens": -1}, {"model": "tiny", "messages": CHAT, "max_tokens": "10"},
    {"model": "tiny", "messages": CHAT, "max_tokens": 10**12}, {"model": "tiny", "messages": CHAT, "temperature": -1},
    {"model": "tiny", "messages": CHAT, "temperature": "hot"}, {"model": "tiny", "messages": CHAT, "top_p": 0},
    {"model": "tiny", "messages": CHAT, "top_p": 2}, {"model": "tiny", "messages": CHAT, "n": 0},
    {"model": "tiny", "messages": CHAT, "n": 1000}, {"model": "tiny", "messages": CHAT, "stop": ["a"] * 5},
    {"model": "tiny", "messages": CHAT, "stop": [""]}, {"model": "tiny", "messages": CHAT, "stop": 3},
    {"model": "tiny", "messages": CHAT, "stream": "yes"}, {"model": "tiny", "messages": CHAT, "stream_options": "x"},
    {"model": "tiny", "messages": CHAT, "stream_options": {"include_usage": 3}},
    {"model": "tiny", "messages": CHAT, "seed": -1}, {"model": "tiny", "messages": CHAT, "seed": 2**64},
    {"model": "tiny", "messages": CHAT, "logprobs": True}, {"model": "tiny", "messages": CHAT, "top_logprobs": 3},
    {"model": "tiny", "messages": CHAT, "tools": [{"type": "function"}]},
    {"model": "tiny", "messages": CHAT, "response_format": {"type": "json_object"}},
    {"model": "tiny", "messages": CHAT, "presence_penalty": 1}, {"model": "tiny", "messages": CHAT, "logit_bias": {"1": 5}},
    {"model": "tiny", "messages": CHAT, "unknown_field": 1}, {"model": "tiny", "messages": CHAT, "store": True},
    {"model": "tiny", "messages": CHAT, "max_tokens": 5, "max_completion_tokens": 6},
    {"model": "tiny", "messages": CHAT, "max_tokens": 100_000}, {"model": "org/x", "messages": CHAT},
    {"model": "tiny", "messages": CHAT, "metadata": {"a": 1}}, {"model": "echo", "messages": CHAT},
]
COMPLETION_BODIES = [
    {"model": "tiny"}, {"model": "tiny", "prompt": ["a", "b"]}, {"model": "tiny", "prompt": 3},
    {"model": "tiny", "prompt": [1, 2, 3]}, {"model": "tiny", "prompt": "a", "echo": True},
    {"model": "tiny", "prompt": "a", "best_of": 2}, {"model": "tiny", "prompt": "a", "suffix": "x"},
    {"model": "tiny", "prompt": "a", "logprobs": 2}, {"model": "tiny", "prompt": "a", "n": "2"},
    {"model": "tiny", "prompt": "a", "max_tokens": 100_000}, {"model": "tiny", "prompt": ""},
]
EMBEDDING_BODIES = [
    {"model": "embed"}, {"model": "embed", "input": []}, {"model": "embed", "input": [1, 2]},
    {"model": "embed", "input": ["a", 3]}, {"model": "embed", "input": "a", "encoding_format": "hex"},
    {"model": "embed", "input": "a", "dimensions": 8}, {"input": "a"}, {"model": "embed", "input": ["a"] * 3000},
    {"model": "tiny", "input": "a"}, {"model": "embed", "input": [""] * 300},
]
AUTHS = [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer " + "a" * 300, "Bearer llmapi_bad",
         "bearer llmapi_" + "A" * 49, "Bearer two tokens", "Token x"]
ROUTES = ["/api/", "/analyze/", "/api/echo/", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


def cases():
    for route in ROUTES:
        for body in BODIES:
            yield "POST", route, body, {}
        yield "GET", route, None, {}
        yield "PUT", route, b"{}", {}
    for body in API_BODIES:
        yield "POST", "/api/echo/", json.dumps(body).encode(), {}
    for route, bodies in (("/v1/chat/completions", CHAT_BODIES), ("/v1/completions", COMPLETION_BODIES),
                          ("/v1/embeddings", EMBEDDING_BODIES)):
        for body in bodies:
            yield "POST", route, json.dumps(body).encode(), {}
    for auth in AUTHS:
        yield "POST", "/api/echo/", b'{"text": "a"}', {"Authorization": auth} if auth else {"Authorization": None}
    for path in ("/api/bad name/", "/api/" + "x" * 150 + "/", "/v1/nothing", "/nothing", "/usage/?since=yesterday",
                 "/v1/models/" + "x" * 300):
        yield "GET" if "usage" in path or "models" in path else "POST", path, b'{"text": "a"}', {}
    yield "POST", "/api/echo/", b'{"text": "a"}', {"Idempotency-Key": "\x7f"}
    yield "POST", "/api/echo/", b'{"text": "a"}', {"Idempotency-Key": "k" * 300}
    yield "POST", "/api/echo/", b'{"text": "a"}', {"Content-Length": "99999999"}


ALL_CASES = list(cases())


def test_the_sweep_is_at_least_150_cases_across_every_route():
    assert len(ALL_CASES) >= 150
    assert {route for _, route, _, _ in ALL_CASES} >= set(ROUTES)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    llama = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    encoder = build_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    workers = (
        ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
         "--option", "default_max_new_tokens=2", "--option", "max_new_tokens_limit=50"),
        ("embed", "embedding", "--option", f"model={encoder}", "--option", "cpu_threads=1", "--option", "max_inputs=256"),
        ("echo", "echo"),
        ("default", "echo"),
    )
    with running_api(tmp_path_factory.mktemp("sweep"), workers=workers, frontend={"max_body_bytes": 1 << 20}) as api:
        yield api


def test_no_malformed_request_gets_a_5xx_or_a_body_that_is_not_json_and_each_is_charged_by_the_rule(api):
    info, secret = api.store.create_key(email="sweep@example.org")
    surprises = []
    for method, path, body, headers in ALL_CASES:
        sent = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json", **headers}
        sent = {name: value for name, value in sent.items() if value is not None}
        before = api.store.get_key(info.id).used
        try:
            response = requests.request(method, api.url + path, data=body, headers=sent, timeout=30)
        except requests.ConnectionError:
            surprises.append((method, path, body[:40] if body else body, "connection closed"))
            continue
        used = api.store.get_key(info.id).used - before
        try:
            answer = response.json()
        except ValueError:
            surprises.append((method, path, body, response.status_code, response.headers.get("Content-Type"), "not JSON"))
            continue
        charged = response.status_code == 200 or (isinstance(answer, dict) and _code(answer) == "invalid_input")
        if response.status_code >= 500 or used != int(charged):
            surprises.append((method, path, body[:40] if body else body, response.status_code, answer, used))
    assert not surprises, surprises[:5]


def _code(answer: dict) -> str | None:
    error = answer.get("error")
    return error.get("code") if isinstance(error, dict) else None
