"""An ending's tokens, which the access log shows beside each answered request: the prompt
counted once, every choice's completion, nothing for a failure."""

from __future__ import annotations

from frontend import billing
from frontend.policies import Ending
from frontend.policies.usage import answered_tokens


def answer(prompt: int | None, completion: int | None) -> dict[str, object]:
    return {"text": "Paris.", "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def test_an_answer_counts_its_prompt_and_its_completion():
    assert answered_tokens(Ending(billing.OK, charged=True, result=answer(12, 19))) == 31


def test_several_choices_count_the_prompt_once_and_every_completion():
    assert answered_tokens(Ending(billing.OK, charged=True, result=[answer(12, 19), answer(12, 5)])) == 36


def test_an_embedding_counts_its_prompt_alone():
    assert answered_tokens(Ending(billing.OK, charged=True, result={"usage": {"prompt_tokens": 7}})) == 7


def test_an_answer_that_counts_no_tokens_and_a_failure_have_none():
    assert answered_tokens(Ending(billing.OK, charged=True, result={"message": "hi"})) is None
    assert answered_tokens(Ending(billing.OK, charged=True, result=[])) is None
    assert answered_tokens(Ending(billing.CLIENT_LEFT, charged=False, result=answer(12, 3))) is None
