"""The OpenAI-compatible API under ``/v1``: models, chat and text completions
(streamed as server-sent events on request) and embeddings.

``model`` names a service. Bodies are parsed by ``frontend.schemas``; a
model nobody serves is a 404 ``model_not_found`` and a model that cannot
serve the route a 400, both before the request is admitted (so never
charged). Errors use OpenAI's shape, with ``param`` naming the field at
fault, so the official SDKs raise their matching exception classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from tornado.iostream import StreamClosedError

from broker.contract.embedding import EmbeddingResult
from broker.contract.generation import GenerationResult
from broker.errors import BusError
from frontend import errors, schemas
from frontend import openai_format as fmt
from frontend.gateway import StreamEvent
from frontend.handlers.base import GONE, AuthenticatedHandler, BaseHandler, JsonBodyHandler


class OpenAIErrors:
    """Mixin: errors in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape."""

    def error_body(self, status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
        return fmt.error_object(code, message, param)


class ServerSentEvents(JsonBodyHandler):
    """An answer sent as server-sent events, unbuffered by proxies."""

    def start_events(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def relay_events(
        self,
        stream: AsyncGenerator[StreamEvent, None],
        opening: Callable[[], None],
        send: Callable[[StreamEvent], Awaitable[None]],
        closing: Callable[[], None],
        failing: Callable[[errors.ApiError], None],
    ) -> None:
        """Relay ``stream``: the headers and ``opening`` go out with its first event, so an error
        before it is an ordinary HTTP error; ``closing`` ends a stream that completed, and
        ``failing`` one that failed after its first event or that the server stops. The status
        is sent by then, but the log line and the metrics name the error's code."""
        started = False
        async with contextlib.aclosing(stream):
            try:
                async for event in stream:
                    if not started:
                        started = True
                        self.start_events()
                        opening()
                    await send(event)
                closing()
            except errors.ApiError as error:
                if not started:
                    raise
                self.error_code = error.code
                failing(error)
            except StreamClosedError:
                return
            except asyncio.CancelledError:
                if not (started and self._stopping):
                    raise
                stopping = errors.shutting_down()
                self.error_code = stopping.code
                failing(stopping)
        self.finish()


class ModelsHandler(OpenAIErrors, AuthenticatedHandler):
    """``GET /v1/models`` and ``GET /v1/models/{model}``: the services the caller's key
    may use that have a live worker serving an OpenAI route."""

    async def get(self, model: str | None = None) -> None:
        key = await self.gateway.identify(self.secret, self.request.remote_ip or "")
        self.identified_prefix = key.prefix
        try:
            available = await self.gateway.directory.models()
        except BusError as error:
            raise errors.from_bus(error) from None
        allowed = [name for name in available if key.services is None or name in key.services]
        if model is None:
            self.write_json(fmt.model_list(allowed))
        elif model in allowed:
            self.write_json(fmt.model_object(model))
        else:
            raise errors.model_not_found(model)


class _GenerationHandler(OpenAIErrors, ServerSentEvents):
    request_model: type[schemas.ChatCompletionRequest] | type[schemas.CompletionRequest]
    capability = ""
    what = ""

    def build_response(self, results: list[GenerationResult]) -> dict[str, Any]:
        raise NotImplementedError

    async def post(self) -> None:
        body = schemas.parse(self.request_model, self.json_body())
        schemas.check_enforceable(body)
        request = body.worker_request()
        view = await self.checked_model(body.model, self.capability, self.what)
        if view is not None:
            budget_param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
            view.refuse_over_limits(request.token_budget, budget_param, request.stops)
        self.check_text_length(request.text_length, "messages" if self.capability == "chat" else "prompt")
        choices = body.n or 1
        if choices > self.gateway.settings.max_choices:
            raise errors.invalid_parameter("n", f"'n' must be at most {self.gateway.settings.max_choices}")
        payload = request.to_wire()
        if body.stream:
            with_usage = body.stream_options is not None and body.stream_options.include_usage
            chat = self.capability == "chat"
            chunks = fmt.ChunkWriter(chat, self.request_id, self.service or "", with_usage, choices)
            await self.cancellable(self._send_events(payload, choices, chunks))
            return
        results = await self.cancellable(self.gateway.complete(self.new_call(), payload, choices))
        if results is not GONE:
            self.write_json(self.build_response([GenerationResult.read(result) for result in results]))

    async def _send_events(self, payload: dict[str, Any], choices: int, chunks: fmt.ChunkWriter) -> None:
        """Relay a stream as chunks; it ends with ``[DONE]``, after an error event if it failed."""
        summaries: list[GenerationResult] = []

        async def send(event: StreamEvent) -> None:
            if event.piece is not None:
                self._events([chunks.piece(event.piece.text, event.index, event.piece.logprobs)])
            if event.summary is not None:
                summaries.append(event.summary)
                if event.summary.output:  # an algorithm that does not stream
                    self._events([chunks.piece(event.summary.output, event.index)])
                self._events(chunks.finish(event.summary, event.index))
            await self.flush()

        def failing(error: errors.ApiError) -> None:
            self._events([fmt.error_object(error.code, error.message, error.param)])
            self.write("data: [DONE]\n\n")

        def closing() -> None:
            self._events(chunks.usage(summaries))
            self.write("data: [DONE]\n\n")

        stream = self.gateway.stream(self.new_call(), payload, choices)
        await self.relay_events(stream, lambda: self._events(chunks.opening()), send, closing, failing)

    def _events(self, values: list[dict[str, Any]]) -> None:
        for value in values:
            self.write(f"data: {json.dumps(value, ensure_ascii=False)}\n\n")


class ChatCompletionsHandler(_GenerationHandler):
    """``POST /v1/chat/completions``."""

    request_model = schemas.ChatCompletionRequest
    capability = "chat"
    what = "chat completions"

    def build_response(self, results: list[GenerationResult]) -> dict[str, Any]:
        return fmt.chat_completion(results, self.request_id, self.service or "")


class CompletionsHandler(_GenerationHandler):
    """``POST /v1/completions``."""

    request_model = schemas.CompletionRequest
    capability = "completion"
    what = "text completions"

    def build_response(self, results: list[GenerationResult]) -> dict[str, Any]:
        return fmt.text_completion(results, self.request_id, self.service or "")


class EmbeddingsHandler(OpenAIErrors, JsonBodyHandler):
    """``POST /v1/embeddings``: floats, or base64 of little-endian float32 when asked."""

    async def post(self) -> None:
        body = schemas.parse(schemas.EmbeddingRequest, self.json_body())
        await self.checked_model(body.model, "embedding", "embeddings")
        self.check_text_length(body.text_length, "input")
        result = await self.cancellable(self.gateway.complete(self.new_call(), body.worker_request()))
        if result is not GONE:
            answer = EmbeddingResult.read(result)
            self.write_json(fmt.embeddings(answer, self.service or "", body.encoding_format or "float"))


class OpenAINotFoundHandler(OpenAIErrors, BaseHandler):
    """Any other path under ``/v1``: a 404 in OpenAI's shape."""

    def prepare(self) -> None:
        super().prepare()
        raise errors.ApiError("not_found", f"no such endpoint: {self.request.method} {self.request.path}")
