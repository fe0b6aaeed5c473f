"""Usage records: buffered off the request path, written in batches, summed per day and service."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest

from accounts.errors import DatabaseUnavailable, InvalidValue, StoreClosed
from accounts.records import Admission, UsageRecord, UsageRow
from accounts.store import AccountStore
from accounts.usage import UsageBuffer

DAY_ONE = datetime(2030, 6, 15, 23, 59, 59, tzinfo=UTC)
DAY_TWO = DAY_ONE + timedelta(seconds=1)


def record(admission: Admission, at: datetime, **fields: object) -> UsageRecord:
    values: dict[str, object] = {"input_chars": 10, "input_words": 2, "output_chars": 30, "output_words": 5}
    return UsageRecord(admission=admission, at=at, **(values | fields))  # type: ignore[arg-type]


def test_usage_is_summed_per_day_and_service(store: AccountStore) -> None:
    info, secret = store.create_key(email="ana@example.org")
    other = store.admit(secret, "summarise")
    store.record_usage(record(store.admit(secret, "default"), DAY_ONE, prompt_tokens=7, completion_tokens=3))
    store.record_usage(record(store.admit(secret, "default"), DAY_ONE, outcome="timeout", output_chars=0, output_words=0,
                              charged=False))
    store.record_usage(record(store.admit(secret, "default"), DAY_TWO))
    store.record_usage(record(other, DAY_TWO, prompt_tokens=1))
    store.flush_usage()
    assert store.usage_report() == [
        UsageRow(date(2030, 6, 15), "default", 2, 1, 1, 4, 20, 5, 30, 7, 3),  # the timeout was refunded
        UsageRow(date(2030, 6, 16), "default", 1, 0, 1, 2, 10, 5, 30, 0, 0),
        UsageRow(date(2030, 6, 16), "summarise", 1, 0, 1, 2, 10, 5, 30, 1, 0),
    ]
    assert store.usage_report(key_id=info.id, since=date(2030, 6, 16), service="summarise") == [
        UsageRow(date(2030, 6, 16), "summarise", 1, 0, 1, 2, 10, 5, 30, 1, 0)
    ]
    assert store.usage_report(until=date(2030, 6, 15))[0].requests == 2


def test_gpu_time_is_summed_and_priced_per_service_and_key(migrated_url: str) -> None:
    prices = {"chat": 3.6, "*": 0.36}  # per GPU-hour: a GPU-second of chat costs 0.001
    with AccountStore.from_url(migrated_url, usage_flush_interval=60.0, gpu_hour_prices=prices) as store:
        first, first_secret = store.create_key(email="ana@example.org")
        second, second_secret = store.create_key(email="bo@example.org")
        store.record_usage(record(store.admit(first_secret, "chat"), DAY_ONE, gpu_seconds=1.25))
        store.record_usage(record(store.admit(first_secret, "chat"), DAY_ONE, gpu_seconds=0.75))
        store.record_usage(record(store.admit(first_secret, "chat"), DAY_ONE))  # a worker that measures nothing
        store.record_usage(record(store.admit(second_secret, "embed"), DAY_ONE, gpu_seconds=10.0))
        store.flush_usage()
        chat, embed = store.usage_report()
        assert (chat.service, chat.gpu_seconds, chat.cost) == ("chat", 2.0, pytest.approx(0.002))
        assert (embed.service, embed.gpu_seconds, embed.cost) == ("embed", 10.0, pytest.approx(0.001))
        by_key = {usage.key_id: usage for usage in store.usage_by_key()}
        assert (by_key[first.id].gpu_seconds, by_key[first.id].cost) == (2.0, pytest.approx(0.002))
        assert (by_key[second.id].gpu_seconds, by_key[second.id].cost) == (10.0, pytest.approx(0.001))
    with AccountStore.from_url(migrated_url, gpu_hour_prices={"chat": 3.6}) as unpriced_embed:
        chat, embed = unpriced_embed.usage_report()
        assert chat.cost == pytest.approx(0.002) and (embed.gpu_seconds, embed.cost) == (10.0, None)
    with AccountStore.from_url(migrated_url) as no_prices:
        assert [row.cost for row in no_prices.usage_report()] == [None, None]


def test_the_report_can_be_limited_to_one_key(store: AccountStore) -> None:
    _, first = store.create_key(email="ana@example.org")
    second_info, second = store.create_key(email="bo@example.org")
    store.record_usage(record(store.admit(first, "default"), DAY_ONE))
    store.record_usage(record(store.admit(second, "default"), DAY_ONE))
    store.record_usage(UsageRecord(key_id=second_info.id, service="default", at=DAY_ONE))
    store.flush_usage()
    assert store.usage_report()[0].requests == 3
    assert store.usage_report(key_id=second_info.id)[0].requests == 2


def test_a_report_that_ends_before_it_starts_is_refused(store: AccountStore) -> None:
    with pytest.raises(InvalidValue, match="before it starts"):
        store.usage_report(since=date(2030, 6, 2), until=date(2030, 6, 1))


def test_texts_are_not_kept_unless_configured(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org")
    admission = store.admit(secret, "default")
    store.record_usage(UsageRecord.from_texts(admission=admission, request_text="private words", output_text="reply"))
    store.flush_usage()
    assert stored_texts(store) == [(None, None)]
    assert store.usage_report()[0].input_words == 2


def test_texts_are_kept_when_store_texts_is_on(sqlite_url: str) -> None:
    with AccountStore.from_url(sqlite_url, store_texts=True) as store:
        store.migrate()
        _, secret = store.create_key(email="ana@example.org")
        admission = store.admit(secret, "default")
        store.record_usage(UsageRecord.from_texts(admission=admission, request_text="hello there", output_text="hi"))
        store.flush_usage()
        assert stored_texts(store) == [("hello there", "hi")]


def stored_texts(store: AccountStore) -> list[tuple[str | None, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT request_text, output_text FROM usage_records").all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_the_background_writer_flushes_when_the_buffer_is_full(database_url: str) -> None:
    with AccountStore.from_url(database_url, usage_flush_interval=60.0, usage_buffer_limit=5) as store:
        store.migrate()
        _, secret = store.create_key(email="ana@example.org")
        for _ in range(5):
            store.record_usage(record(store.admit(secret, "default"), DAY_ONE))
        assert store.usage_buffer.wait_written(5, timeout=10)
        assert store.usage_report()[0].requests == 5


def test_the_background_writer_flushes_after_the_interval(sqlite_url: str) -> None:
    with AccountStore.from_url(sqlite_url, usage_flush_interval=0.05) as store:
        store.migrate()
        _, secret = store.create_key(email="ana@example.org")
        store.record_usage(record(store.admit(secret, "default"), DAY_ONE))
        assert store.usage_buffer.wait_written(1, timeout=10)


def test_closing_the_store_writes_what_is_buffered(sqlite_url: str) -> None:
    store = AccountStore.from_url(sqlite_url, usage_flush_interval=60.0)
    store.migrate()
    _, secret = store.create_key(email="ana@example.org")
    store.record_usage(record(store.admit(secret, "default"), DAY_ONE))
    store.close()
    with pytest.raises(StoreClosed):
        store.record_usage(record(Admission(1, "x", "default", DAY_ONE), DAY_ONE))
    with AccountStore.from_url(sqlite_url) as reopened:
        assert reopened.usage_report()[0].requests == 1


def test_a_record_for_a_key_that_does_not_exist_does_not_lose_the_others(store: AccountStore) -> None:
    _, secret = store.create_key(email="ana@example.org")
    store.record_usage(record(store.admit(secret, "default"), DAY_ONE))
    store.record_usage(UsageRecord(key_id=999, service="default", at=DAY_ONE))
    store.record_usage(record(store.admit(secret, "default"), DAY_ONE))
    store.flush_usage()
    assert store.usage_report()[0].requests == 2


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"key_id": 1, "service": ""},
        {"key_id": 1, "service": "s", "input_chars": -1},
        {"key_id": 1, "service": "s", "output_chars": 2**31},
        {"key_id": 1, "service": "s", "prompt_tokens": -1},
        {"key_id": 1, "service": "s", "outcome": ""},
        {"key_id": 1, "service": "s", "gpu_seconds": -0.5},
        {"key_id": 1, "service": "s", "gpu_seconds": float("inf")},
        {"key_id": 1, "service": "s", "at": datetime(2030, 1, 1)},
    ],
)
def test_a_malformed_usage_record_is_refused_when_made(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidValue):
        UsageRecord(**fields)  # type: ignore[arg-type]


class FlakyWriter:
    """A writer that fails while ``down`` is set, and remembers what it wrote."""

    def __init__(self) -> None:
        self.down = False
        self.rows: list[dict[str, object]] = []
        self.calls = threading.Semaphore(0)

    def __call__(self, rows: list[dict[str, object]]) -> None:
        self.calls.release()
        if self.down:
            raise DatabaseUnavailable("down for the test")
        self.rows.extend(rows)


def test_rows_are_kept_while_the_database_is_down_and_written_when_it_returns() -> None:
    writer = FlakyWriter()
    buffer = UsageBuffer(writer, flush_interval=60.0, buffer_limit=100, backlog_limit=100)
    writer.down = True
    buffer.add({"n": 1})
    with pytest.raises(DatabaseUnavailable):
        buffer.flush()
    buffer.add({"n": 2})
    writer.down = False
    buffer.flush()
    buffer.close()
    assert writer.rows == [{"n": 1}, {"n": 2}]


def test_the_backlog_drops_the_oldest_rows_beyond_its_limit() -> None:
    writer = FlakyWriter()
    buffer = UsageBuffer(writer, flush_interval=60.0, buffer_limit=100, backlog_limit=3)
    writer.down = True
    for n in range(5):
        buffer.add({"n": n})
    with pytest.raises(DatabaseUnavailable):
        buffer.flush()
    writer.down = False
    buffer.close()
    assert (writer.rows, buffer.dropped) == ([{"n": 2}, {"n": 3}, {"n": 4}], 2)


def test_a_failing_background_write_is_retried_after_the_interval() -> None:
    writer = FlakyWriter()
    buffer = UsageBuffer(writer, flush_interval=0.01, buffer_limit=1, backlog_limit=10)
    writer.down = True
    buffer.add({"n": 1})
    assert writer.calls.acquire(timeout=10)  # one failed attempt
    writer.down = False
    assert buffer.wait_written(1, timeout=10)
    buffer.close()
    assert writer.rows == [{"n": 1}]


def test_the_requests_view_lists_admitted_requests_newest_first_filtered_by_key_outcome_and_time(
    store: AccountStore,
) -> None:
    first, first_secret = store.create_key(email="ana@example.org")
    _, second_secret = store.create_key(email="bo@example.org")
    details = {"endpoint": "/v1/chat/completions", "gpu_seconds": 0.5, "first_token_seconds": 0.02}
    store.record_usage(record(store.admit(first_secret, "chat"), DAY_ONE, prompt_tokens=4, **details))
    store.record_usage(record(store.admit(first_secret, "chat"), DAY_TWO, outcome="timeout", charged=False))
    store.record_usage(record(store.admit(second_secret, "chat"), DAY_TWO, outcome="invalid_input"))
    store.flush_usage()
    newest, middle, oldest = store.find_requests()
    assert (oldest.key_id, oldest.key_prefix, oldest.outcome) == (first.id, first.prefix, "ok")
    assert (oldest.endpoint, oldest.gpu_seconds, oldest.first_token_seconds, oldest.prompt_tokens) == (
        "/v1/chat/completions", 0.5, 0.02, 4
    )
    assert (middle.outcome, middle.charged, newest.outcome) == ("timeout", False, "invalid_input")
    assert [entry.id for entry in store.find_requests(key_id=first.id)] == [middle.id, oldest.id]
    assert [entry.id for entry in store.find_requests(outcome="failed")] == [newest.id, middle.id]
    assert [entry.id for entry in store.find_requests(outcome="ok")] == [oldest.id]
    assert [entry.id for entry in store.find_requests(since=DAY_TWO)] == [newest.id, middle.id]
    assert [entry.id for entry in store.find_requests(until=DAY_TWO)] == [oldest.id]
    assert [entry.id for entry in store.find_requests(limit=1, offset=1)] == [middle.id]
    with pytest.raises(InvalidValue):
        store.find_requests(limit=0)


def test_latency_and_first_token_are_reported_per_service_and_hour_as_medians_and_99th_percentiles(
    store: AccountStore,
) -> None:
    _, secret = store.create_key(email="ana@example.org")
    hour = datetime(2030, 6, 15, 8, tzinfo=UTC)
    for index in range(1, 101):  # 0.01 s to 1.00 s, spread over the hour
        at = hour + timedelta(seconds=30 * index)
        store.record_usage(record(store.admit(secret, "chat"), at, latency_seconds=index / 100,
                                  first_token_seconds=index / 1000))
    store.record_usage(record(store.admit(secret, "chat"), hour, latency_seconds=99.0, outcome="timeout"))
    store.record_usage(record(store.admit(secret, "embed"), hour + timedelta(hours=1), latency_seconds=0.5))
    store.flush_usage()
    chat, embed = store.latency_per_hour(hour - timedelta(hours=1))
    assert (chat.hour, chat.service, chat.requests) == (hour, "chat", 100)  # the timeout is not an answer
    assert (chat.latency_p50, chat.latency_p99) == (0.5, 0.99)
    assert (chat.first_token_p50, chat.first_token_p99) == (0.05, 0.099)
    assert (embed.hour, embed.requests, embed.latency_p50, embed.first_token_p50) == (hour + timedelta(hours=1), 1, 0.5, None)
    assert store.latency_per_hour(hour, service="embed") == [embed]
    assert store.latency_per_hour(hour + timedelta(hours=2)) == []


def test_a_key_that_keeps_its_texts_has_them_in_its_records_and_the_others_do_not(store: AccountStore) -> None:
    keeping, keeping_secret = store.create_key(email="ana@example.org", keep_texts=True)
    _, plain_secret = store.create_key(email="bo@example.org")
    for secret in (keeping_secret, plain_secret):
        store.record_usage(UsageRecord.from_texts(admission=store.admit(secret, "chat"), request_text="hi", output_text="yo"))
    store.flush_usage()
    texts = {(entry.key_id == keeping.id, entry.request_text, entry.output_text) for entry in store.find_requests()}
    assert texts == {(True, "hi", "yo"), (False, None, None)}
    assert store.update_key(keeping.id, keep_texts=False).keep_texts is False
    store.record_usage(UsageRecord.from_texts(admission=store.admit(keeping_secret, "chat"), request_text="later"))
    store.flush_usage()
    assert store.find_requests(key_id=keeping.id, limit=1)[0].request_text is None
    with pytest.raises(InvalidValue, match="keep_texts"):
        store.update_key(keeping.id, keep_texts="yes")  # type: ignore[arg-type]


def test_texts_past_their_retention_are_forgotten_and_their_records_kept(migrated_url: str) -> None:
    with AccountStore.from_url(migrated_url, usage_flush_interval=60.0, text_retention_days=7) as store:
        _, secret = store.create_key(email="ana@example.org", keep_texts=True)
        for at in (DAY_ONE, DAY_ONE + timedelta(days=5)):
            store.record_usage(UsageRecord.from_texts(admission=store.admit(secret, "chat"), request_text="hi", at=at))
        store.flush_usage()
        assert store.forget_old_texts(now=DAY_ONE + timedelta(days=8)) == 1
        assert [entry.request_text for entry in store.find_requests()] == ["hi", None]
        assert store.forget_old_texts(now=DAY_ONE + timedelta(days=8)) == 0
        assert sum(row.requests for row in store.usage_report()) == 2
