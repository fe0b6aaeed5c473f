"""Real models through the real bus: a broker and model workers as processes, the direct client."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

pytest.importorskip("transformers")

from broker import errors
from broker.client import AsyncClient, Client
from tests.conftest import fast_stack
from tests.harness import Stack, wait_until
from tests.models.conftest import GENERATION_OPTIONS
from tests.models.support import answer_of, task

# Loading torch and a model in a fresh process takes seconds, more on a busy machine.
START_TIMEOUT = 90


def workers(client: Client, service: str) -> list[dict]:
    return client.status()["services"].get(service, {}).get("workers", [])


def wait_ready(stack: Stack, service: str) -> Client:
    client = Client(stack.endpoint, timeout=30, heartbeat_interval=stack.heartbeat_interval)
    wait_until(
        lambda: [w for w in workers(client, service) if w["state"] == "idle"],
        timeout=START_TIMEOUT,
        what=f"a {service} worker to be ready",
    )
    return client


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory, tiny_llama_dir):
    """One broker and one text-generation worker serving the tiny Llama as service ``tiny``."""
    options = {"model": str(tiny_llama_dir), **GENERATION_OPTIONS}
    stack = fast_stack(tmp_path_factory.mktemp("tiny-stack"), worker={"options": options})
    stack.broker()
    stack.worker("tiny", "text-generation")
    try:
        wait_ready(stack, "tiny").close()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def client(tiny_stack):
    with wait_ready(tiny_stack, "tiny") as client:
        yield client


def test_a_worker_generates_with_the_tiny_model_as_it_does_in_process(client, generator):
    request = {"text": "What is the capital of France?", "max_new_tokens": 24}
    answer = client.request("tiny", request)
    assert answer["usage"]["completion_tokens"] == 24 and answer["finish_reason"] == "length"
    assert answer_of(answer) == answer_of(generator.handle(request, task()))


def test_streamed_pieces_through_the_broker_join_to_the_non_streamed_answer(tiny_stack):
    request = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_new_tokens": 48}

    async def both():
        async with AsyncClient(tiny_stack.endpoint, timeout=30) as client:
            whole = await client.request("tiny", request)
            pieces = [piece async for piece in client.stream("tiny", request)]
            return whole, pieces

    whole, pieces = asyncio.run(both())
    *texts, summary = pieces
    assert len(texts) > 1 and all(set(piece) == {"text", "usage"} for piece in texts)
    assert "".join(piece["text"] for piece in texts) == whole["output"]
    assert answer_of(summary) == answer_of({"usage": whole["usage"], "finish_reason": "length"})


@pytest.mark.parametrize(
    "request_body, complaint",
    [
        ({"text": "a", "max_new_tokens": 5000}, "'max_new_tokens' must be an integer from 0 to 4000 (got 5000)"),
        ({"text": "a", "temperature": 9}, "'temperature' must be a number from 0 to 2 (got 9)"),
        ({"text": "a", "top_p": 0}, "'top_p': Input should be greater than 0"),
        ({"text": "a", "stop": ["1", "2", "3", "4", "5"]}, "'stop' may hold at most 4 strings (got 5)"),
        ({"messages": [{"role": "user"}]}, "'messages[0]': a message needs a string 'content'"),
        ({"max_new_tokens": 5}, "the request needs exactly one of 'messages'"),
    ],
)
def test_parameters_out_of_bounds_are_invalid_input_with_clear_messages(client, request_body, complaint):
    with pytest.raises(errors.InvalidInput) as refused:
        client.request("tiny", request_body)
    assert complaint in refused.value.message


def test_cancelling_a_stream_midway_frees_the_worker_for_the_next_request(tiny_stack, client):
    async def leave_after_three_pieces() -> float:
        async with AsyncClient(tiny_stack.endpoint, timeout=60) as stream_client:
            received = 0
            async for _ in stream_client.stream("tiny", {"prompt": "Go on and on", "max_new_tokens": 4000}):
                received += 1
                if received == 3:
                    break  # leaving the iterator sends CANCEL
            left_at = time.monotonic()
            deadline = left_at + 5
            while not await _idle(stream_client):
                assert time.monotonic() < deadline, "the worker is still busy"
            return time.monotonic() - left_at

    assert asyncio.run(leave_after_three_pieces()) < 2.0
    log = tiny_stack.processes[1].log
    assert "task_cancel_requested" in log()
    finished = wait_until(lambda: re.findall(r"generation_finished\s.*finish_reason=cancelled.*", log()), what="the log")
    completion = int(re.search(r"completion_tokens=(\d+)", finished[-1]).group(1))
    assert completion < 1000  # stopped long before the 4000 tokens asked for
    answer = client.request("tiny", {"text": "Still there?", "max_new_tokens": 8})
    assert answer["usage"]["completion_tokens"] == 8


def test_a_stream_left_by_a_client_that_closes_at_once_still_frees_the_worker(tiny_stack, client):
    async def leave_and_close() -> None:
        async with AsyncClient(tiny_stack.endpoint, timeout=60) as stream_client:
            async for _ in stream_client.stream("tiny", {"prompt": "Go on", "max_new_tokens": 4000}):
                break

    asyncio.run(leave_and_close())
    left_at = time.monotonic()
    wait_until(lambda: all(w["state"] == "idle" for w in workers(client, "tiny")), timeout=5, what="an idle worker")
    assert time.monotonic() - left_at < 2.0


async def _idle(client: AsyncClient, service: str = "tiny") -> bool:
    status = await client.status()
    return all(worker["state"] == "idle" for worker in status["services"][service]["workers"])


def test_status_shows_the_model_device_and_memory_of_each_worker(client, tiny_llama_dir):
    (worker,) = workers(client, "tiny")
    assert worker["algorithm"] == "text-generation" and worker["model"] == tiny_llama_dir.name
    assert worker["device"] == "cpu" and worker["dtype"] == "float32"
    assert worker["parameters"] > 0 and worker["max_rss_bytes"] > worker["weights_bytes"]


def test_an_embedding_worker_serves_vectors_through_the_broker(stack_factory, tiny_encoder_dir, embedder):
    stack = stack_factory(worker={"options": {"model": str(tiny_encoder_dir), "cpu_threads": 1}})
    stack.broker()
    stack.worker("embed", "embedding")
    with wait_ready(stack, "embed") as client:
        answer = client.request("embed", {"input": ["one text", "another text"]})
        assert answer_of(answer) == answer_of(embedder.handle({"input": ["one text", "another text"]}, task()))
        with pytest.raises(errors.InvalidInput, match="'input': List should have at least 1 item"):
            client.request("embed", {"input": []})
        (worker,) = workers(client, "embed")
    assert worker["model"] == tiny_encoder_dir.name and worker["dimensions"] == 32
