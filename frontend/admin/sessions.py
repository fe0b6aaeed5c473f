"""Console sessions' cookies and their CSRF tokens.

A session cookie holds the session's secret: 256 random bits that the
accounts database knows only by their SHA-256 (see ``accounts.admins``), with
the admin token that opened it. Every request looks it up again, so signing
out, revoking the token or the session's expiry ends it at once, on every
frontend, and nothing in the database (or a backup of it) opens a session.

A state-changing request made with a session must carry the session's CSRF
token (a form field or a header): an HMAC keyed by the session's secret,
which pages print and which neither a third-party site (it cannot read the
cookie) nor the database (it holds only the secret's hash) can compute.
Before sign-in, the sign-in form's token is bound the same way to a nonce in
a short-lived cookie of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE = "llmapi_admin"
SIGN_IN_COOKIE = "llmapi_admin_sign_in"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_LIFETIME = 3600.0  # seconds a sign-in form stays usable


def session_csrf(session: str) -> str:
    """The CSRF token of the session whose secret is ``session``."""
    return _mac(session, "session")


def sign_in_csrf(nonce: str) -> str:
    """The CSRF token of the sign-in form whose cookie holds ``nonce``."""
    return _mac(nonce, "sign-in")


def csrf_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def _mac(key: str, purpose: str) -> str:
    message = f"llmapi console csrf\0{purpose}".encode()
    return hmac.new(key.encode("utf-8", "replace"), message, hashlib.sha256).hexdigest()
