"""The text-generation algorithm in-process, on the tiny random Llama."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("transformers")

from broker.contract.generation import GenerationPiece, GenerationResult
from broker.errors import InvalidInput
from gpuworker.algorithm import AlgorithmLoadError, LoadedAlgorithm
from tests.models.conftest import GENERATION_OPTIONS
from tests.models.support import answer_of, drain, joined, task


def test_an_answer_reports_its_text_token_counts_and_finish_reason(generator):
    answer = generator.handle({"prompt": "Paris is the", "max_new_tokens": 24}, task())
    assert set(answer) == {"output", "usage", "finish_reason", "timing"}
    assert set(answer["timing"]) == {"deadline_left_ms", "first_token_ms", "decode_ms"}
    assert isinstance(answer["output"], str) and answer["output"]
    prompt_ids = generator.tokenizer("Paris is the")["input_ids"]
    assert answer_of(answer)["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": 24}
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 0} and answer["usage"]["gpu_seconds"] > 0
    assert answer["finish_reason"] == "length"


def test_greedy_answers_are_the_same_every_time_and_not_one_repeated_token(generator):
    request = {"text": "Hello there", "max_new_tokens": 32}
    first, second = (generator.handle(request, task())["output"] for _ in range(2))
    assert first == second
    assert len(set(first)) > 5


def test_streamed_pieces_join_to_the_whole_answer(generator):
    request = {"messages": [{"role": "user", "content": "Stream this, please."}], "max_new_tokens": 64}
    whole = generator.handle(request, task())
    pieces, summary = drain(generator.stream(request, task()))
    assert len(pieces) > 1 and all(set(piece) == {"text", "usage"} and piece["text"] for piece in pieces)
    assert joined(pieces) == whole["output"]
    assert answer_of(summary) == answer_of({"usage": whole["usage"], "finish_reason": whole["finish_reason"]})


def test_a_stop_string_ends_the_answer_just_before_it(generator):
    request = {"prompt": "The workers", "max_new_tokens": 60}
    full = generator.handle(request, task())["output"]
    cut = len(full) // 2
    stop = full[cut:cut + 3]
    expected = full[: full.index(stop)]
    answer = generator.handle({**request, "stop": [stop]}, task())
    assert answer["output"] == expected and answer["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] < 60
    pieces, summary = drain(generator.stream({**request, "stop": stop}, task()))
    assert joined(pieces) == expected and summary["finish_reason"] == "stop"


def test_an_answer_that_reaches_the_end_of_turn_token_finishes_with_stop(ending_llama_dir):
    ending = LoadedAlgorithm("text-generation", None, [str(ending_llama_dir)], GENERATION_OPTIONS)
    answer = ending.serve({"text": "Hello", "max_new_tokens": 200}, task())
    assert answer["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] < 200
    assert "<|im_end|>" not in answer["output"]


def test_a_chat_and_a_text_are_rendered_with_the_chat_template_but_a_prompt_is_not(generator):
    template = generator.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert template.endswith("<|im_start|>assistant\n")
    expected = len(generator.tokenizer(template, add_special_tokens=False)["input_ids"])
    chat = generator.handle({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 1}, task())
    text = generator.handle({"text": "hi", "max_new_tokens": 1}, task())
    raw = generator.handle({"prompt": "hi", "max_new_tokens": 1}, task())
    assert chat["usage"]["prompt_tokens"] == text["usage"]["prompt_tokens"] == expected
    assert raw["usage"]["prompt_tokens"] < expected


def test_sampling_with_the_same_seed_gives_the_same_answer(generator):
    request = {"text": "Sample me", "max_new_tokens": 30, "temperature": 1.2, "top_p": 0.9, "seed": 42}
    first = generator.handle(request, task())["output"]
    assert generator.handle(request, task())["output"] == first
    others = {generator.handle({**request, "seed": seed}, task())["output"] for seed in (1, 2, 3)}
    assert len(others | {first}) > 1


def test_cancelling_a_stream_stops_generation_at_the_next_token(generator):
    context = task()
    stream = generator.stream({"prompt": "Go on and on", "max_new_tokens": 4000}, context)
    first_pieces = [next(stream) for _ in range(3)]
    context.cancelled.set()
    rest, summary = drain(stream)
    assert summary["finish_reason"] == "cancelled"
    assert summary["usage"]["completion_tokens"] < 1000  # of 4000: stopped soon after the cancel
    assert len(first_pieces) + len(rest) <= summary["usage"]["completion_tokens"]


def test_a_passed_deadline_stops_generation(generator):
    started = time.monotonic()
    answer = generator.handle({"prompt": "Go on", "max_new_tokens": 4000}, task(seconds=0.05))
    assert answer["finish_reason"] == "cancelled"
    assert answer["usage"]["completion_tokens"] < 4000
    assert time.monotonic() - started < 2


def test_a_stream_generates_on_the_calling_thread_and_closing_it_stops_generation(generator):
    threads = threading.active_count()
    stream = generator.stream({"prompt": "Go on", "max_new_tokens": 4000}, task())
    next(stream)
    assert threading.active_count() == threads  # CUDA state is per thread: no helper thread is started
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 0.5 and stream.gi_frame is None


@pytest.mark.parametrize(
    "request_body, complaint",
    [
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": "x" * 4100}, "the prompt has 4100 tokens; at most 4095 are allowed"),
        ({"prompt": "x" * 3000, "max_new_tokens": 1500}, "ask for at most 1096 new tokens"),
        ({"text": "a", "max_new_tokens": 4001}, "from 0 to 4000"),
    ],
)
def test_prompts_and_budgets_that_do_not_fit_are_refused(generator, request_body, complaint):
    with pytest.raises(InvalidInput, match=complaint):
        generator.handle(request_body, task())


def test_without_max_new_tokens_a_long_prompt_gets_the_room_left_in_the_context(tiny_llama_dir):
    small = LoadedAlgorithm("text-generation", None, [], {"model": str(tiny_llama_dir), "default_max_new_tokens": 64, "warmup_tokens": 0})
    answer = small.serve({"prompt": "x" * 4090}, task())
    assert answer_of(answer)["usage"] == {"prompt_tokens": 4090, "completion_tokens": 6}
    assert answer["finish_reason"] == "length"


def test_a_chat_template_that_refuses_the_messages_is_invalid_input(tiny_llama_dir):
    strict = LoadedAlgorithm("text-generation", None, [], {"model": str(tiny_llama_dir), "warmup_tokens": 0})
    strict.instance.tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(InvalidInput, match="chat template refused these messages: Conversation roles must alternate"):
        strict.serve({"messages": [{"role": "user", "content": "a"}]}, task())


def test_describe_reports_the_model_device_dtype_and_size(generator, tiny_llama_dir):
    info = generator.describe()
    assert info["model"] == tiny_llama_dir.name and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["context_length"] == 4096 and info["max_new_tokens_limit"] == 4000
    assert info["parameters"] > 100_000 and info["weights_bytes"] == 4 * info["parameters"]


def test_unknown_or_mistyped_options_stop_the_worker_at_start_with_their_names(tiny_llama_dir):
    with pytest.raises(AlgorithmLoadError, match="max_new_token: unknown option"):
        LoadedAlgorithm("text-generation", None, [], {"model": str(tiny_llama_dir), "max_new_token": 5})
    with pytest.raises(AlgorithmLoadError, match="dtype"):
        LoadedAlgorithm("text-generation", None, [], {"model": str(tiny_llama_dir), "dtype": "float64"})


def test_the_answers_are_exactly_the_contracts_types(generator):
    """The worker writes its answers as plain dicts on its hot path; read as the contract's
    types and written back, they are unchanged: no field missing, mistyped or unknown."""
    city = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
            "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": city}}]
    requests = [
        {"prompt": "Paris is the", "max_new_tokens": 6, "logprobs": True, "top_logprobs": 2},
        {"messages": [{"role": "user", "content": "weather?"}], "max_new_tokens": 300, "tools": tools,
         "tool_choice": "required"},
    ]
    for request in requests:
        whole = generator.handle(request, task())
        assert GenerationResult.model_validate(whole).to_answer() == whole
        pieces, summary = drain(generator.stream(request, task()))
        assert all(GenerationPiece.model_validate(piece).to_answer() == piece for piece in pieces)
        assert GenerationResult.model_validate(summary).to_answer() == summary
    assert whole["tool_calls"] and summary["tool_calls"]
