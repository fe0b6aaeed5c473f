"""API keys, exact quotas, validity windows and usage records, on SQLite or PostgreSQL.

The frontend uses :class:`accounts.store.AccountStore` (which also exports
``Admission``, ``UsageRecord``, ``KeyInfo`` and ``UsageRow``) and the errors
of :mod:`accounts.errors`; admins use ``llmapi accounts`` (:mod:`accounts.cli`).
Nothing is imported here, so ``import accounts.errors`` stays light.
"""
