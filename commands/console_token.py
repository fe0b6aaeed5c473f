"""The admin token `llmapi up` prints for the console: a new one on every start.

The token of the previous start is revoked first (and with it its console
sessions), so the one printed is the only one `up` has issued that works.
Tokens made with `llmapi accounts admin create` are left alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # SQLAlchemy is imported only when `up` runs
    from accounts.store import AccountStore

UP_TOKEN_NAME = "llmapi up"


def console_token(store: AccountStore) -> str:
    """A fresh admin token named ``llmapi up``, the earlier ones of that name revoked."""
    for token in store.list_admin_tokens():
        if token.name == UP_TOKEN_NAME and not token.revoked:
            store.revoke_admin_token(token.id)
    _, secret = store.create_admin_token(UP_TOKEN_NAME)
    return secret
