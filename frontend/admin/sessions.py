"""Console sessions and their CSRF tokens, as values signed with one secret.

A session cookie holds the admin token's id and a random nonce, signed by
Tornado (HMAC-SHA256, with its issue time, refused after the session
lifetime). The token is looked up again on every request, so revoking it
ends its sessions at once. A state-changing request made with a session
must carry the session's CSRF token (a form field or a header): an HMAC
of the session's nonce that pages print and a third-party site cannot
read. Before sign-in, the sign-in form's token is bound the same way to a
nonce in a short-lived cookie of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_COOKIE = "llmapi_admin"
SIGN_IN_COOKIE = "llmapi_admin_sign_in"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_LIFETIME = 3600.0  # seconds a sign-in form stays usable


@dataclass(frozen=True)
class Session:
    """A signed-in console: the admin token it was opened with, and its nonce."""

    token_id: int
    nonce: str

    def cookie_value(self) -> str:
        return f"{self.token_id}.{self.nonce}"

    @classmethod
    def parse(cls, value: bytes | None) -> Session | None:
        """The session a verified cookie value names, or None when it names none."""
        if value is None:
            return None
        token_id, _, nonce = value.decode("ascii", "replace").partition(".")
        if not token_id.isdigit() or not nonce:
            return None
        return cls(int(token_id), nonce)

    @classmethod
    def open(cls, token_id: int) -> Session:
        return cls(token_id, new_nonce())


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


class CsrfTokens:
    """CSRF tokens derived from ``secret``: one per session, one per sign-in form."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"llmapi console csrf\0" + secret.encode()).digest()

    def for_session(self, session: Session) -> str:
        return self._mac("session", session.cookie_value())

    def for_sign_in(self, nonce: str) -> str:
        return self._mac("sign-in", nonce)

    def matches(self, expected: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()
