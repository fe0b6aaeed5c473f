"""The brake on key guessing over real HTTP, across two frontends sharing one accounts database:
an address that keeps sending wrong keys is refused with 429 without a database lookup, and
a valid key from another address is never refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests

from accounts import keys
from tests.frontend.conftest import Api, running_api
from tests.frontend.test_api import error_of
from tests.harness import free_port, wait_until

GUESSER = "203.0.113.5"
HONEST = "198.51.100.7"


@contextmanager
def two_frontends(tmp_path, limit: int) -> Iterator[tuple[Api, str]]:
    """A stack whose brake blocks an address after ``limit`` wrong keys, and the URL of a second frontend."""
    frontend = {"trust_proxy_headers": True, "key_failure_limit": limit, "key_failure_window": 60.0,
                "key_block_seconds": 60.0}
    with running_api(tmp_path, frontend=frontend) as api:
        port = free_port()
        api.stack.start("frontend-2", "frontend", "--port", str(port))
        second = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(second + "/healthz", timeout=1).ok, what="the second frontend")
        yield api, second


def call(url: str, secret: str, address: str = GUESSER) -> requests.Response:
    return requests.post(url + "/api/", json={"text": "x"}, timeout=30,
                         headers={"Authorization": f"Bearer {secret}", "X-Forwarded-For": address})


def test_an_address_guessing_keys_is_throttled_across_frontends_and_others_are_not(tmp_path):
    with two_frontends(tmp_path, limit=10) as (api, second):
        valid = api.key()

        answers = [call((api.url, second)[n % 2], keys.new_secret(), GUESSER) for n in range(200)]
        statuses = [answer.status_code for answer in answers]
        # The 10th failure blocks the address; each frontend asks the database at most once more.
        assert statuses[:10] == [401] * 10 and statuses.count(401) <= 11 and statuses.count(429) >= 189
        throttled = next(answer for answer in answers if answer.status_code == 429)
        assert error_of(throttled) == "too_many_failed_keys" and 1 <= int(throttled.headers["Retry-After"]) <= 60
        failures, blocks = api.store.key_brake_state(GUESSER)
        assert blocks == 1 and failures <= 1  # the throttled requests never reached the database
        # Even the right key from the guessing address waits; from another address it is served.
        assert call(api.url, valid, GUESSER).status_code == 429
        assert [call(url, valid, HONEST).status_code for url in (api.url, second) * 5] == [200] * 10


def test_a_block_recorded_by_one_frontend_is_refused_by_every_other_within_a_second(tmp_path):
    with two_frontends(tmp_path, limit=3) as (api, second):
        valid = api.key()
        assert [call(api.url, keys.new_secret()).status_code for _ in range(4)] == [401, 401, 401, 429]
        # The second frontend never counted a failure of this address: it reads the block from the
        # database, twice a second (the deadline allows for a loaded machine).
        wait_until(lambda: call(second, valid).status_code == 429, timeout=3, interval=0.05, what="the block")
        assert error_of(call(second, keys.new_secret())) == "too_many_failed_keys"
        assert api.store.key_brake_state(GUESSER)[1] == 1
