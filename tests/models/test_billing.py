"""Tokens are billed on every path: a stream its client closes early is charged the tokens
that reached the frontend, so a token budget cannot be escaped by leaving."""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import text

pytest.importorskip("transformers")

from tests.faults.conftest import balanced
from tests.frontend.conftest import running_api
from tests.models.test_batching import generation_worker

PIECES_READ = 10


@pytest.fixture(scope="module")
def tiny_api(tmp_path_factory, tiny_llama_dir):
    with running_api(
        tmp_path_factory.mktemp("billing"),
        workers=(generation_worker(tiny_llama_dir, max_batch=8),),
        frontend={"request_timeout": 30.0},
    ) as api:
        yield api


def stream_and_leave(api, secret: str) -> int:
    """Start a long stream, read a few pieces and close the connection; the status code."""
    body = {"model": "tiny", "prompt": "The lighthouse keeper", "max_tokens": 600, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {secret}"}
    with requests.post(api.url + "/v1/completions", json=body, headers=headers, stream=True, timeout=30) as response:
        if response.status_code != 200:
            return response.status_code
        read = 0
        for line in response.iter_lines():
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["text"]:
                read += 1
                if read == PIECES_READ:
                    break
    return 200


def charged_tokens(api, key_id: int) -> list[tuple[int, int]]:
    with api.store.engine.connect() as connection:
        return connection.execute(
            text("SELECT prompt_tokens, completion_tokens FROM usage_records WHERE key_id = :key AND charged"),
            {"key": key_id},
        ).all()


def test_streams_closed_early_are_billed_their_tokens_until_the_budget_refuses_the_key(tiny_api):
    budget = 200
    info, secret = tiny_api.store.create_key(email="leaver@example.com", token_budget=budget)
    streams = 0
    while (status := stream_and_leave(tiny_api, secret)) == 200:
        streams += 1
        assert streams < 20, "closing streams early escaped the token budget"
        balanced(tiny_api.store, info.id, records=streams)
    assert status == 429
    refusal = tiny_api.post("/v1/completions", secret, {"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert refusal.json()["error"]["code"] == "token_budget_exhausted"
    rows = charged_tokens(tiny_api, info.id)
    assert len(rows) == streams and all(prompt > 0 and completion >= PIECES_READ for prompt, completion in rows)
    state = balanced(tiny_api.store, info.id, records=streams)
    assert state.tokens_used == sum(prompt + completion for prompt, completion in rows) >= budget
