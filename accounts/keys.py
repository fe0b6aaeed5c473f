"""API key secrets: how they are made, checked for shape, hashed and named.

A secret reads ``llmapi_`` + 43 base62 characters (256 random bits) + a
6-character base62 CRC-32 of those 43 characters. The fixed prefix lets
secret scanners spot a leaked key; the checksum lets them (and
:func:`is_well_formed`) tell a real-looking key from a typo without asking
the database. Only :func:`hash_secret` of a secret and its
:func:`display_prefix` are ever stored.

Admin tokens (for ``/admin/``) are made the same way with their own prefix,
``llmadm_``, so neither kind can pass for the other: an API key is not well
formed as an admin token, nor an admin token as an API key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

KEY_PREFIX = "llmapi_"
ADMIN_PREFIX = "llmadm_"  # as long as KEY_PREFIX: display prefixes have one length
RANDOM_BITS = 256
BODY_LENGTH = 43  # base62 digits needed for 256 bits
CHECKSUM_LENGTH = 6  # base62 digits needed for a 32-bit CRC
SECRET_LENGTH = len(KEY_PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
DISPLAY_CHARS = 8  # random characters kept, with the prefix, to recognise a key

_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ALPHABET_SET = frozenset(_ALPHABET)


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, _ALPHABET[0])


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def new_secret(prefix: str = KEY_PREFIX) -> str:
    """A fresh secret: 256 bits from the operating system's CSPRNG, after ``prefix``."""
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BITS // 8), "big"), BODY_LENGTH)
    return prefix + body + _checksum(body)


def is_well_formed(secret: str, prefix: str = KEY_PREFIX) -> bool:
    """Whether ``secret`` has the prefix, length, alphabet and checksum of a key (or of
    an admin token, with ``prefix`` :data:`ADMIN_PREFIX`)."""
    if len(secret) != SECRET_LENGTH or not secret.startswith(prefix):
        return False
    rest = secret[len(prefix) :]
    if not _ALPHABET_SET.issuperset(rest):
        return False
    body, checksum = rest[:BODY_LENGTH], rest[BODY_LENGTH:]
    return hmac.compare_digest(checksum, _checksum(body))


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest stored and looked up in place of the secret.

    A salt or a slow hash would add nothing: the secret has 256 random bits.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """The non-secret beginning kept to recognise a key (``llmapi_`` + 8 characters)."""
    return secret[: len(KEY_PREFIX) + DISPLAY_CHARS]
