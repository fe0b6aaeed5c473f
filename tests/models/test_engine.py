"""The engine loop in-process: requests that join a running batch at staggered steps each get
exactly what they get alone, whoever runs beside them; a cached prefix changes nothing but the
work; the memory bound makes rows wait, never fail; the model families people run decode
exactly as transformers' own ``generate`` does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("transformers")

from gpuworker.algorithm import Batch, Row
from tests.fixtures.tiny_model import FAMILIES, build_tiny_family
from tests.models.conftest import GENERATION_OPTIONS
from tests.models.support import answer_of, task

QUICK = {"prompt": "Quick brown foxes", "max_new_tokens": 3}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MIXED = [
    {"prompt": "The lighthouse keeper", "max_new_tokens": 40},
    {"prompt": "Story number 3:" + " and the storm" * 9, "max_new_tokens": 25},
    {"text": "Sample me", "max_new_tokens": 30, "temperature": 0.9, "seed": 7},
    {"prompt": "Stop somewhere", "max_new_tokens": 60, "stop": ["e"]},
    {"text": "Where is Paris?", "max_new_tokens": 40,
     "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}},
    {"prompt": "Score each token", "max_new_tokens": 12, "logprobs": True, "top_logprobs": 2},
    QUICK,
    {"messages": [{"role": "user", "content": "A chat, please."}], "max_new_tokens": 33},
]


@dataclass
class Outcome:
    """What one request got: its tokens and text as streamed, and its summary."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    result: Any = None

    def send(self, _row: Row, kind: str, value: Any, tokens: tuple[int, ...] = ()) -> None:
        if kind == "piece":
            self.tokens.extend(tokens)
            self.text += value["text"]
        else:
            self.result = value if kind == "result" else repr(value)

    def summary(self) -> dict[str, Any]:
        return answer_of(self.result)


def serve_staggered(generator, plan: list[tuple[int, dict[str, Any]]]) -> list[Outcome]:
    """Serve ``plan``'s requests, each handed to the engine at its step (0: at the start)."""
    outcomes = [Outcome() for _ in plan]
    rows = [Row(request, task(), True, outcome.send) for (_, request), outcome in zip(plan, outcomes)]
    step = 0

    def arrivals() -> list[Row]:
        nonlocal step
        step += 1
        return [row for (at, _), row in zip(plan, rows) if at == step]

    generator.serve_batch(Batch([row for (at, _), row in zip(plan, rows) if at == 0], arrivals=arrivals))
    assert all(outcome.result is not None for outcome in outcomes)
    return outcomes


def alone(generator, request: dict[str, Any]) -> Outcome:
    return serve_staggered(generator, [(0, request)])[0]


def test_requests_joining_at_staggered_steps_each_get_what_they_get_alone(generator):
    expected = [alone(generator, request) for request in MIXED]
    plan = [(3 * index, request) for index, request in enumerate(MIXED)]
    together = serve_staggered(generator, plan)
    for request, want, got in zip(MIXED, expected, together):
        assert (got.tokens, got.text, got.summary()) == (want.tokens, want.text, want.summary()), request
    assert together[4].text.startswith('{"city"')  # the grammar row keeps to its schema
    assert together[3].summary()["finish_reason"] == "stop" and "e" not in together[3].text


def test_the_device_time_charged_to_the_rows_adds_up_to_the_time_the_device_was_busy(generator):
    """Rows joining a running batch share each step's time: the longer a row runs, and the more
    of its prompt is computed, the more it is charged; the charges sum to the busy time."""
    busy = generator.decoder.clock.busy_seconds
    together = serve_staggered(generator, [(3 * index, request) for index, request in enumerate(MIXED)])
    charged = [outcome.result["usage"]["gpu_seconds"] for outcome in together]
    assert all(seconds > 0 for seconds in charged)
    assert sum(charged) == pytest.approx(generator.decoder.clock.busy_seconds - busy, rel=1e-4)
    three, forty = charged[MIXED.index(QUICK)], charged[0]  # 3 tokens, and 40 beside the most rows
    assert forty > three


def test_a_cancelled_row_and_a_row_past_its_deadline_end_alone(generator):
    keep = {"prompt": "The lighthouse keeper", "max_new_tokens": 50}
    want = alone(generator, keep)
    outcomes = [Outcome() for _ in range(3)]
    contexts = [task(), task(), task(0.05)]
    rows = [Row(request, context, True, outcome.send) for request, context, outcome in
            zip([keep, {"prompt": "cancel me", "max_new_tokens": 3000}, {"prompt": "late", "max_new_tokens": 3000}],
                contexts, outcomes)]
    steps = 0

    def arrivals() -> list[Row]:
        nonlocal steps
        steps += 1
        if steps == 5:
            contexts[1].cancelled.set()
        return []

    generator.serve_batch(Batch(rows, arrivals=arrivals))
    assert (outcomes[0].tokens, outcomes[0].summary()) == (want.tokens, want.summary())
    assert outcomes[1].result["interrupted"] == "cancelled" and outcomes[2].result["interrupted"] == "deadline"


def test_a_prompt_sharing_a_long_prefix_with_an_earlier_one_reuses_it_and_answers_the_same(tiny_llama_dir):
    from gpuworker.models.generation import TextGeneration

    prefix = "You are a careful assistant. " * 12  # over 200 tokens
    first = {"prompt": prefix + "Tell me about Paris.", "max_new_tokens": 20}
    second = {"prompt": prefix + "Tell me about Rome.", "max_new_tokens": 20}
    uncached = TextGeneration(model=str(tiny_llama_dir), prefix_cache_tokens=0, **GENERATION_OPTIONS)
    cached = TextGeneration(model=str(tiny_llama_dir), prefill_chunk=64, **GENERATION_OPTIONS)
    want = alone(uncached, second)
    alone(cached, first)
    computed = cached.engine.counters.prompt_tokens_computed
    got = alone(cached, second)
    assert (got.tokens, got.summary()) == (want.tokens, want.summary())
    counters = cached.prefixes.counters
    assert counters.hits == 1 and counters.cached_tokens >= 192
    assert got.result["usage"]["prompt_tokens_details"] == {"cached_tokens": counters.cached_tokens}
    prompt = got.summary()["usage"]["prompt_tokens"]
    assert cached.engine.counters.prompt_tokens_computed - computed == prompt - counters.cached_tokens


def test_cached_prefixes_are_kept_apart_per_tenant_unless_shared(tiny_llama_dir):
    from gpuworker.models.generation import TextGeneration

    prompt = {"prompt": "A shared system prompt. " * 12 + "Go.", "max_new_tokens": 2}
    for shared, hits in ((False, 0), (True, 1)):
        engine = TextGeneration(model=str(tiny_llama_dir), prefix_cache_shared=shared, **GENERATION_OPTIONS)
        for tenant in ("key-1", "key-2"):
            context = task()
            context.tenant = tenant
            outcome = Outcome()
            engine.serve_batch(Batch([Row(prompt, context, True, outcome.send)]))
        assert engine.prefixes.counters.hits == hits


def test_rows_over_the_memory_bound_wait_for_room_and_get_the_same_answers(tiny_llama_dir):
    from gpuworker.models.generation import TextGeneration

    small = TextGeneration(model=str(tiny_llama_dir), max_batch_tokens=120, prefill_chunk=8, **GENERATION_OPTIONS)
    requests = [{"prompt": f"Story {n}: the keeper", "max_new_tokens": 40} for n in range(5)]
    expected = [alone(small, request) for request in requests]
    seated = []
    original = small.engine._seat_waiting

    def watch() -> None:
        original()
        seated.append(small.engine.reserved)

    small.engine._seat_waiting = watch
    together = serve_staggered(small, [(0, request) for request in requests])
    assert [o.tokens for o in together] == [o.tokens for o in expected]
    assert max(seated) <= 120 and small.engine.counters.steps > 0


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    from gpuworker.models.generation import TextGeneration

    directory = build_tiny_family(tmp_path_factory.mktemp(request.param), request.param)
    return TextGeneration(model=str(directory), text_as_chat=False, prefill_chunk=6, **GENERATION_OPTIONS)


def test_each_model_family_decodes_as_transformers_generate_alone_and_among_other_rows(family):
    import torch

    prompts = ["The workers keep a model", "Paris is the capital of France. Berlin", "Quick brown foxes jump", "0 1 2"]
    budget = 24
    reference = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = family.tokenizer(prompt, return_tensors="pt")["input_ids"]
            generated = family.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
                pad_token_id=family.pad_id,
            )
            reference.append(generated[0, ids.shape[1]:].tolist())
    requests = [{"prompt": prompt, "max_new_tokens": budget} for prompt in prompts]
    assert [alone(family, request).tokens for request in requests] == reference
    together = serve_staggered(family, [(5 * index, request) for index, request in enumerate(requests)])
    assert [outcome.tokens for outcome in together] == reference


def test_the_store_gives_memory_back_once_a_long_row_has_ended(tiny_llama_dir):
    from gpuworker.models.decoding import FIRST_COLUMNS
    from gpuworker.models.generation import TextGeneration

    engine = TextGeneration(model=str(tiny_llama_dir), **GENERATION_OPTIONS)
    cache, seen = engine.decoder.cache, []
    grow = cache.ensure

    def watched(rows: int, columns: int) -> None:
        grow(rows, columns)
        seen.append(cache.columns)

    cache.ensure = watched
    alone(engine, {"prompt": "long " * 300, "max_new_tokens": 400})
    assert max(seen) >= 1024 and cache.columns == FIRST_COLUMNS


def test_a_cached_prefix_longer_than_the_store_is_seated_after_the_store_shrank(tiny_llama_dir):
    from gpuworker.models.decoding import FIRST_COLUMNS
    from gpuworker.models.generation import TextGeneration

    engine = TextGeneration(model=str(tiny_llama_dir), **GENERATION_OPTIONS)
    prompt = {"prompt": "A long shared system prompt. " * 40 + "Go.", "max_new_tokens": 3}
    want = alone(engine, prompt)  # keeps its prefix; the store shrinks back once it ends
    got = alone(engine, prompt)
    cached = got.result["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert got.tokens == want.tokens and cached > FIRST_COLUMNS
