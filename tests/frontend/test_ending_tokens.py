"""An ending's tokens, which the access log shows beside each answered request: the prompt
counted once, every choice's completion, nothing for a failure."""

from __future__ import annotations

from frontend import billing
from frontend.policies import Ending


def answer(prompt: int | None, completion: int | None) -> dict[str, object]:
    return {"text": "Paris.", "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def test_an_answer_counts_its_prompt_and_its_completion():
    assert Ending(billing.OK, charged=True, result=answer(12, 19)).tokens == 31


def test_several_choices_count_the_prompt_once_and_every_completion():
    assert Ending(billing.OK, charged=True, result=[answer(12, 19), answer(12, 5)]).tokens == 36


def test_an_embedding_counts_its_prompt_alone():
    assert Ending(billing.OK, charged=True, result={"usage": {"prompt_tokens": 7}}).tokens == 7


def test_an_answer_that_counts_no_tokens_and_a_failure_have_none():
    assert Ending(billing.OK, charged=True, result={"message": "hi"}).tokens is None
    assert Ending(billing.OK, charged=True, result=[]).tokens is None
    assert Ending(billing.CLIENT_LEFT, charged=False, result=answer(12, 3)).tokens is None
