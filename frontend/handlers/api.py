"""``POST /api/``, ``/analyze/`` and ``/api/<service>/``: the Django server's API, kept as its clients call it."""

from __future__ import annotations

from typing import Any

from frontend import errors
from frontend.handlers.base import GONE, JsonBodyHandler


class ApiHandler(JsonBodyHandler):
    """Sends ``{"text": ...}`` to a service; answers ``{"message": <output>, "request_id": ...}``."""

    async def post(self, service: str | None = None) -> None:
        settings = self.gateway.settings
        self.service = service or settings.default_service
        payload = self.json_body()
        text = payload.get("text")
        if not isinstance(text, str):
            raise errors.ApiError("invalid_text", "the body needs a string field 'text'")
        self.check_text_length(len(text), "text")
        result = await self.cancellable(self.gateway.complete(self.new_call(), payload))
        if result is not GONE:
            answer = {"message": message_of(result), "request_id": self.request_id}
            if isinstance(result, dict) and isinstance(result.get("finish_reason"), str):
                answer["finish_reason"] = result["finish_reason"]
            self.write_json(answer)


def message_of(result: Any) -> Any:
    """What older clients read as ``message``: the algorithm's ``output``, else its whole result."""
    if isinstance(result, dict) and "output" in result:
        return result["output"]
    return result
