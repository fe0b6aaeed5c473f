"""Batches through real processes: a worker serving the tiny Llama decodes concurrent
requests together, and each keeps its own text, deadline, cancel and bill."""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text

pytest.importorskip("transformers")

from broker import errors
from broker.client import AsyncClient, Client
from tests.frontend.conftest import running_api
from tests.harness import wait_until
from tests.models.conftest import GENERATION_OPTIONS
from tests.models.support import answer_of

PROMPTS = [f"Story number {n}: the lighthouse keeper" + " and the storm" * (n % 4) for n in range(16)]


def generation_worker(tiny_llama_dir, **options):
    options = {"model": str(tiny_llama_dir), **GENERATION_OPTIONS, **options}
    return ("tiny", "text-generation", *[arg for name, value in options.items() for arg in ("--option", f"{name}={value}")])


@pytest.fixture(scope="module")
def tiny_api(tmp_path_factory, tiny_llama_dir):
    with running_api(
        tmp_path_factory.mktemp("batching"),
        workers=(generation_worker(tiny_llama_dir, max_batch=16),),
        frontend={"request_timeout": 1.5},
    ) as api:
        api.wait_for_workers("tiny")
        yield api


def counters(api) -> dict[str, int]:
    with Client(api.stack.endpoint, timeout=5) as client:
        return client.status()["counters"]


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def body_of(n: int) -> dict:
    """Stream ``n`` of 16: greedy, except two seeded samples, a stop string and a row held to a schema."""
    body = {"model": "tiny", "prompt": PROMPTS[n], "max_tokens": 24 + 3 * n, "temperature": 0}
    if n in (3, 7):
        body.update(temperature=0.9, seed=n)
    elif n == 5:
        body["stop"] = ["e"]
    elif n == 9:
        body.update(max_tokens=80, response_format={"type": "json_schema",
                                                    "json_schema": {"name": "place", "schema": SCHEMA}})
    return body


def stream_text(api, secret, body: dict, delay: float = 0.0) -> str:
    time.sleep(delay)  # staggered starts: each joins the rows already decoding
    response = requests.post(
        api.url + "/v1/completions", json={**body, "stream": True}, headers={"Authorization": f"Bearer {secret}"},
        stream=True, timeout=60,
    )
    assert response.status_code == 200, response.text
    pieces = []
    for line in response.iter_lines():
        if line.startswith(b"data: {"):
            pieces.extend(choice["text"] for choice in json.loads(line[6:])["choices"])
    return "".join(pieces)


def test_sixteen_http_streams_started_at_staggered_times_each_get_exactly_what_they_get_alone(tiny_api):
    secret = tiny_api.key()
    bodies = [body_of(n) for n in range(16)]
    alone = [stream_text(tiny_api, secret, body) for body in bodies]
    before = counters(tiny_api)
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda n: stream_text(tiny_api, secret, bodies[n], 0.01 * n), range(16)))
    after = counters(tiny_api)
    assert together == alone
    assert "e" not in together[5] and together[9].startswith('{"city"')
    assert after["dispatched"] - before["dispatched"] == 16
    # Each was sent into a free slot as it came, and joined the rows already decoding.
    log = tiny_api.stack.processes[1].log
    # The worker writes its task_done lines a moment later, from a thread of their own.
    wait_until(lambda: max(map(int, re.findall(r"task_done\b.*\brows=(\d+)", log())), default=0) > 1,
               what="a call of the algorithm that served more than one row")


def test_a_prompt_sharing_a_long_prefix_answers_the_same_whether_or_not_the_prefix_was_cached(tiny_api):
    secret = tiny_api.key()
    prefix = "You are a careful assistant; you answer in full sentences. " * 7

    def ask(question: str) -> dict:
        body = {"model": "tiny", "prompt": prefix + question, "max_tokens": 24, "temperature": 0}
        return tiny_api.post("/v1/completions", secret, body).json()

    cold = ask("Where is Rome?")  # computes the whole prompt, and keeps its prefix
    ask("Where is Paris?")
    warm = ask("Where is Rome?")
    assert warm["choices"][0]["text"] == cold["choices"][0]["text"]
    assert warm["usage"]["prompt_tokens"] == cold["usage"]["prompt_tokens"] >= 200
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] >= 200


def test_cancels_and_deadlines_hit_only_their_own_row(tiny_api):
    async def run():
        async with AsyncClient(tiny_api.stack.endpoint, timeout=30) as client:
            alone = await client.request("tiny", {"prompt": PROMPTS[1], "max_new_tokens": 300})
            before = await client.status()
            # Four rows decoded together: each joins the batch as it arrives.
            blocker = asyncio.ensure_future(client.request("tiny", {"prompt": PROMPTS[0], "max_new_tokens": 200}))
            await asyncio.sleep(0)
            kept = asyncio.ensure_future(client.request("tiny", {"prompt": PROMPTS[1], "max_new_tokens": 300}))
            late = asyncio.ensure_future(client.request("tiny", {"prompt": PROMPTS[2], "max_new_tokens": 4000}, timeout=0.6))
            await asyncio.sleep(0)
            cancelled = 0
            async for _ in client.stream("tiny", {"prompt": PROMPTS[3], "max_new_tokens": 4000}):
                cancelled += 1
                if cancelled == 3:
                    break  # leaving the stream cancels this row alone
            with pytest.raises(errors.RequestTimeout):
                await late
            kept_answer = await kept
            await blocker
            after = await client.status()
            return alone, kept_answer, before["counters"], after["counters"]

    alone, kept, before, after = asyncio.run(run())
    assert answer_of(kept) == answer_of(alone)  # its batch mates' cancel and deadline did not touch it
    assert after["dispatched"] - before["dispatched"] == 4
    log = tiny_api.stack.processes[1].log
    finished = wait_until(lambda: log().count("interrupted=deadline") and log().count("interrupted=cancelled"), what="log")
    assert finished


def usage_rows(api, key_id):
    with api.store.engine.connect() as connection:
        return connection.execute(
            text("SELECT outcome, completion_tokens FROM usage_records WHERE key_id = :key ORDER BY completion_tokens"),
            {"key": key_id},
        ).all()


def test_usage_and_refunds_are_exact_for_each_row_of_a_batch(tiny_api):
    key, secret = tiny_api.store.create_key(email="rows@example.com")
    bodies = [{"model": "tiny", "prompt": PROMPTS[n], "max_tokens": 10 + n, "temperature": 0} for n in range(6)]
    bodies.append({"model": "tiny", "prompt": "bad", "max_tokens": 4001})  # over the worker's limit: refused unadmitted
    bodies.append({"model": "tiny", "prompt": PROMPTS[7], "max_tokens": 4000})  # past the 1.5 s deadline: refunded

    def post(body):
        return requests.post(tiny_api.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)

    with ThreadPoolExecutor(len(bodies)) as pool:
        statuses = [response.status_code for response in pool.map(post, bodies)]
    assert statuses == [200] * 6 + [400, 504]
    tiny_api.store.flush_usage()
    rows = wait_until(lambda: (r := usage_rows(tiny_api, key.id)) and len(r) == 7 and r, what="usage records")
    ok = sorted(tokens for outcome, tokens in rows if outcome == "ok")
    assert ok == [10 + n for n in range(6)]
    assert [outcome for outcome, _ in rows if outcome != "ok"] == ["timeout"]
    assert tiny_api.store.get_key(key.id).used == 6


def test_a_django_style_package_is_never_batched(tmp_path):
    with running_api(tmp_path, workers=(("legacy", "tests.fixtures.django_style_algorithm"),)) as api:
        secret = api.key()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: api.post("/api/legacy/", secret, {"text": f"text {n}"}), range(8)))
        assert all(answer.status_code == 200 for answer in answers)
        with Client(api.stack.endpoint, timeout=5) as client:
            status = client.status()
        (worker,) = status["services"]["legacy"]["workers"]
        assert worker["capacity"] == 1
        assert status["counters"]["batches"] == status["counters"]["dispatched"] == 8


def test_a_worker_whose_memory_is_full_tells_the_broker_to_stop_sending_and_every_row_still_runs(tmp_path, tiny_llama_dir):
    worker = generation_worker(tiny_llama_dir, max_batch=8, max_batch_tokens=150)
    with running_api(tmp_path, workers=(worker,)) as api:
        secret = api.key()
        body = {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 100, "temperature": 0}

        def post(_):
            return api.post("/v1/completions", secret, body)

        alone = post(0).json()["choices"][0]["text"]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(6)))
        assert [answer.status_code for answer in answers] == [200] * 6
        assert {answer.json()["choices"][0]["text"] for answer in answers} == {alone}
        broker_log = api.stack.processes[0].log
        # Only one row fits at a time: the worker said so, and opened up again once it had room.
        capacities = wait_until(lambda: re.findall(r"worker_capacity\b.*\bcapacity=(\d+)", broker_log()), what="log")
        assert min(int(c) for c in capacities) < 8 and int(capacities[-1]) == 8
