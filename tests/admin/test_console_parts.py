"""The console's plain parts, without a server: the brake's memory of blocked addresses (its
clock passed in), the SVG chart, session values and CSRF tokens, and the admin models."""

from __future__ import annotations

import asyncio
import re
from datetime import date, timedelta
from typing import get_args

import pytest

from accounts.key_brake import BrakePolicy
from accounts.key_search import STATUSES
from frontend.admin.charts import Series, bar_chart, legend
from frontend.admin.schemas import KeyUpdate, Status
from frontend.admin.sessions import csrf_matches, new_nonce, session_csrf, sign_in_csrf
from frontend.errors import ApiError
from frontend.key_brake import KeyBrake


def test_an_address_is_refused_once_the_database_says_it_is_blocked_until_the_block_ends() -> None:
    answers = iter([0.0, 0.0, 60.0])
    counted: list[tuple[str, str]] = []

    async def record(address: str, policy: BrakePolicy) -> float:
        counted.append((address, policy.scope))
        return next(answers)

    brake = KeyBrake(BrakePolicy(3, 60.0, 60.0, 60.0, scope="admin "))
    for now in (0.0, 10.0, 20.0):
        assert brake.blocked_for("10.0.0.1", now) == 0
        asyncio.run(brake.count_failure("10.0.0.1", record, now))
    assert counted == [("10.0.0.1", "admin ")] * 3  # counted where every frontend sees it, in the console's scope
    assert brake.blocked_for("10.0.0.1", 30.0) == 50.0
    assert brake.blocked_for("10.0.0.2", 30.0) == 0  # another address is not held back
    assert brake.blocked_for("10.0.0.1", 80.0) == 0  # the block has ended


def test_a_failure_the_database_cannot_count_blocks_nothing() -> None:
    async def record(address: str, policy: BrakePolicy) -> float:
        raise ApiError("database_unavailable", "down")

    brake = KeyBrake(BrakePolicy(1, 60.0, 60.0, 60.0))
    asyncio.run(brake.count_failure("10.0.0.1", record, 0.0))
    assert brake.blocked_for("10.0.0.1", 1.0) == 0


def test_the_brake_forgets_the_blocks_ending_soonest_beyond_its_bound() -> None:
    brake = KeyBrake(BrakePolicy(), max_addresses=2)
    for address, seconds in (("a", 10.0), ("b", 30.0), ("c", 20.0)):
        brake.block(address, seconds, 0.0)
    assert [brake.blocked_for(address, 1.0) for address in ("a", "b", "c")] == [0, 29.0, 19.0]


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


def test_each_session_and_sign_in_form_has_a_csrf_token_of_its_own() -> None:
    first, second = new_nonce(), new_nonce()
    assert first != second and len(first) >= 32
    assert csrf_matches(session_csrf(first), session_csrf(first))
    assert not csrf_matches(session_csrf(first), session_csrf(second))
    assert not csrf_matches(session_csrf(first), None)
    assert sign_in_csrf(first) != session_csrf(first)


def test_the_status_filter_of_the_api_names_exactly_the_statuses_of_a_key() -> None:
    assert set(get_args(Status)) == set(STATUSES)


def test_an_update_leaves_out_what_it_does_not_name_and_clears_what_it_names_null() -> None:
    assert KeyUpdate.model_validate({"note": "x"}).changes() == {"note": "x", "reset_used": False}
    changes = KeyUpdate.model_validate({"max_requests": None, "valid_until": None, "name": None}).changes()
    assert changes == {"max_requests": None, "valid_until": None, "name": "", "reset_used": False}
    with pytest.raises(ValueError, match="cannot be null"):
        KeyUpdate.model_validate({"email": None})


@pytest.mark.parametrize(
    "given, shown, field",
    [
        ("2027-06-30", "2027-06-30 (through that day)", "2027-06-30"),
        ("2027-06-30T12:30:00+02:00", "2027-06-30 10:30 UTC (excluded)", "2027-06-30 10:30:00"),
    ],
)
def test_a_window_end_reads_as_it_was_given_and_the_form_sends_it_back_unchanged(given, shown, field) -> None:
    from accounts import times
    from frontend.admin import views

    end = times.parse_window_end(given)
    assert (views.valid_until(end), views.window_field(end, is_end=True)) == (shown, field)
    assert KeyUpdate.model_validate({"valid_until": field}).changes()["valid_until"] == end
    start = times.parse_window_start("2027-06-01")
    assert times.parse_window_start(views.window_field(start, is_end=False)) == start
