"""Turning a checked prompt into the text the model reads.

A chat is rendered with the tokenizer's chat template (with the assistant's
turn opened), so instruct models see the format they were trained on. A
model without a template gets a plain transcript instead. ``prompt`` is
always continued as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker.errors import InvalidInput
from gpuworker.models.params import Prompt


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """The model's input text; ``add_special_tokens`` is false when a chat template placed them already."""

    text: str
    add_special_tokens: bool


def render_prompt(
    tokenizer: Any, prompt: Prompt, text_as_chat: bool, tools: Sequence[dict[str, Any]] = ()
) -> RenderedPrompt:
    """The text for ``prompt``: ``text`` is one user message when ``text_as_chat`` and the tokenizer has a
    template. ``tools`` (OpenAI function tools) go to the template, which describes them to the model."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt.messages is not None:
        messages: Sequence[dict[str, str]] = prompt.messages
    elif prompt.raw or not (text_as_chat and has_template):
        return RenderedPrompt(prompt.text or "", add_special_tokens=True)
    else:
        messages = [{"role": "user", "content": prompt.text or ""}]
    if not has_template:
        return RenderedPrompt(plain_transcript(messages), add_special_tokens=True)
    return RenderedPrompt(_apply_template(tokenizer, messages, tools), add_special_tokens=False)


def _apply_template(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages), tools=list(tools) or None, add_generation_prompt=True, tokenize=False
        )
    except TemplateError as exc:  # templates reject some chats, e.g. roles that do not alternate
        raise InvalidInput(f"the model's chat template refused these messages: {exc}") from None


def plain_transcript(messages: Sequence[dict[str, str]]) -> str:
    """A chat as plain text, ending where the assistant's reply starts (for models without a template)."""
    turns = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n\n".join([*turns, "Assistant:"])
