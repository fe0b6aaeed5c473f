"""``/admin/api/``: keys, usage, the audit log and the cluster, as JSON (described in /openapi.json)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from accounts.records import RequestEntry, UsageRow
from frontend import errors
from frontend.admin.base import AdminHandler
from frontend.admin.operations import key_view, status_of_outcome
from frontend.admin.schemas import KeyCreate, KeyUpdate
from frontend.handlers.usage import date_argument
from frontend.schemas import parse

DEFAULT_PAGE = 50
DEFAULT_TOP = 10
USAGE_COLUMNS = tuple(field.name for field in fields(UsageRow))
REQUEST_COLUMNS = (*(field.name for field in fields(RequestEntry)), "status")


class AdminApiHandler(AdminHandler):
    def answer(self, value: dict[str, Any], status: int = 200) -> None:
        self.write_json({**value, "request_id": self.request_id}, status)

    def wants_csv(self) -> bool:
        """``format=csv`` asks for a CSV download instead of JSON."""
        wanted = self.get_query_argument("format", "json")
        if wanted not in ("json", "csv"):
            raise errors.ApiError("invalid_value", f"'format' is json or csv (got {wanted!r})")
        return wanted == "csv"


class KeysApi(AdminApiHandler):
    """``GET``: a page of keys (``search``, ``status``, ``limit``, ``offset``); ``POST``: a new key and its secret."""

    async def get(self) -> None:
        limit = self.integer_argument("limit", DEFAULT_PAGE)
        offset = self.integer_argument("offset", 0)
        search = self.get_query_argument("search", None)
        status = self.get_query_argument("status", None) or None
        page = await self.operations.find_keys(search, status, limit, offset)
        keys = [key_view(info) for info in page.keys]
        self.answer({"keys": keys, "total": page.total, "limit": limit, "offset": offset})

    async def post(self) -> None:
        request = parse(KeyCreate, self.body_object())
        info, secret = await self.operations.create_key(request, self.actor)
        self.set_header("Cache-Control", "no-store")
        self.answer({"key": key_view(info), "secret": secret}, 201)


class KeyApi(AdminApiHandler):
    async def get(self, key_id: str) -> None:
        self.answer({"key": key_view(await self.operations.key(int(key_id)))})

    async def patch(self, key_id: str) -> None:
        request = parse(KeyUpdate, self.body_object())
        if not request.model_fields_set:
            raise errors.ApiError("invalid_value", "nothing to update: give at least one field")
        self.answer({"key": key_view(await self.operations.update_key(int(key_id), request, self.actor))})


class RevokeApi(AdminApiHandler):
    async def post(self, key_id: str) -> None:
        self.answer({"key": key_view(await self.operations.revoke_key(int(key_id), self.actor))})


class RotateApi(AdminApiHandler):
    async def post(self, key_id: str) -> None:
        info, secret = await self.operations.rotate_key(int(key_id), self.actor)
        self.set_header("Cache-Control", "no-store")
        self.answer({"key": key_view(info), "secret": secret})


class UsageApi(AdminApiHandler):
    """Usage per day and service, of every key or of one (``/admin/api/keys/{id}/usage``, or ``key``),
    filtered as ``llmapi accounts usage`` filters: ``since``, ``until``, ``service``."""

    async def get(self, key_id: str | None = None) -> None:
        if key_id is None and self.get_query_argument("key", None) is not None:
            key_id = str(self.integer_argument("key", 0))
        rows = await self.operations.usage(
            None if key_id is None else int(key_id),
            date_argument(self, "since"),
            date_argument(self, "until"),
            self.get_query_argument("service", "") or None,
        )
        if self.wants_csv():
            self.write_csv("usage.csv", [row.to_dict() for row in rows], USAGE_COLUMNS)
            return
        self.answer({"usage": [row.to_dict() for row in rows]})


class RequestsApi(AdminApiHandler):
    """Admitted requests, newest first, filtered by ``key``, ``outcome`` (``ok``, ``failed``, or one
    outcome), ``since`` and ``until`` (days, included); a page of ``limit`` from ``offset``."""

    async def get(self) -> None:
        entries = await self.operations.requests(
            **self.request_filters(),
            limit=self.integer_argument("limit", DEFAULT_PAGE),
            offset=self.integer_argument("offset", 0),
        )
        rows = [entry.to_dict() | {"status": status_of_outcome(entry.outcome)} for entry in entries]
        if self.wants_csv():
            self.write_csv("requests.csv", rows, REQUEST_COLUMNS)
            return
        self.answer({"requests": rows})


class TopKeysApi(AdminApiHandler):
    async def get(self) -> None:
        rows = await self.operations.top_keys(
            date_argument(self, "since"),
            date_argument(self, "until"),
            self.get_query_argument("service", None),
            self.integer_argument("limit", DEFAULT_TOP),
        )
        self.answer({"keys": [row.to_dict() for row in rows]})


class AuditApi(AdminApiHandler):
    """Admin changes, oldest first: every key's or one's (``key``), from a day on (``since``)."""

    async def get(self) -> None:
        key = self.get_query_argument("key", None)
        key_id = None if key is None else self.integer_argument("key", 0)
        entries = await self.operations.audit(key_id, date_argument(self, "since"))
        self.answer({"entries": [entry.to_dict() for entry in entries]})


class ClusterApi(AdminApiHandler):
    async def get(self) -> None:
        status = await self.operations.cluster()
        self.answer({"services": status["services"], "counters": status.get("counters", {})})
