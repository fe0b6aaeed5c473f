"""The request policies, in the order every request meets them (see ``base``).

Each policy is one module with one job. A new one (a limit judged by the
frontend, say) is a module here and a line in :func:`standard`; a limit
the accounts database keeps also needs its column and migration, and is
judged by the admission statement (``accounts.admission``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.settings import FrontendSettings
from frontend.accounts_calls import AccountsCalls
from frontend.policies.admission import KeyAdmission
from frontend.policies.base import Call, Ending, Policies, Policy
from frontend.policies.metrics import GenerationMetrics
from frontend.policies.refunds import Refunds
from frontend.policies.replays import Replays
from frontend.policies.usage import UsageRecords

if TYPE_CHECKING:
    from frontend.metrics import Metrics

__all__ = ["Call", "Ending", "Policies", "Policy", "standard"]


def standard(settings: FrontendSettings, accounts: AccountsCalls, metrics: Metrics | None) -> Policies:
    """Admission first (nothing else runs for a request not admitted), then replays (a
    replay is answered before it is sent), then, as a request ends, its refund before its
    usage record (so a retry finds its quota back), then the metrics of what was generated."""
    policies: list[Policy] = [
        KeyAdmission(accounts, min(settings.admission_timeout, settings.request_timeout)),
        Replays(),
        Refunds(accounts),
        UsageRecords(accounts.store, settings.request_timeout),
    ]
    if metrics is not None:
        policies.append(GenerationMetrics(metrics, settings.request_timeout))
    return Policies(policies)
