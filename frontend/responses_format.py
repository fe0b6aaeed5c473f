"""The Responses API's objects and streamed events, built from a worker's answer.

A worker answers a Responses request as it answers a chat: text, tool calls,
why it ended, usage. Here that becomes a ``response`` object whose
``output`` holds an assistant ``message`` item (its ``output_text``) and a
``function_call`` item per call, and, streamed, the typed events the
OpenAI SDKs read: ``response.created``, ``response.in_progress``, the items
and content parts added, ``response.output_text.delta`` as text comes,
``response.function_call_arguments.delta``/``.done`` for each call, the
items done, then ``response.completed`` (``response.incomplete`` when the
token budget ran out). Plain dicts, as ``frontend.openai_format`` builds.
"""

from __future__ import annotations

import json
import time
from typing import Any

from broker.contract.generation import GenerationResult, MadeCall
from frontend.schemas import NamedFunctionChoice, ResponsesRequest


def response_id(request_id: str) -> str:
    return f"resp_{request_id}"


def _ended_short(result: GenerationResult) -> bool:
    return result.finish_reason == "length"


def output_items(result: GenerationResult, request_id: str, forced_call: bool) -> list[dict[str, Any]]:
    """The answer's items: its text as a message, then each call. A forced call cut short by the
    budget is no call and no text: the answer ends incomplete with nothing half made passed on."""
    calls = result.tool_calls or []
    if forced_call and not calls and _ended_short(result):
        return []
    items = []
    text = result.output
    if text or not calls:
        items.append(message_item(request_id, text, "incomplete" if _ended_short(result) else "completed"))
    items += [function_call_item(request_id, index, call) for index, call in enumerate(calls)]
    return items


def message_item(request_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{request_id}", "status": status, "role": "assistant",
            "content": [output_text(text)]}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(request_id: str, index: int, call: MadeCall) -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{request_id}_{index}", "call_id": call.id,
            "name": call.function.name, "arguments": call.function.arguments, "status": "completed"}


def usage(result: GenerationResult) -> dict[str, Any]:
    counts = result.usage
    prompt, completion = counts.prompt_tokens or 0, counts.completion_tokens or 0
    cached = counts.cached_tokens or 0
    return {
        "input_tokens": prompt,
        # Prompt tokens found in the worker's prefix cache; a request writes to it without counting.
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(
    request: ResponsesRequest,
    request_id: str,
    model: str,
    created_at: float,
    result: GenerationResult | None = None,
) -> dict[str, Any]:
    """The ``response``: in progress (no ``result`` yet), else completed or incomplete with its output."""
    if result is None:
        status, output, used, incomplete = "in_progress", [], None, None
    else:
        output = output_items(result, request_id, forced_call(request))
        incomplete = {"reason": "max_output_tokens"} if _ended_short(result) else None
        status, used = ("incomplete" if incomplete else "completed"), usage(result)
    return {
        "id": response_id(request_id),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.kept,
        "temperature": request.temperature,
        "text": {"format": _format(request)},
        "tool_choice": _tool_choice(request),
        "tools": [{**tool.model_dump(exclude_none=True), "strict": bool(tool.strict)} for tool in request.tools or ()],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": used,
        "user": request.user,
    }


def forced_call(request: ResponsesRequest) -> bool:
    choice = request.tool_choice
    return bool(request.tools) and (choice == "required" or isinstance(choice, NamedFunctionChoice))


def _format(request: ResponsesRequest) -> dict[str, Any]:
    form = request.format()
    return {"type": "text"} if form is None else form.model_dump(by_alias=True, exclude_none=True)


def _tool_choice(request: ResponsesRequest) -> Any:
    choice = request.tool_choice
    return choice.model_dump() if isinstance(choice, NamedFunctionChoice) else choice or "auto"


def deleted(response_id_: str) -> dict[str, Any]:
    return {"id": response_id_, "object": "response.deleted", "deleted": True}


class ResponseEvents:
    """The server-sent events of one streamed response, numbered in order (``sequence_number``),
    each as the text that carries it (``event:`` its type, ``data:`` the event). The text
    deltas, one per piece, are written from a template: their only changing parts are the
    number and the text."""

    def __init__(self, request: ResponsesRequest, request_id: str, model: str) -> None:
        self.request = request
        self.request_id = request_id
        self.model = model
        self.created_at = time.time()
        self.sequence = 0
        self.text = ""
        self.message_open = False
        self.final: dict[str, Any] | None = None  # the whole response, once closed
        self._delta = (
            'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "sequence_number": %d, '
            f'"item_id": "msg_{request_id}", "output_index": 0, "content_index": 0, "delta": %s, "logprobs": []}}\n\n'
        )

    def _event(self, kind: str, **fields: Any) -> str:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    def opening(self) -> list[str]:
        progress = response_object(self.request, self.request_id, self.model, self.created_at)
        created = self._event("response.created", response=progress)
        return [created, self._event("response.in_progress", response=progress)]

    def text_delta(self, delta: str) -> list[str]:
        if not delta:
            return []
        events = [] if self.message_open else self._open_message()
        self.text += delta
        events.append(self._delta % (self.sequence, json.dumps(delta, ensure_ascii=False)))
        self.sequence += 1
        return events

    def _open_message(self) -> list[str]:
        self.message_open = True
        item = {**message_item(self.request_id, "", "in_progress"), "content": []}
        return [
            self._event("response.output_item.added", output_index=0, item=item),
            self._event("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                        part=output_text("")),
        ]

    def closing(self, result: GenerationResult) -> list[str]:
        """The events that end the stream: the items done, then the whole response (kept as
        :attr:`final`). ``result`` is the stream's summary; its text is what was streamed (or,
        from an algorithm that does not stream, its whole ``output``)."""
        result = result.model_copy(update={"output": result.output or self.text})
        final = self.final = response_object(self.request, self.request_id, self.model, self.created_at, result)
        events: list[str] = []
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                events += self._message_done(item, index)
            else:
                events += self._call_made(item, index)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=final)]

    def _message_done(self, item: dict[str, Any], index: int) -> list[str]:
        events = [] if self.message_open else self._open_message()
        text = item["content"][0]["text"]
        if text != self.text:  # an algorithm that does not stream: its whole text at once
            events += self.text_delta(text[len(self.text):])
        return [
            *events,
            self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                        text=text, logprobs=[]),
            self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                        part=item["content"][0]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _call_made(self, item: dict[str, Any], index: int) -> list[str]:
        return [
            self._event("response.output_item.added", output_index=index,
                        item={**item, "arguments": "", "status": "in_progress"}),
            self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=item["arguments"]),
            self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def failed(self, code: str, message: str, param: str | None) -> str:
        return self._event("error", code=code, message=message, param=param)
