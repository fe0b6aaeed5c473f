"""The Responses API: ``POST /v1/responses``, whole or streamed as typed events, and the
responses a key kept, read (``GET``) and deleted (``DELETE /v1/responses/{id}``).

A Responses request is a chat under another shape: its input items (and,
with ``previous_response_id``, the conversation a response of the same key
ended) become the messages a worker continues, through the same gateway,
policies and error table as chat completions: admitted, charged and
recorded once. A response made with ``store`` (the default) is kept in the
accounts database for ``accounts.response_retention`` seconds, for its key
alone, with the conversation it ends.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from broker.contract.generation import GenerationResult
from frontend import errors, schemas
from frontend import responses_format as fmt
from frontend.gateway import StreamEvent
from frontend.handlers.base import GONE, AuthenticatedHandler
from frontend.handlers.openai_api import OpenAIErrors, ServerSentEvents

log = structlog.get_logger(__name__)


class ResponsesHandler(OpenAIErrors, ServerSentEvents):
    """``POST /v1/responses``."""

    async def post(self) -> None:
        body = schemas.parse(schemas.ResponsesRequest, self.json_body())
        schemas.check_enforceable(body)
        view = await self.checked_model(body.model, "chat", "responses")
        if view is not None:
            view.refuse_over_limits(body.max_output_tokens, "max_output_tokens", None)
        conversation = await self._earlier(body) + body.input_items()
        request = body.worker_request(conversation)
        self.check_text_length(request.text_length, "input")
        payload = request.to_wire()
        if body.stream:
            await self.cancellable(self._send_events(body, payload, conversation))
            return
        result = await self.cancellable(self.gateway.complete(self.new_call(), payload))
        if result is GONE:
            return
        answer = GenerationResult.read(result)
        response = fmt.response_object(body, self.request_id, self.service or "", time.time(), answer)
        await self._keep(body, response, conversation)
        self.write_json(response)

    async def _earlier(self, body: schemas.ResponsesRequest) -> list[dict[str, Any]]:
        """The conversation ``previous_response_id`` ended, when the caller's key kept it (else 404,
        before admission: nothing is charged)."""
        wanted = body.previous_response_id
        if wanted is None:
            return []
        key = await self.gateway.identify(self.secret, self.request.remote_ip or "")
        found = await self.gateway.accounts(lambda: self.gateway.store.stored_response(key.id, wanted))
        if found is None:
            raise _not_kept(wanted, param="previous_response_id")
        return found[1]

    async def _keep(
        self, body: schemas.ResponsesRequest, response: dict[str, Any] | None, conversation: list[Any]
    ) -> None:
        admission = self.call.admission if self.call is not None else None
        if not body.kept or admission is None or response is None:
            return
        kept = [*conversation, *response["output"]]
        try:
            await self.gateway.accounts(lambda: self.gateway.store.save_response(admission.key_id, response, kept))
        except errors.ApiError as error:
            log.warning("response_not_kept", response_id=response["id"], reason=error.message)

    async def _send_events(
        self, body: schemas.ResponsesRequest, payload: dict[str, Any], conversation: list[Any]
    ) -> None:
        """Relay the stream as typed events; one that fails ends with an ``error`` event."""
        events = fmt.ResponseEvents(body, self.request_id, self.service or "")

        async def send(event: StreamEvent) -> None:
            if event.piece is not None:
                self._write(events.text_delta(event.piece.text))
            if event.summary is not None:
                closing = events.closing(event.summary)
                await self._keep(body, events.final, conversation)
                self._write(closing)
            await self.flush()

        def failing(error: errors.ApiError) -> None:
            self._write([events.failed(error.code, error.message, error.param)])

        stream = self.gateway.stream(self.new_call(), payload)
        await self.relay_events(stream, lambda: self._write(events.opening()), send, lambda: None, failing)

    def _write(self, events: list[str]) -> None:
        for event in events:
            self.write(event)


class StoredResponseHandler(OpenAIErrors, AuthenticatedHandler):
    """``GET`` and ``DELETE /v1/responses/{id}``: a response the caller's key kept."""

    async def get(self, response_id: str) -> None:
        key = await self.gateway.identify(self.secret, self.request.remote_ip or "")
        self.identified_prefix = key.prefix
        found = await self.gateway.accounts(lambda: self.gateway.store.stored_response(key.id, response_id))
        if found is None:
            raise _not_kept(response_id)
        self.write_json(found[0])

    async def delete(self, response_id: str) -> None:
        key = await self.gateway.identify(self.secret, self.request.remote_ip or "")
        self.identified_prefix = key.prefix
        if not await self.gateway.accounts(lambda: self.gateway.store.delete_response(key.id, response_id)):
            raise _not_kept(response_id)
        self.write_json(fmt.deleted(response_id))


def _not_kept(response_id: str, param: str | None = None) -> errors.ApiError:
    return errors.ApiError("response_not_found", f"no response {response_id!r} kept for this key", param=param)
