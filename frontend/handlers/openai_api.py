"""The OpenAI-compatible API under ``/v1``: models, chat and text completions
(streamed as server-sent events on request) and embeddings.

``model`` names a service. Errors use OpenAI's shape, so the official SDKs
raise their matching exception classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tornado.iostream import StreamClosedError

from broker.errors import BusError
from frontend import errors
from frontend import openai_format as fmt
from frontend.gateway import StreamEvent
from frontend.handlers.base import GONE, AuthenticatedHandler, JsonBodyHandler


class OpenAIErrors:
    """Mixin: errors in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape."""

    def error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        return fmt.error_object(status, code, message)


class ModelsHandler(OpenAIErrors, AuthenticatedHandler):
    """``GET /v1/models``: the services the caller's key may use that have workers."""

    async def get(self) -> None:
        key = await self.gateway.identify(self.secret)
        self.key_prefix = key.prefix
        try:
            status = await self.gateway.bus.status()
        except BusError as error:
            raise errors.from_bus(error) from None
        available = sorted(status["services"])
        allowed = [name for name in available if key.services is None or name in key.services]
        self.write_json(fmt.model_list(allowed))


class _GenerationHandler(OpenAIErrors, JsonBodyHandler):
    chat = True

    def build_request(self, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def build_response(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    async def post(self) -> None:
        body = self.json_body()
        self.service = fmt.model_of(body)
        request = self.build_request(body)
        choices = fmt.choices_wanted(body, self.gateway.settings.max_choices)
        stream = fmt.wants_stream(body)
        chunks = fmt.ChunkWriter(self.chat, self.request_id, self.service, fmt.include_usage(body), choices) if stream else None
        if chunks is not None:
            await self.cancellable(self._send_events(request, choices, chunks))
            return
        results = await self.cancellable(self._answer(request, choices))
        if results is not GONE:
            self.write_json(self.build_response(results))

    async def _answer(self, request: dict[str, Any], choices: int) -> list[dict[str, Any]]:
        return await self.gateway.complete_choices(await self.admitted(), self.request_id, request, choices)

    async def _send_events(self, request: dict[str, Any], choices: int, chunks: fmt.ChunkWriter) -> None:
        """Relay a stream as server-sent events; headers go out with the first piece,
        so errors before it are ordinary HTTP errors, and one after it is an error
        event followed by ``[DONE]``."""
        events = self.gateway.stream(await self.admitted(), self.request_id, request, choices)
        started = False
        summaries: list[dict[str, Any]] = []
        async with contextlib.aclosing(events):
            try:
                async for event in events:
                    if not started:
                        started = True
                        self._start_events()
                        for chunk in chunks.opening():
                            self._event(chunk)
                    await self._relay(event, chunks)
                    if event.summary is not None:
                        summaries.append(event.summary)
                for chunk in chunks.usage(summaries):
                    self._event(chunk)
            except errors.ApiError as error:
                if not started:
                    raise
                self._event(fmt.error_object(error.status_code, error.code, error.message))
                self.write("data: [DONE]\n\n")
                self.finish()
                return
            except StreamClosedError:
                return
            except asyncio.CancelledError:
                if not (started and self._stopping):
                    raise
                self._event(fmt.error_object(503, "shutting_down", "this server is restarting; retry"))
                self.write("data: [DONE]\n\n")
                self.finish()
                return
        self.write("data: [DONE]\n\n")
        self.finish()

    def _start_events(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def _relay(self, event: StreamEvent, chunks: fmt.ChunkWriter) -> None:
        if event.summary is None:
            text = event.piece.get("text", "") if isinstance(event.piece, dict) else ""
            self._event(chunks.piece(text, event.index))
        else:
            whole = event.summary.get("output")
            if isinstance(whole, str) and whole:  # an algorithm that does not stream
                self._event(chunks.piece(whole, event.index))
            self._event(chunks.finish(event.summary, event.index))
        await self.flush()

    def _event(self, value: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(value, ensure_ascii=False)}\n\n")

class ChatCompletionsHandler(_GenerationHandler):
    """``POST /v1/chat/completions``."""

    chat = True

    def build_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return fmt.chat_request(body)

    def build_response(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return fmt.chat_completion(results, self.request_id, self.service or "")


class CompletionsHandler(_GenerationHandler):
    """``POST /v1/completions``."""

    chat = False

    def build_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return fmt.completion_request(body)

    def build_response(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return fmt.text_completion(results, self.request_id, self.service or "")


class EmbeddingsHandler(OpenAIErrors, JsonBodyHandler):
    """``POST /v1/embeddings``: floats, or base64 of little-endian float32 when asked."""

    async def post(self) -> None:
        body = self.json_body()
        self.service = fmt.model_of(body)
        request, encoding = fmt.embedding_request(body)
        result = await self.cancellable(self._answer(request))
        if result is not GONE:
            self.write_json(fmt.embeddings(result, self.service, encoding))

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.gateway.complete(await self.admitted(), self.request_id, request)
