"""The brake on key guessing, in the accounts database: failed key checks counted per address,
exact across stores (frontends) and threads, blocks that grow, and other addresses untouched."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from accounts.key_brake import BrakePolicy
from accounts.store import AccountStore

NOW = 2_000_000_000.0
POLICY = BrakePolicy(limit=5, window=60.0, block=30.0, block_max=100.0)


def test_the_limit_th_failure_blocks_the_address_and_each_further_block_lasts_twice_as_long(store: AccountStore) -> None:
    assert [store.record_key_failure("203.0.113.5", POLICY, now=NOW + n) for n in range(4)] == [0.0] * 4
    assert store.record_key_failure("203.0.113.5", POLICY, now=NOW + 4) == 30.0
    assert store.record_key_failure("203.0.113.5", POLICY, now=NOW + 10) == pytest.approx(24.0)
    assert store.record_key_failure("198.51.100.7", POLICY, now=NOW + 10) == 0.0  # another address
    after = NOW + 34
    blocks = [store.record_key_failure("203.0.113.5", POLICY, now=after + n) for n in range(5)]
    assert blocks[:4] == [0.0] * 4 and blocks[4] == 60.0
    later = after + 4 + 60
    blocks = [store.record_key_failure("203.0.113.5", POLICY, now=later + n) for n in range(5)]
    assert blocks[4] == 100.0  # 120, capped at block_max


def test_failures_spread_over_more_than_a_window_never_block(store: AccountStore) -> None:
    assert {store.record_key_failure("203.0.113.5", POLICY, now=NOW + 40 * n) for n in range(20)} == {0.0}


def test_many_threads_on_two_stores_block_an_address_once(migrated_url: str) -> None:
    with AccountStore.from_url(migrated_url) as one, AccountStore.from_url(migrated_url) as two:
        start = threading.Barrier(8)

        def fail(n: int) -> list[float]:
            start.wait()
            return [(one, two)[n % 2].record_key_failure("203.0.113.5", POLICY, now=NOW) for _ in range(10)]

        with ThreadPoolExecutor(8) as pool:
            answers = [seconds for found in pool.map(fail, range(8)) for seconds in found]
        # The 5th failure blocks; every later one hears of the block; none blocks again.
        assert answers.count(0.0) == 4 and set(answers) == {0.0, 30.0}
        assert one.key_brake_state("203.0.113.5") == (0, 1)  # failures during the block are not counted


def test_a_disabled_brake_counts_nothing(store: AccountStore) -> None:
    off = BrakePolicy(limit=0)
    assert {store.record_key_failure("203.0.113.5", off, now=NOW) for _ in range(50)} == {0.0}
    assert store.key_brake_state("203.0.113.5") is None


def test_quiet_addresses_are_forgotten_and_start_over(store: AccountStore) -> None:
    for n in range(5):
        store.record_key_failure("203.0.113.5", POLICY, now=NOW + n)
    store.record_key_failure("198.51.100.7", POLICY, now=NOW + 200)
    assert store.purge_key_failures(POLICY, now=NOW + 200) == 1
    assert store.key_brake_state("203.0.113.5") is None and store.key_brake_state("198.51.100.7") == (1, 0)


def test_a_scoped_brake_counts_apart_and_forgets_only_its_own_addresses(store: AccountStore) -> None:
    console = BrakePolicy(limit=5, window=60.0, block=60.0, block_max=60.0, scope="admin ")
    store.record_key_failure("203.0.113.5", POLICY, now=NOW)
    store.record_key_failure("203.0.113.5", console, now=NOW)
    assert store.key_brake_state("203.0.113.5") == (1, 0) == store.key_brake_state("203.0.113.5", console.scope)
    # Quiet past the console's horizon (120 s) but not the API's (160 s): only the console's row goes.
    assert store.purge_key_failures(console, now=NOW + 150) == 1
    assert store.key_brake_state("203.0.113.5") == (1, 0) and store.key_brake_state("203.0.113.5", "admin ") is None
    # And the API's purge forgets only the API's addresses.
    store.record_key_failure("198.51.100.7", console, now=NOW + 150)
    assert store.purge_key_failures(POLICY, now=NOW + 400) == 1
    assert store.key_brake_state("203.0.113.5") is None and store.key_brake_state("198.51.100.7", "admin ") == (1, 0)
