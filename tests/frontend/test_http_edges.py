"""The HTTP API's edges: what a strict client, a browser and a careless one meet, through real HTTP."""

from __future__ import annotations

import socket

import pytest
import requests

from broker.errors import InternalError
from frontend import errors
from tests.fixtures.tiny_model import build_tiny_encoder, build_tiny_llama
from tests.frontend.conftest import running_api

ORIGIN = "https://app.example.org"
LIMIT = 200


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    llama = build_tiny_llama(tmp_path_factory.mktemp("llama"))
    encoder = build_tiny_encoder(tmp_path_factory.mktemp("encoder"))
    workers = (
        ("tiny", "text-generation", "--option", f"model={llama}", "--option", "cpu_threads=1",
         "--option", "default_max_new_tokens=4"),
        ("embed", "embedding", "--option", f"model={encoder}", "--option", "cpu_threads=1"),
        ("echo", "echo"),
        ("legacy", "tests.fixtures.django_style_algorithm"),
    )
    with running_api(
        tmp_path_factory.mktemp("edges"), workers=workers,
        frontend={"max_text_chars": LIMIT, "cors_origins": [ORIGIN]},
    ) as api:
        yield api


def call(api, method, path, secret=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    return requests.request(method, api.url + path, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/echo/", b'{"text": "a\\ud800"}'),
        ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff b"}]}'),
    ],
)
def test_a_lone_surrogate_is_a_400_not_a_500_and_costs_nothing(api, path, body):
    info, secret = api.store.create_key(email="surrogate@example.org")
    response = call(api, "POST", path, secret, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"]
    assert api.store.get_key(info.id).used == 0


TOOL_WITH_RAW_SURROGATE = (
    b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
    b'"function": {"name": "f", "description": "\xed\xa0\x80", "parameters": {"type": "object"}}}]}'
)


@pytest.mark.parametrize(
    "path, body",
    [("/api/echo/", b'{"text": "\xed\xa0\x80"}'), ("/v1/chat/completions", TOOL_WITH_RAW_SURROGATE)],
)
def test_the_utf8_bytes_of_a_lone_surrogate_are_a_400_before_admission_and_cost_nothing(api, path, body):
    info, secret = api.store.create_key(email="raw-surrogate@example.org")
    response = call(api, "POST", path, secret, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"].endswith("not valid UTF-8")
    assert api.store.get_key(info.id).used == 0


def test_a_valid_surrogate_pair_is_one_character_and_served(api):
    response = call(api, "POST", "/api/echo/", api.key(), data=b'{"text": "smile \\ud83d\\ude00"}')
    assert response.status_code == 200 and response.json()["message"] == "smile \U0001f600"


def test_a_method_not_allowed_names_the_allowed_ones_with_a_request_id(api):
    response = call(api, "DELETE", "/v1/chat/completions", api.key())
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert response.json()["error"]["code"] == "method_not_allowed" and response.headers["X-Request-Id"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x" * (LIMIT + 1)}]}, "messages"),
        ("/v1/completions", {"model": "tiny", "prompt": "x" * (LIMIT + 1)}, "prompt"),
        ("/v1/embeddings", {"model": "embed", "input": ["x" * LIMIT, "y"]}, "input"),
        ("/api/tiny/", {"text": "x" * (LIMIT + 1)}, None),
    ],
)
def test_the_text_limit_holds_on_every_route_before_admission(api, path, body, param):
    info, secret = api.store.create_key(email="long@example.org")
    response = call(api, "POST", path, secret, json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "text_too_long"
    if param is not None:
        assert response.json()["error"]["param"] == param
    assert api.store.get_key(info.id).used == 0


def test_models_lists_only_live_services_that_serve_an_openai_route(api):
    listed = call(api, "GET", "/v1/models", api.key()).json()
    assert {model["id"] for model in listed["data"]} == {"tiny", "embed"}


@pytest.mark.parametrize(
    "path, body, complaint",
    [
        ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}, "does not serve chat"),
        ("/v1/completions", {"model": "legacy", "prompt": "hi"}, "does not serve text completions"),
        ("/v1/embeddings", {"model": "tiny", "input": "hi"}, "does not serve embeddings"),
        ("/v1/chat/completions", {"model": "embed", "messages": [{"role": "user", "content": "hi"}]}, "serves: embedding"),
    ],
)
def test_a_route_a_service_cannot_serve_is_refused_before_admission(api, path, body, complaint):
    info, secret = api.store.create_key(email="capable@example.org")
    response = call(api, "POST", path, secret, json=body)
    assert response.status_code == 400 and complaint in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "model_not_supported"
    assert api.store.get_key(info.id).used == 0


def test_a_cors_preflight_from_an_allowed_origin_is_answered_without_a_key(api):
    preflight = call(api, "OPTIONS", "/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    served = call(api, "POST", "/api/echo/", api.key(), json={"text": "hi"}, headers={"Origin": ORIGIN})
    assert served.headers["Access-Control-Allow-Origin"] == ORIGIN
    stranger = call(api, "OPTIONS", "/v1/chat/completions", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_the_openai_browser_sdks_headers_are_allowed_by_the_preflight(api):
    asked = "authorization, content-type, x-stainless-os, x-stainless-retry-count, openai-project, x-evil"
    preflight = call(api, "OPTIONS", "/v1/responses", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked})
    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "x-stainless-os", "x-stainless-retry-count", "openai-project"} <= allowed
    assert "x-evil" not in allowed


def test_an_internal_error_has_one_code_everywhere():
    assert errors.from_bus(InternalError("boom")).code == errors.INTERNAL_ERROR == "internal_error"


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/api/echo/?q=" + "x" * 70_000, {}, 414, "uri_too_long"),
        ("/nowhere/" + "x" * 70_000, {}, 414, "uri_too_long"),
        ("/api/echo/", {"X-Padding": "y" * 100_000}, 431, "headers_too_large"),
        ("/v1/chat/completions", {f"X-Pad-{n}": "z" * 1000 for n in range(40)}, 431, "headers_too_large"),
    ],
)
def test_a_url_or_headers_over_the_limit_get_414_or_431_not_a_closed_connection(api, path, headers, status, code):
    secret = api.key()
    response = call(api, "POST", path, secret, json={"text": "hi"}, headers=headers)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert response.headers["X-Request-Id"]
    assert api.store.identify(secret).used == 0


def raw_post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             "Content-Type: application/json", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_until_closed(connection: socket.socket) -> bytes:
    received = b""
    connection.settimeout(20)
    while chunk := connection.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize(
    "first_headers, status",
    [
        ({}, 401),  # no key
        ({"Authorization": "Bearer KEY", "Idempotency-Key": "k" * 300}, 400),
        ({"Authorization": "Bearer KEY", "Content-Length": "99999999"}, 413),  # by its declared length
        ({"Authorization": "Bearer KEY", "X-Long": "h" * 70_000}, 431),
    ],
)
def test_requests_pipelined_behind_an_early_error_are_neither_run_nor_charged(api, first_headers, status):
    info, secret = api.store.create_key(email="pipeline@example.org")
    headers = {name: value.replace("KEY", secret) for name, value in first_headers.items()}
    first = raw_post("/api/echo/", b'{"text": "first"}', headers)
    if "Content-Length" in headers:  # the one declared wins: what follows is taken for its body
        first = first.replace(b"Content-Length: 17\r\n", b"", 1)
    valid = raw_post("/api/echo/", b'{"text": "behind"}', {"Authorization": f"Bearer {secret}"})
    with socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1]))) as connection:
        connection.sendall(first + valid * 3)
        received = read_until_closed(connection)
    head = received.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    assert received.count(b"HTTP/1.1 ") == 1 and received.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nConnection: close\r\n" in head
    assert api.store.get_key(info.id).used == 0 and api.store.ledger_state(info.id).records == 0
