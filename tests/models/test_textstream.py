"""Token ids to text pieces: stable characters only, and nothing of a stop string."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("transformers")

from gpuworker.models.textstream import IncrementalDecoder, StopMatcher, TextAssembler


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def pieces_of(decoder: IncrementalDecoder, ids: list[int]) -> list[str]:
    pieces = [decoder.push([token]) for token in ids]
    return [*pieces, decoder.flush()]


def test_pieces_join_to_the_whole_decoding_even_when_tokens_split_characters(tokenizer):
    rng = random.Random(7)
    for _ in range(50):
        ids = [rng.randrange(len(tokenizer)) for _ in range(40)]
        whole = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert "".join(pieces_of(IncrementalDecoder(tokenizer), ids)) == whole


def test_a_character_split_over_tokens_is_held_until_it_is_complete(tokenizer):
    ids = tokenizer("東", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # three UTF-8 bytes, not all merged by the tiny vocabulary
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push([token]) for token in ids] == [""] * (len(ids) - 1) + ["東"]


def test_special_tokens_add_no_text(tokenizer):
    decoder = IncrementalDecoder(tokenizer)
    assert decoder.push([tokenizer.eos_token_id]) == "" and decoder.flush() == ""


def feed_all(matcher: StopMatcher, parts: list[str]) -> str:
    return "".join(matcher.feed(part) for part in parts) + matcher.flush()


def test_text_is_cut_before_the_first_stop_string():
    matcher = StopMatcher(["END", "\n\n"])
    assert feed_all(matcher, ["one two\n", "\nthree END"]) == "one two"
    assert matcher.stopped


def test_a_stop_string_split_across_pieces_is_never_released():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("go S") == "go "
    assert matcher.feed("TO") == ""
    assert matcher.feed("P and more") == ""
    assert matcher.stopped and matcher.flush() == ""


def test_a_held_beginning_that_never_becomes_a_stop_string_is_released():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("ST") == ""
    assert matcher.feed("ART") == "START"
    assert matcher.feed("ends ST") == "ends "
    assert matcher.flush() == "ST"


def test_without_stop_strings_text_passes_at_once():
    matcher = StopMatcher([])
    assert matcher.feed("anything") == "anything" and not matcher.stopped


def test_an_assembler_reports_each_piece_and_their_join(tokenizer):
    seen: list[str] = []
    assembler = TextAssembler(tokenizer, ["capital of Ger"], on_text=seen.append)
    ids = tokenizer("Paris is the capital of France. Berlin is the capital of Germany.")["input_ids"]
    for token in ids:
        assembler.push([token])
    assembler.finish()
    assert assembler.text == "".join(seen) == "Paris is the capital of France. Berlin is the "
    assert assembler.stopped and assembler.token_count == len(ids)
