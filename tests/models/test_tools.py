"""Tool calls parsed out of canned model outputs, in the formats model families use."""

from __future__ import annotations

import json

import pytest

from gpuworker.models.tools import CallSplitter, parse

NAMES = {"get_weather", "add"}


def calls_of(text):
    content, calls = parse(text, NAMES)
    return content, [(call.name, json.loads(call.arguments)) for call in calls]


def test_a_hermes_call_is_parsed_with_its_arguments_and_the_text_before_it_kept():
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert calls_of(text) == ("Let me look.", [("get_weather", {"city": "Paris"})])


def test_several_hermes_calls_are_all_parsed_in_order():
    text = ('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
            '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>')
    assert calls_of(text) == ("", [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Rome"})])


def test_a_call_cut_before_its_closing_tag_is_still_parsed():
    assert calls_of('<tool_call>{"name": "add", "arguments": {"a": 1}}') == ("", [("add", {"a": 1})])


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"name": "add", "arguments": {"a": 1, "b": 2}}', ("", [("add", {"a": 1, "b": 2})])),
        ('[{"name": "add", "arguments": {}}, {"name": "get_weather", "parameters": {"city": "Oslo"}}]',
         ("", [("add", {}), ("get_weather", {"city": "Oslo"})])),
    ],
)
def test_a_bare_json_call_is_parsed_when_it_is_the_whole_answer(text, expected):
    assert calls_of(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 3.",
        '{"name": "unknown_tool", "arguments": {}}',
        '{"result": 3}',
        'I think {"name": "add", "arguments": {"a": 1}} would do',
        '<tool_call>not json</tool_call>',
    ],
)
def test_text_that_is_not_a_call_to_an_offered_tool_stays_text(text):
    assert calls_of(text) == (text, [])


def test_the_splitter_streams_text_up_to_a_call_and_holds_a_possible_tag_start():
    splitter = CallSplitter()
    assert splitter.feed("Sure, <tool") == "Sure, "
    assert splitter.feed("_c") == ""
    assert splitter.feed('all>{"name"') == ""
    assert splitter.calling and splitter.feed(' "add"}') == "" and splitter.flush() == ""
    other = CallSplitter()
    assert other.feed("a <to") == "a " and other.feed("day") == "<today" and other.flush() == ""
    assert CallSplitter().feed("x <") == "x " and not CallSplitter().calling
