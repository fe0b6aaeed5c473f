"""Faults of the accounts database: frozen (not down) PostgreSQL, on a cluster of the test's own."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from accounts import keys
from accounts.store import AccountStore
from tests.faults.conftest import balanced, usage_outcomes
from tests.faults.postgres import ThrowawayPostgres
from tests.frontend.conftest import running_api
from tests.harness import wait_until


@pytest.fixture(scope="module")
def postgres():
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        with AccountStore.from_url(cluster.url) as store:
            store.migrate()
        yield cluster
    finally:
        cluster.stop()


def test_a_frozen_database_gets_a_503_at_the_admission_deadline_and_a_late_admission_is_refunded(tmp_path, postgres):
    with running_api(
        tmp_path, accounts={"database_url": postgres.url}, frontend={"admission_timeout": 1.0}
    ) as api:
        info, secret = api.store.create_key(email="frozen@example.org")
        assert api.post("/api/", secret, {"text": "warm"}).status_code == 200
        postgres.freeze()
        try:
            started = time.monotonic()
            response = api.post("/api/", secret, {"text": "stuck"})
            waited = time.monotonic() - started
        finally:
            postgres.thaw()
        assert response.status_code == 503 and response.headers["Retry-After"] and waited < 3
        assert response.json()["error"]["code"] == "database_unavailable"
        balanced(api.store, info.id, records=2)  # the admission that came back late is recorded...
        assert usage_outcomes(api.store, info.id) == [("ok", True), ("admission_timeout", False)]  # ...and refunded


def test_a_client_that_leaves_while_its_admission_hangs_is_recorded_and_not_charged(tmp_path, postgres):
    with running_api(
        tmp_path, accounts={"database_url": postgres.url}, frontend={"admission_timeout": 10.0}
    ) as api:
        info, secret = api.store.create_key(email="leaver@example.org")
        assert api.post("/api/", secret, {"text": "warm"}).status_code == 200
        postgres.freeze()
        try:
            with ThreadPoolExecutor(4) as pool:
                leaving = [pool.submit(api.post, "/api/", secret, {"text": "bye"}, timeout=0.5) for _ in range(4)]
                for client in leaving:
                    with pytest.raises(requests.Timeout):
                        client.result()
        finally:
            postgres.thaw()
        state = balanced(api.store, info.id, records=5)
        assert state.used == 1 and state.charged == 1
        assert sorted(usage_outcomes(api.store, info.id)) == [("client_left", False)] * 4 + [("ok", True)]


def test_a_wrong_key_whose_check_comes_back_after_the_deadline_still_counts_towards_the_brake(tmp_path, postgres):
    with running_api(
        tmp_path, accounts={"database_url": postgres.url}, frontend={"admission_timeout": 1.0}
    ) as api:
        assert api.post("/api/", api.key(), {"text": "warm"}).status_code == 200
        postgres.freeze()
        try:
            response = api.post("/api/", keys.new_secret(), {"text": "guess"})
        finally:
            postgres.thaw()
        assert response.status_code == 503 and response.json()["error"]["code"] == "database_unavailable"
        # Its check ends once the database is back, and the failure is counted for its address.
        failures = wait_until(lambda: (api.store.key_brake_state("127.0.0.1") or (0, 0))[0],
                              what="the late wrong key counted")
        assert failures == 1
