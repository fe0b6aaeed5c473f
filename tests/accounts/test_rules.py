"""The pure rules: key format, time parsing, refusal order and the error table (no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from accounts import errors, idempotency, keys, limits, times
from accounts.admission import KeyState, denial_reason
from accounts.errors import AdmissionDenied, InvalidValue
from frontend.errors import from_accounts

NOON = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)


def test_a_secret_has_the_prefix_256_random_bits_and_a_checksum() -> None:
    secret = keys.new_secret()
    assert secret.startswith("llmapi_") and len(secret) == keys.SECRET_LENGTH
    assert keys.is_well_formed(secret)
    assert 62**keys.BODY_LENGTH >= 2**256
    assert len({keys.new_secret() for _ in range(1000)}) == 1000


def test_a_secret_with_one_character_changed_is_not_well_formed() -> None:
    secret = keys.new_secret()
    position = len(keys.KEY_PREFIX) + 5
    changed = secret[:position] + ("A" if secret[position] != "A" else "B") + secret[position + 1 :]
    assert not keys.is_well_formed(changed)
    assert not keys.is_well_formed(secret[:-1])
    assert not keys.is_well_formed(secret.replace("llmapi_", "llmapx_"))
    assert not keys.is_well_formed(secret[:-6] + "-" * 6)


def test_the_stored_hash_is_sha256_and_the_prefix_is_short() -> None:
    secret = keys.new_secret()
    assert len(keys.hash_secret(secret)) == 64 and keys.hash_secret(secret) == keys.hash_secret(secret)
    assert keys.display_prefix(secret) == secret[:15]


def test_a_date_starts_a_window_at_midnight_and_ends_it_after_the_whole_day() -> None:
    assert times.parse_window_start("2030-03-01") == datetime(2030, 3, 1, tzinfo=UTC)
    assert times.parse_window_end("2030-03-31") == datetime(2030, 4, 1, tzinfo=UTC)


def test_a_time_with_an_offset_is_converted_to_utc_and_one_without_is_utc() -> None:
    assert times.parse_window_end("2030-03-31T18:00:00+02:00") == datetime(2030, 3, 31, 16, tzinfo=UTC)
    assert times.parse_window_start("2030-03-31T18:00:00Z") == datetime(2030, 3, 31, 18, tzinfo=UTC)
    assert times.parse_window_start("2030-03-31 18:00") == datetime(2030, 3, 31, 18, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2030-13-01", "tomorrow", "2030-02-30", "", "31/03/2030"])
def test_a_bad_date_is_an_invalid_value(text: str) -> None:
    with pytest.raises(InvalidValue, match="invalid date"):
        times.parse_window_start(text)
    with pytest.raises(InvalidValue, match="invalid date"):
        times.parse_date(text)


def test_a_window_is_half_open() -> None:
    end = NOON + timedelta(hours=1)
    assert times.in_window(NOON, end, NOON)
    assert not times.in_window(NOON, end, end)
    assert times.in_window(None, None, NOON)
    times.check_window(NOON, end)
    with pytest.raises(InvalidValue):
        times.check_window(end, NOON)


def state(**changes: object) -> KeyState:
    values: dict[str, object] = {
        "id": 1,
        "prefix": "llmapi_x",
        "revoked": False,
        "valid_from": None,
        "valid_until": None,
        "max_requests": None,
        "used": 0,
        "requests_per_minute": None,
        "request_window_start": None,
        "request_window_count": 0,
        "tokens_per_minute": None,
        "token_window_start": None,
        "token_window_count": 0,
        "token_budget": None,
        "tokens_used": 0,
        "keep_texts": False,
        "max_concurrent": None,
        "weight": 1,
        "services": None,
    }
    given = limits.DEFAULTS | values | changes
    key_limits = {name: given.pop(name) for name in limits.BY_NAME}
    return KeyState(**given, limits=key_limits)  # type: ignore[arg-type]


# A request window that began 30 s before NOON and has admitted its 2 requests.
SPENT_MINUTE = {"requests_per_minute": 2, "request_window_start": NOON.timestamp() - 30, "request_window_count": 2}


def test_refusals_are_named_in_a_fixed_order() -> None:
    everything_wrong = state(
        revoked=True,
        valid_from=NOON + timedelta(days=1),
        valid_until=NOON + timedelta(days=2),
        max_requests=0,
        services=frozenset({"other"}),
    )
    expected = [
        (None, errors.UNKNOWN_KEY),
        (everything_wrong, errors.REVOKED),
        (state(valid_from=NOON + timedelta(seconds=1), max_requests=0), errors.NOT_YET_VALID),
        (state(valid_until=NOON, max_requests=0), errors.EXPIRED),
        (state(services=frozenset({"other"}), max_requests=0), errors.SERVICE_NOT_ALLOWED),
        (state(max_requests=3, used=3, token_budget=0), errors.QUOTA_EXHAUSTED),
        (state(token_budget=10, tokens_used=10, **SPENT_MINUTE), errors.TOKEN_BUDGET_EXHAUSTED),
        (state(**SPENT_MINUTE), errors.RATE_LIMITED),
        (state(tokens_per_minute=5, token_window_start=NOON.timestamp() - 59.5, token_window_count=5),
         errors.RATE_LIMITED),
        (state(max_requests=3, used=2, services=frozenset({"default"})), None),
        # A spent window that has ended, and one not spent yet, refuse nothing.
        (state(**(SPENT_MINUTE | {"request_window_start": NOON.timestamp() - 60})), None),
        (state(**(SPENT_MINUTE | {"request_window_count": 1})), None),
    ]
    for key_state, reason in expected:
        assert denial_reason(key_state, "default", NOON) == reason


def test_every_refusal_has_the_agreed_http_status() -> None:
    statuses = {
        errors.UNKNOWN_KEY: 401,
        errors.REVOKED: 401,
        errors.NOT_YET_VALID: 403,
        errors.EXPIRED: 403,
        errors.QUOTA_EXHAUSTED: 429,
        errors.SERVICE_NOT_ALLOWED: 403,
        errors.TOKEN_BUDGET_EXHAUSTED: 429,
        errors.RATE_LIMITED: 429,
    }
    assert set(statuses) == errors.ADMISSION_REASONS
    for reason, status in statuses.items():
        denial = AdmissionDenied(reason)
        assert (denial.reason, from_accounts(denial).status) == (reason, status)
        assert denial.message == errors.MESSAGES[reason]
    assert from_accounts(errors.DatabaseUnavailable()).status == 503
    with pytest.raises(ValueError):
        AdmissionDenied("NOT_A_REASON")


def test_a_naive_time_is_refused_and_an_aware_one_becomes_utc() -> None:
    with pytest.raises(InvalidValue):
        times.as_utc(datetime(2030, 1, 1))
    assert times.as_utc(datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))) == datetime(2030, 1, 1, tzinfo=UTC)
    assert times.parse_date("2030-01-02") == date(2030, 1, 2)


def test_a_replay_is_judged_by_every_rule_but_the_quota_the_budget_and_the_rates() -> None:
    used_up = state(max_requests=3, used=3, token_budget=1, tokens_used=1, **SPENT_MINUTE)
    assert denial_reason(used_up, "default", NOON, counting=False) is None
    for key_state, reason in [
        (state(revoked=True, max_requests=0), errors.REVOKED),
        (state(valid_until=NOON, max_requests=0), errors.EXPIRED),
        (state(services=frozenset({"other"})), errors.SERVICE_NOT_ALLOWED),
        (None, errors.UNKNOWN_KEY),
    ]:
        assert denial_reason(key_state, "default", NOON, counting=False) == reason


@pytest.mark.parametrize(
    "key", ["a", "~" * 255, "stainless-python-retry-0b6c2", " spaced key ", "!#$%&'()*+,-./:;<=>?@[]^_`{|}"]
)
def test_an_idempotency_key_of_1_to_255_printable_ascii_characters_is_accepted(key: str) -> None:
    assert idempotency.check(key) == key
    assert len(idempotency.digest(key)) == 64


@pytest.mark.parametrize("key", ["", "k" * 256, "clé", "line\nbreak", "tab\there", "nul\x00", "del\x7f"])
def test_an_idempotency_key_outside_that_is_invalid_and_not_quoted(key: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        idempotency.check(key)
    assert caught.value.code == errors.INVALID_VALUE
    assert not key or key not in caught.value.message


def test_an_idempotency_key_that_is_not_text_is_invalid() -> None:
    with pytest.raises(InvalidValue, match="must be text"):
        idempotency.check(b"bytes")  # type: ignore[arg-type]


def test_a_spent_rate_says_when_every_spent_window_has_ended() -> None:
    both = state(**SPENT_MINUTE, tokens_per_minute=5, token_window_start=NOON.timestamp() - 50, token_window_count=9)
    assert both.wait(NOON.timestamp()) == pytest.approx(30)  # the token window ends first, but both must
    assert state(**SPENT_MINUTE).wait(NOON.timestamp()) == pytest.approx(30)
    assert state(**SPENT_MINUTE).wait(NOON.timestamp() + 30) is None
    # Waiting lifts neither a quota nor a budget.
    assert state(**SPENT_MINUTE, max_requests=1, used=1).wait(NOON.timestamp()) is None
    assert state(token_budget=1, tokens_used=1).wait(NOON.timestamp()) is None


def test_each_counted_rule_says_the_same_in_sql_as_on_the_state_read_back(store) -> None:
    import random

    from sqlalchemy import Float, bindparam, select, update

    from accounts.admission import COUNTED_RULES
    from accounts.models import ApiKey

    chance = random.Random(14)
    now = NOON.timestamp()
    info, _ = store.create_key(email="rules@example.com")
    for _ in range(300):
        values = {
            "max_requests": chance.choice([None, 0, 1, 5]),
            "used": chance.randint(0, 6),
            "token_budget": chance.choice([None, 0, 10]),
            "tokens_used": chance.choice([0, 9, 10, 11]),
            "requests_per_minute": chance.choice([None, 1, 3]),
            "request_window_start": chance.choice([None, now - 61, now - 60, now - 59.5, now - 1, now]),
            "request_window_count": chance.randint(0, 4),
            "tokens_per_minute": chance.choice([None, 1, 50]),
            "token_window_start": chance.choice([None, now - 60, now - 30]),
            "token_window_count": chance.choice([0, 49, 50, 51]),
        }
        with store.engine.begin() as conn:
            conn.execute(update(ApiKey).where(ApiKey.id == info.id).values(**values))
            at = bindparam("now", now, type_=Float())
            in_sql = conn.execute(
                select(*(rule.allows(at) for rule in COUNTED_RULES)).where(ApiKey.id == info.id)
            ).one()
        key_state = state(**values)
        assert [bool(allowed) for allowed in in_sql] == [not rule.spent(key_state, now) for rule in COUNTED_RULES]
