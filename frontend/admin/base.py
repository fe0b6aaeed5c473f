"""The admin handlers' base: who is asking (an admin token, by header or by session), CSRF, throttling."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from accounts import keys, times
from accounts.records import Actor, AdminTokenInfo
from config.settings import AdminSettings
from frontend import errors
from frontend.admin.export import csv_text
from frontend.admin.operations import AdminOperations, console_actor
from frontend.admin.sessions import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, csrf_matches, session_csrf
from frontend.gateway import Gateway
from frontend.handlers.base import BaseHandler, bearer_secret, json_object
from frontend.handlers.usage import date_argument
from frontend.key_brake import KeyBrake

ADMIN_PATH = "/admin/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ADMIN_BODY = 64 * 1024


@dataclass
class ConsoleContext:
    """What every admin handler shares: the ``[admin]`` settings, the operations, the brake on
    failed sign-ins, and the clock the brake reads."""

    settings: AdminSettings
    operations: AdminOperations
    throttle: KeyBrake
    clock: Callable[[], float] = field(default=time.monotonic)


class AdminHandler(BaseHandler):
    """Lets in an admin token, given as ``Authorization: Bearer`` or by a console session;
    a state-changing request made with a session must carry its CSRF token.
    ``console`` is passed by the route table."""

    realm = "llmapi admin"

    def initialize(self, gateway: Gateway, console: ConsoleContext) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.console = console
        self.operations = console.operations
        self.admin: AdminTokenInfo | None = None
        self.session: str | None = None  # the console session's secret, from its cookie

    async def prepare(self) -> None:
        super().prepare()
        header = self.request.headers.get("Authorization")
        if header is not None:
            self.admin = await self._bearer(header)
            return
        self.session = await self._session()
        if self.session is None:
            self.not_signed_in()
            return
        if self.request.method not in SAFE_METHODS:
            self.check_csrf(session_csrf(self.session))

    def integer_argument(self, name: str, default: int) -> int:
        value = self.get_query_argument(name, None)
        if value is None or value == "":
            return default
        if not value.isdigit() or len(value) > 9:
            raise errors.ApiError("invalid_value", f"'{name}' must be a whole number (got {value!r})")
        return int(value)

    def request_filters(self) -> dict[str, Any]:
        """The requests view's filters from the query: ``key`` (an id), ``outcome`` (``ok``,
        ``failed``, or one outcome), ``since`` and ``until`` (days, both included)."""
        key = self.integer_argument("key", 0)
        since, until = date_argument(self, "since", True), date_argument(self, "until", True)
        return {
            "key_id": key or None,
            "outcome": self.get_query_argument("outcome", "").strip() or None,
            "since": None if since is None else times.start_of_day(since),
            "until": None if until is None else times.start_of_day(until + timedelta(days=1)),
        }

    def write_csv(self, name: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
        """``rows`` as a CSV download named ``name``."""
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.finish(csv_text(rows, columns))

    def not_signed_in(self) -> None:
        """No credential came with the request: the API answers 401 (pages send people to sign in)."""
        raise errors.ApiError(
            "sign_in_required",
            "an admin token is required: send 'Authorization: Bearer <admin token>' or sign in to the console",
        )

    @property
    def actor(self) -> Actor:
        if self.admin is None:
            raise RuntimeError("no admin token: prepare() lets no request through without one")
        return console_actor(self.admin, self.request.remote_ip or "")

    async def _bearer(self, header: str) -> AdminTokenInfo:
        self.check_throttle()
        secret = bearer_secret(header, "admin token")
        if secret.startswith(keys.KEY_PREFIX):
            await self.sign_in_failed()
            raise errors.ApiError(
                "api_key_not_accepted",
                "an API key cannot open /admin/; use an admin token (llmapi accounts admin create)",
            )
        return await self.authenticate(secret)

    async def authenticate(self, secret: str) -> AdminTokenInfo:
        """The admin token of ``secret``; a refusal counts as a failed sign-in from this address."""
        try:
            return await self.operations.authenticate(secret)
        except errors.ApiError as error:
            if error.status == 401:
                await self.sign_in_failed()
            raise

    def check_throttle(self) -> None:
        wait = self.console.throttle.blocked_for(self.request.remote_ip or "", self.console.clock())
        if wait > 0:
            raise errors.ApiError(
                "too_many_sign_ins", f"too many failed sign-ins from this address; try again in {math.ceil(wait)} s"
            ).wait(wait)

    async def sign_in_failed(self) -> None:
        """Count a failed sign-in from this address where every frontend sees it."""
        await self.console.throttle.count_failure(
            self.request.remote_ip or "", self.gateway.record_failure, self.console.clock()
        )

    async def _session(self) -> str | None:
        session = self.get_cookie(SESSION_COOKIE)
        if not session:
            return None
        try:
            self.admin = await self.operations.console_session(session)
        except errors.ApiError as error:
            if error.status != 401:
                raise
            self.clear_cookie(SESSION_COOKIE, path=ADMIN_PATH)  # ended, expired, or its token revoked
            return None
        return session

    def check_csrf(self, expected: str) -> None:
        given = self.request.headers.get(CSRF_HEADER) or self.get_body_argument(CSRF_FIELD, None)
        if not csrf_matches(expected, given):
            raise errors.ApiError(
                "csrf_token_invalid",
                f"a change made with a console session needs its CSRF token ({CSRF_HEADER} header or "
                f"{CSRF_FIELD} form field); reload the page and try again",
            )

    def body_object(self) -> dict[str, Any]:
        if len(self.request.body) > MAX_ADMIN_BODY:
            raise errors.body_too_large(MAX_ADMIN_BODY)
        return json_object(self.request.body)
