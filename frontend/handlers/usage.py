"""``GET /usage/``: the caller's own usage per day, with word and character counts, and what
is left of its quota and token budget."""

from __future__ import annotations

from datetime import date

from tornado.web import RequestHandler

from frontend import errors
from frontend.handlers.base import AuthenticatedHandler


class UsageHandler(AuthenticatedHandler):
    """Query parameters: ``service``, ``since`` and ``until`` (YYYY-MM-DD, inclusive)."""

    async def get(self) -> None:
        key = await self.gateway.identify(self.secret, self.request.remote_ip or "")
        self.identified_prefix = key.prefix
        filters = {
            "service": self.get_query_argument("service", None),
            "since": date_argument(self, "since"),
            "until": date_argument(self, "until"),
        }
        rows = await self.gateway.usage(key.id, **filters)
        self.write_json(
            {
                "key": key.prefix,
                "requests": {"used": key.used, "limit": key.max_requests, "remaining": key.remaining},
                "tokens": {"used": key.tokens_used, "limit": key.token_budget, "remaining": key.tokens_remaining},
                "usage": [row.to_dict() for row in rows],
                "request_id": self.request_id,
            }
        )


def date_argument(handler: RequestHandler, name: str, blank_is_absent: bool = False) -> date | None:
    """The query argument ``name`` as a date (YYYY-MM-DD), None when absent (or empty, for a form's
    blank field when ``blank_is_absent``); a 400 when it is no date."""
    value = handler.get_query_argument(name, None)
    if value is None or (blank_is_absent and not value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise errors.ApiError("invalid_date", f"'{name}' must be a date as YYYY-MM-DD") from None
