"""Generation requests: which prompt, which parameters, and clear refusals out of bounds."""

from __future__ import annotations

import types

import pytest

from broker.errors import InvalidInput
from gpuworker.models.options import GenerationOptions
from gpuworker.models.params import Prompt, generation_params
from gpuworker.models.prompting import plain_transcript, render_prompt

OPTIONS = GenerationOptions(max_new_tokens_limit=100, default_max_new_tokens=10, max_stop_strings=2, max_stop_chars=8)


def test_defaults_fill_what_the_request_leaves_out():
    params = generation_params({"text": "hi"}, OPTIONS)
    assert params.prompt == Prompt(text="hi")
    assert params.max_new_tokens is None and params.greedy and params.top_p == 1.0
    assert params.stop == () and params.seed is None


def test_every_parameter_is_read():
    request = {"prompt": "go", "max_tokens": 7, "temperature": 1, "top_p": 0.5, "stop": "x", "seed": 3}
    params = generation_params(request, OPTIONS)
    assert params.prompt == Prompt(text="go", raw=True)
    assert (params.max_new_tokens, params.temperature, params.top_p, params.stop, params.seed) == (7, 1.0, 0.5, ("x",), 3)
    assert not params.greedy


def test_a_chat_keeps_only_roles_and_contents():
    messages = [{"role": "system", "content": "be brief", "name": "x"}, {"role": "user", "content": "hi"}]
    params = generation_params({"messages": messages}, OPTIONS)
    assert params.prompt.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})


@pytest.mark.parametrize(
    "request_body, complaint",
    [
        ({}, "exactly one of 'messages'"),
        ({"text": "a", "prompt": "b"}, "exactly one of 'messages'"),
        ({"text": 5}, "'text': Input should be a valid string"),
        ({"messages": []}, "'messages': List should have at least 1 item"),
        ({"messages": ["hi"]}, r"'messages\[0\]': Input should be a valid dictionary"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"'messages\[0\].role': Input should be 'system', 'user', 'assistant' or 'tool'"),
        ({"messages": [{"role": "user", "content": None}]}, r"'messages\[0\]': a message needs a string 'content'"),
        ({"text": "a", "max_new_tokens": 101}, "'max_new_tokens' must be an integer from 0 to 100 \\(got 101\\)"),
        ({"text": "a", "max_new_tokens": -1}, "'max_new_tokens': Input should be greater than or equal to 0"),
        ({"text": "a", "max_tokens": 2.5}, "'max_tokens': Input should be a valid integer"),
        ({"text": "a", "max_tokens": True}, "'max_tokens': Input should be a valid integer"),
        ({"text": "a", "max_tokens": 5, "max_new_tokens": 6}, "disagree"),
        ({"text": "a", "temperature": 2.5}, "'temperature' must be a number from 0 to 2 \\(got 2.5\\)"),
        ({"text": "a", "temperature": -0.1}, "'temperature': Input should be greater than or equal to 0"),
        ({"text": "a", "temperature": "hot"}, "'temperature': Input should be a valid number"),
        ({"text": "a", "temperature": float("nan")}, "'temperature': Input should be a finite number"),
        ({"text": "a", "top_p": 0}, "'top_p': Input should be greater than 0"),
        ({"text": "a", "top_p": 1.5}, "'top_p': Input should be less than or equal to 1"),
        ({"text": "a", "stop": ["a", "b", "c"]}, "at most 2 strings \\(got 3\\)"),
        ({"text": "a", "stop": "much too long"}, "at most 8 characters"),
        ({"text": "a", "stop": [""]}, r"'stop\[0\]': String should have at least 1 character"),
        ({"text": "a", "stop": 3}, "'stop': Input should be a valid"),
        ({"text": "a", "seed": -1}, "'seed': Input should be greater than or equal to 0"),
        ({"text": "a", "seed": "7"}, "'seed': Input should be a valid integer"),
        ({"text": "a", "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": {"name": "g"}}}, "names a function that is not among"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]}, r"'messages\[0\].tool_calls\[0\].function.arguments': the arguments must be a JSON object"),
    ],
)
def test_a_parameter_out_of_bounds_is_refused_with_a_clear_message(request_body, complaint):
    with pytest.raises(InvalidInput, match=complaint):
        generation_params(request_body, OPTIONS)


def test_options_whose_defaults_exceed_their_limits_are_refused():
    with pytest.raises(ValueError, match="default_max_new_tokens must not exceed max_new_tokens_limit"):
        GenerationOptions(default_max_new_tokens=20, max_new_tokens_limit=10)


def test_text_is_one_user_turn_only_where_the_tokenizer_has_a_chat_template():
    without = types.SimpleNamespace(chat_template=None)
    assert render_prompt(without, Prompt(text="hi"), text_as_chat=True).text == "hi"
    chat = Prompt(messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}))
    rendered = render_prompt(without, chat, text_as_chat=True)
    assert rendered.text == plain_transcript(chat.messages) == "System: be brief\n\nUser: hi\n\nAssistant:"
    assert rendered.add_special_tokens
