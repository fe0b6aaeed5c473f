"""The console's plain parts, without a server: the sign-in throttle (its clock passed in),
the SVG chart, session values and CSRF tokens, and the admin models."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import get_args

import pytest

from accounts.key_search import STATUSES
from frontend.admin.charts import Series, bar_chart, legend
from frontend.admin.schemas import KeyUpdate, Status
from frontend.admin.sessions import CsrfTokens, Session
from frontend.admin.throttle import SignInThrottle


def test_an_address_is_refused_after_its_failures_until_the_oldest_is_a_window_old() -> None:
    throttle = SignInThrottle(limit=3, window=60.0)
    for now in (0.0, 10.0, 20.0):
        assert throttle.wait("10.0.0.1", now) == 0
        throttle.failed("10.0.0.1", now)
    assert throttle.wait("10.0.0.1", 30.0) == 30.0
    assert throttle.wait("10.0.0.2", 30.0) == 0  # another address is not held back
    assert throttle.wait("10.0.0.1", 60.0) == 0  # the first failure has aged out


def test_the_throttle_forgets_the_least_recent_addresses_beyond_its_bound() -> None:
    throttle = SignInThrottle(limit=1, window=60.0, max_addresses=2)
    for address in ("a", "b", "c"):
        throttle.failed(address, 0.0)
    assert [throttle.wait(address, 1.0) for address in ("a", "b", "c")] == [0, 59.0, 59.0]


def test_each_day_of_the_chart_says_its_numbers_and_a_hatched_series_reads_without_colour() -> None:
    days = [date(2030, 6, 1) + timedelta(days=n) for n in range(30)]
    answered = Series("answered", [n % 3 for n in range(30)], "bar-main")
    failed = Series("failed or refused", [1 if n == 29 else 0 for n in range(30)], "bar-other", hatched=True)
    svg = bar_chart("key-requests", "Requests per day", days, [answered, failed])
    assert svg.startswith("<svg") and svg.endswith("</svg>") and 'role="img"' in svg
    assert "<title>2030-06-30: 2 answered, 1 failed or refused</title>" in svg
    assert len(re.findall(r"<g><title>", svg)) == 30
    assert 'class="hatched" fill="url(#key-requests-hatch)"' in svg
    assert 'fill="url(#key-requests-hatch)"' in legend("key-requests", [answered, failed])
    # The axis tops at the 1, 2 or 5 just above the tallest bar (3).
    assert ">5</text>" in svg and ">10</text>" not in svg


def test_a_session_names_its_token_and_its_csrf_token_is_its_own() -> None:
    csrf = CsrfTokens("s" * 48)
    first, second = Session.open(7), Session.open(7)
    assert Session.parse(first.cookie_value().encode()) == first
    assert Session.parse(b"x.y") is None and Session.parse(b"7.") is None and Session.parse(None) is None
    assert csrf.matches(csrf.for_session(first), csrf.for_session(first))
    assert not csrf.matches(csrf.for_session(first), csrf.for_session(second))
    assert not csrf.matches(csrf.for_session(first), None)
    assert CsrfTokens("t" * 48).for_session(first) != csrf.for_session(first)
    assert csrf.for_sign_in(first.nonce) != csrf.for_session(first)


def test_the_status_filter_of_the_api_names_exactly_the_statuses_of_a_key() -> None:
    assert set(get_args(Status)) == set(STATUSES)


def test_an_update_leaves_out_what_it_does_not_name_and_clears_what_it_names_null() -> None:
    assert KeyUpdate.model_validate({"note": "x"}).changes() == {"note": "x", "reset_used": False}
    changes = KeyUpdate.model_validate({"max_requests": None, "valid_until": None, "name": None}).changes()
    assert changes == {"max_requests": None, "valid_until": None, "name": "", "reset_used": False}
    with pytest.raises(ValueError, match="cannot be null"):
        KeyUpdate.model_validate({"email": None})
