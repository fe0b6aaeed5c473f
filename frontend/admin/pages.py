"""The console's pages: Tornado templates, rendered on the server, with forms that post back.

Signing in turns an admin token into a session cookie (HttpOnly,
SameSite=Strict, Secure over TLS); every form carries the session's CSRF
token. A new secret (a created or rotated key) is shown in the answer to
the form that made it, once, and never stored.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

from accounts import limits, times
from accounts.records import KeyInfo
from frontend import errors
from frontend.admin import views
from frontend.admin.base import ADMIN_PATH, SAFE_METHODS, AdminHandler
from frontend.admin.operations import days_between, last_days
from frontend.admin.schemas import KeyCreate, KeyUpdate
from frontend.admin.sessions import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_LIFETIME,
    csrf_matches,
    new_nonce,
    session_csrf,
    sign_in_csrf,
)
from frontend.handlers.usage import date_argument
from frontend.schemas import parse

PAGE_SIZE = 25
REQUESTS_PAGE = 50
AUDIT_PAGE = 500
LATENCY_WINDOW = timedelta(hours=24)
# The requests view's outcome filter: its choices (the value, and what the menu says).
REQUEST_OUTCOMES = (
    ("", "any"), ("ok", "answered"), ("failed", "failed or refused"), ("invalid_input", "invalid input"),
    ("timeout", "timed out"), ("worker_error", "worker error"), ("client_left", "client left"),
)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_FORM_FIELDS = (
    "email", "name", "organisation", "note", "max_requests", "valid_from", "valid_until", "services", "keep_texts",
    *limits.BY_NAME,
)


class ConsolePage(AdminHandler):
    """An HTML page: people who are not signed in are sent to the sign-in page; errors are pages too.
    ``nav`` names the menu entry the page belongs to."""

    nav = ""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def not_signed_in(self) -> None:
        if self.request.method in SAFE_METHODS:
            self.redirect(f"{ADMIN_PATH}sign-in?next={quote(self.request.uri or ADMIN_PATH)}")
        else:
            self.redirect(f"{ADMIN_PATH}sign-in", status=303)

    def page(self, template: str, status: int = 200, **values: Any) -> None:
        self.set_status(status)
        csrf = "" if self.session is None else session_csrf(self.session)
        self.render(template, admin=self.admin, csrf=csrf, csrf_field=CSRF_FIELD, views=views, nav=self.nav, **values)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        message = error.message if isinstance(error, errors.ApiError) else self._reason
        if isinstance(error, errors.ApiError):
            for name, value in self.error_headers(error).items():
                self.set_header(name, value)
        self.page("error.html", status_code, message=message, signed_in=self.admin is not None)

    async def show_key(
        self,
        info: KeyInfo,
        status: int = 200,
        secret: str | None = None,
        message: str = "",
        error: str = "",
        form: dict[str, str] | None = None,
    ) -> None:
        """The key page of ``info``: with its new ``secret`` once, after a creation or a rotation."""
        days = last_days(times.utcnow().date())
        rows = await self.operations.usage(info.id, days[0], days[-1], None)
        audit = await self.operations.audit(info.id, None)
        self.page(
            "key.html", status, key=info, secret=secret, message=message, error=error,
            form=form or views.form_values(info), charts=views.daily_charts("key", rows, days),
            services=views.per_service(rows), audit=list(reversed(audit)), now=times.utcnow(),
        )

    def form_request(self, kind: type[KeyCreate] | type[KeyUpdate]) -> Any:
        """The form's key fields as the API's request model: blanks clear, services are comma-separated."""
        body: dict[str, Any] = {}
        for name in _FORM_FIELDS:
            value = self.get_body_argument(name, None)
            if value is not None:
                body[name] = _form_value(name, value.strip())
        if self.get_body_argument("reset_used", None):
            body["reset_used"] = True
        body["keep_texts"] = self.get_body_argument("keep_texts", None) is not None  # a box left unticked is absent
        return parse(kind, body)


def _form_value(name: str, value: str) -> Any:
    if name == "max_requests" or name in limits.BY_NAME:
        if not value:  # blank: unlimited, or the limit's default
            return limits.BY_NAME[name].default if name in limits.BY_NAME else None
        if not (value.isascii() and value.isdigit()) or len(value) > 20:
            raise errors.invalid_parameter(name, f"'{name}' must be a whole number (got {value!r})")
        return int(value)
    if name == "services":
        names = [part.strip() for part in value.split(",") if part.strip()]
        return names or None
    if name in ("valid_from", "valid_until"):
        return value or None
    return value


class SignIn(ConsolePage):
    """The sign-in form: an admin token in, a session cookie out; failures are throttled."""

    async def prepare(self) -> None:
        super(AdminHandler, self).prepare()  # no one is signed in yet

    def get(self) -> None:
        self.show_form()

    def show_form(self, status: int = 200, message: str = "") -> None:
        nonce = new_nonce()
        self.set_cookie(SIGN_IN_COOKIE, nonce, expires_days=SIGN_IN_LIFETIME / 86400, **self.cookie_options())
        self.page("sign_in.html", status, message=message, form_token=sign_in_csrf(nonce), next=self._next())

    async def post(self) -> None:
        nonce = self.get_cookie(SIGN_IN_COOKIE)
        expected = "" if not nonce else sign_in_csrf(nonce)
        if not nonce or not csrf_matches(expected, self.get_body_argument(CSRF_FIELD, None)):
            self.show_form(403, "This form has expired or did not come from this console; please sign in again.")
            return
        try:
            self.check_throttle()
            token = await self.authenticate(self.get_body_argument("token", "").strip())
        except errors.ApiError as error:
            if error.status not in (401, 429):
                raise
            for name, value in self.error_headers(error).items():
                self.set_header(name, value)
            self.show_form(error.status, _sign_in_message(error))
            return
        lifetime = self.console.settings.session_lifetime
        session = await self.operations.open_console_session(token.id, lifetime)
        self.clear_cookie(SIGN_IN_COOKIE, path=ADMIN_PATH)
        self.set_cookie(SESSION_COOKIE, session, expires_days=lifetime / 86400, **self.cookie_options())
        self.redirect(self._next(), status=303)

    def cookie_options(self) -> dict[str, Any]:
        """Session cookies: for /admin/ only, out of scripts' reach, never sent by other sites, HTTPS-only over TLS."""
        return {"path": ADMIN_PATH, "httponly": True, "samesite": "Strict", "secure": self.request.protocol == "https"}

    def _next(self) -> str:
        target = self.get_argument("next", f"{ADMIN_PATH}keys")
        # Only a path of this console: never another site.
        return target if target.startswith(ADMIN_PATH) and not target.startswith("//") else f"{ADMIN_PATH}keys"


def _sign_in_message(error: errors.ApiError) -> str:
    if error.status == 429:
        return f"Too many failed sign-ins from this address: {error.message.split('; ', 1)[1]}."
    return "That is not a valid admin token (or it has been revoked). Admin tokens start with llmadm_."


class SignOut(ConsolePage):
    """Ends the session where every frontend sees it, not only in this browser."""

    async def post(self) -> None:
        if self.session is not None:
            await self.operations.end_console_session(self.session)
        self.clear_cookie(SESSION_COOKIE, path=ADMIN_PATH)
        self.redirect(f"{ADMIN_PATH}sign-in", status=303)


class Home(ConsolePage):
    def get(self) -> None:
        self.redirect(f"{ADMIN_PATH}keys")


class Keys(ConsolePage):
    """Keys, searched and a page at a time; ``POST`` creates one and shows its secret once."""

    nav = "keys"

    async def get(self) -> None:
        await self.show()

    async def show(self, status: int = 200, message: str = "", form: dict[str, str] | None = None) -> None:
        search = self.get_query_argument("search", "").strip()
        state = self.get_query_argument("status", "")
        asked = self.get_query_argument("page", "1")
        number = int(asked) if asked.isdigit() and 0 < len(asked) < 7 and int(asked) > 0 else 1
        result = await self.operations.find_keys(search or None, state or None, PAGE_SIZE, (number - 1) * PAGE_SIZE)
        pages = max(1, -(-result.total // PAGE_SIZE))
        self.page(
            "keys.html", status, keys=result.keys, total=result.total, search=search, state=state, number=number,
            pages=pages, message=message, form=form or {}, now=times.utcnow(),
        )

    async def post(self) -> None:
        try:
            info, secret = await self.operations.create_key(self.form_request(KeyCreate), self.actor)
        except errors.ApiError as error:
            if error.status != 400:
                raise
            given = {name: self.get_body_argument(name, "") for name in _FORM_FIELDS}
            await self.show(400, error.message, given)
            return
        await self.show_key(info, secret=secret, message=f"Key {info.id} created.")


class KeyPage(ConsolePage):
    """One key: its details, usage over the last 30 days, the edit form, rotation, revocation, its audit log."""

    nav = "keys"

    async def get(self, key_id: str) -> None:
        await self.show_key(await self.operations.key(int(key_id)))

    async def post(self, key_id: str) -> None:
        try:
            info = await self.operations.update_key(int(key_id), self.form_request(KeyUpdate), self.actor)
        except errors.ApiError as error:
            if error.status != 400:
                raise
            info = await self.operations.key(int(key_id))
            given = {name: self.get_body_argument(name, "") for name in _FORM_FIELDS}
            await self.show_key(info, status=400, error=error.message, form=given)
            return
        await self.show_key(info, message="Saved.")


class Rotate(ConsolePage):
    nav = "keys"

    async def post(self, key_id: str) -> None:
        info, secret = await self.operations.rotate_key(int(key_id), self.actor)
        await self.show_key(info, secret=secret, message="New secret made; the old one no longer works.")


class Revoke(ConsolePage):
    nav = "keys"

    async def post(self, key_id: str) -> None:
        info = await self.operations.revoke_key(int(key_id), self.actor)
        await self.show_key(info, message="Key revoked: it is refused from now on.")


class Usage(ConsolePage):
    """Requests and tokens per day and per service, and the keys that used most, over chosen days."""

    nav = "usage"

    async def get(self) -> None:
        today = times.utcnow().date()
        until = date_argument(self, "until", blank_is_absent=True) or today
        since = date_argument(self, "since", blank_is_absent=True) or last_days(until)[0]
        if until < since or (until - since).days > 366:
            raise errors.ApiError("invalid_date", "choose a first day before the last, at most a year apart")
        service = self.get_query_argument("service", "").strip() or None
        rows = await self.operations.usage(None, since, until, service)
        top = await self.operations.top_keys(since, until, service, 10)
        hours = await self.operations.latency(times.utcnow() - LATENCY_WINDOW, service)
        days = days_between(since, until)
        self.page(
            "usage.html", since=since, until=until, service=service or "", charts=views.daily_charts("all", rows, days),
            services=views.per_service(rows), top=top, hours=list(reversed(hours)),
        )


class Requests(ConsolePage):
    """Admitted requests, newest first, filtered by key, outcome and days; a page at a time."""

    nav = "requests"

    async def get(self) -> None:
        filters = self.request_filters()
        number = max(1, self.integer_argument("page", 1))
        # One more than a page tells whether an older page exists.
        entries = await self.operations.requests(
            **filters, limit=REQUESTS_PAGE + 1, offset=(number - 1) * REQUESTS_PAGE
        )
        query = {name: self.get_query_argument(name, "") for name in ("key", "outcome", "since", "until")}
        self.page(
            "requests.html", entries=entries[:REQUESTS_PAGE], older=len(entries) > REQUESTS_PAGE, number=number,
            query=query, outcomes=REQUEST_OUTCOMES,
        )


class Audit(ConsolePage):
    """Admin changes to every key (or one), newest first, from a chosen day on."""

    nav = "audit"

    async def get(self) -> None:
        filters = self.request_filters()
        entries = await self.operations.audit(filters["key_id"], date_argument(self, "since", blank_is_absent=True))
        shown = list(reversed(entries))[:AUDIT_PAGE]
        self.page(
            "audit.html", audit=shown, more=len(entries) > AUDIT_PAGE,
            key=self.get_query_argument("key", ""), since=self.get_query_argument("since", ""),
        )


class AdminTokens(ConsolePage):
    """The admin tokens: listed; ``POST`` makes one and shows its secret once."""

    nav = "admins"

    async def get(self) -> None:
        await self.show()

    async def show(self, status: int = 200, secret: str | None = None, message: str = "", error: str = "") -> None:
        tokens = await self.operations.admin_tokens()
        self.page("admins.html", status, tokens=tokens, secret=secret, message=message, error=error)

    async def post(self) -> None:
        try:
            info, secret = await self.operations.create_admin_token(self.get_body_argument("name", ""))
        except errors.ApiError as error:
            if error.status != 400:
                raise
            await self.show(400, error=error.message)
            return
        await self.show(secret=secret, message=f"Admin token {info.id} made for {info.name}.")


class RevokeAdminToken(AdminTokens):
    async def post(self, token_id: str) -> None:  # type: ignore[override]
        info = await self.operations.revoke_admin_token(int(token_id))
        if self.admin is not None and info.id == self.admin.id:
            self.redirect(f"{ADMIN_PATH}sign-in", status=303)  # its own sessions, this one included, have ended
            return
        await self.show(message=f"Admin token {info.id} revoked: its sessions have ended.")


class Cluster(ConsolePage):
    """Services, workers and queues; ``/admin/cluster/live`` is the part a script refreshes."""

    nav = "cluster"

    async def get(self) -> None:
        self.page("cluster.html", **await self.snapshot())

    async def snapshot(self) -> dict[str, Any]:
        try:
            status = await self.operations.cluster()
        except errors.ApiError as error:
            return {"services": {}, "problem": error.message, "at": times.utcnow()}
        return {"services": dict(sorted(status["services"].items())), "problem": "", "at": times.utcnow()}


class ClusterLive(Cluster):
    async def get(self) -> None:
        self.page("cluster_live.html", **await self.snapshot())
