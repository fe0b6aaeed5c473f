"""The demo key `llmapi up` prints: the same on every start until asked for a new one.

The database keeps only the key's hash, as for every key; its secret is
written once to a file only its owner may read (mode 0600) beside the SQLite
database (else in the data directory), and read back from there on later
starts. The key gets a new secret only when asked (`--new-demo-key`), or when
the file is gone or no longer matches the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from config.settings import Settings, data_directory

if TYPE_CHECKING:  # SQLAlchemy is imported only when `up` runs
    from accounts.store import AccountStore

log = structlog.get_logger(__name__)

DEMO_EMAIL = "demo@localhost"
KEY_FILE = "llmapi-demo-key"


@dataclass(frozen=True)
class DemoKey:
    """The demo key's id and secret, the file that keeps the secret, and whether this start made it."""

    key_id: int
    secret: str
    path: Path
    new: bool


def key_file(settings: Settings, config: Path | None) -> Path:
    """Where the demo key's secret is kept: beside the SQLite database, else in the data directory."""
    from accounts.database import sqlite_file

    database = sqlite_file(settings.accounts.database_url)
    return (database.parent if database is not None else data_directory(config)) / KEY_FILE


def demo_key(store: AccountStore, path: Path, new: bool = False) -> DemoKey:
    """The demo key kept in ``path``; created, or given a new secret, when ``new`` or when there is none."""
    existing = store.list_keys(email=DEMO_EMAIL, include_revoked=False)
    kept = _read(path)
    if existing and kept is not None and not new and _is_secret_of(store, kept, existing[0].id):
        return DemoKey(existing[0].id, kept, path, new=False)
    if existing:
        info, secret = store.rotate_key(existing[0].id)
    else:
        info, secret = store.create_key(email=DEMO_EMAIL, name="demo", note="created by llmapi up")
    _write(path, secret)
    log.info("demo_key_written", key_id=info.id, key_prefix=info.prefix, path=str(path))
    return DemoKey(info.id, secret, path, new=True)


def _is_secret_of(store: AccountStore, secret: str, key_id: int) -> bool:
    from accounts.errors import AdmissionDenied

    try:
        return store.identify(secret).id == key_id
    except AdmissionDenied:
        return False


def _read(path: Path) -> str | None:
    try:
        secret = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    if path.stat().st_mode & 0o077:
        log.warning("demo_key_file_made_private", path=str(path))
        path.chmod(0o600)
    return secret or None


def _write(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only from the first byte, replacing any old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)  # one a killed start left, whatever its mode
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secret + "\n")
    os.replace(temporary, path)
