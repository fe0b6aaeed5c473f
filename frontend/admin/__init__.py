"""The admin console and its API, served under ``/admin/`` on a listener of their own.

An admin token (``llmapi accounts admin create``) opens them: as
``Authorization: Bearer`` for scripts, or once at the sign-in page, which
then keeps a signed session cookie. Every change goes through the same
account store calls as ``llmapi accounts``.
"""
