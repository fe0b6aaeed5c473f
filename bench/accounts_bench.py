"""Admissions per second through ``AccountStore.admit``, one process, on SQLite and PostgreSQL.

For each database: one thread admitting as fast as it can (the figure asked
for), the latency of one admission, refusals per second (a refusal costs a
second read, to name the reason), and eight threads sharing the store; then
one thread on a key with every limit of accounts.limits set (none reached),
against the plain key's rate; and admissions counted in groups
(``AccountStore.admit_many``, as a frontend counts those that arrive together)
of 8 and 32, against one at a time.

    .venv/bin/python -m bench.accounts_bench [--seconds 3] [--postgres-url URL]

PostgreSQL comes from --postgres-url, else $LLMAPI_TEST_POSTGRES_URL, else
postgresql+psycopg2://postgres@127.0.0.1:5432/test; it is skipped, with the
reason, when unreachable. It runs in a schema made for the run and dropped after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from sqlalchemy import create_engine, exc, text

from accounts.errors import AdmissionDenied
from accounts.store import AccountStore, AdmissionAsked
from bench.common import summary

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
THREADS = 8
GROUPS = (8, 32)


def timed(work: Callable[[], None], seconds: float) -> list[float]:
    """Latencies of ``work`` called back to back for ``seconds``."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        work()
        latencies.append(time.perf_counter() - started)
    return latencies


def refuse(store: AccountStore, secret: str) -> Callable[[], None]:
    def work() -> None:
        try:
            store.admit(secret, "default")
        except AdmissionDenied:
            return
        raise RuntimeError("the exhausted key was admitted")

    return work


def threaded_rate(store: AccountStore, secret: str, seconds: float) -> float:
    counts = [0] * THREADS
    start = threading.Barrier(THREADS + 1)

    def worker(index: int) -> None:
        start.wait()
        counts[index] = len(timed(lambda: store.admit(secret, "default"), seconds))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def grouped_rate(store: AccountStore, secret: str, size: int, seconds: float) -> float:
    """Admissions per second when ``size`` at a time are counted in one transaction."""
    asked = [AdmissionAsked(secret, "default")] * size
    latencies = timed(lambda: store.admit_many(asked), seconds)
    return size * len(latencies) / sum(latencies)


def bench(name: str, url: str, seconds: float) -> None:
    with AccountStore.from_url(url) as store:
        store.migrate()
        _, unlimited = store.create_key(email="bench@example.org")
        _, exhausted = store.create_key(email="bench@example.org", max_requests=0)
        _, limited = store.create_key(
            email="bench@example.org",
            max_requests=10**9,
            requests_per_minute=10**9,
            tokens_per_minute=10**12,
            token_budget=10**12,
            max_concurrent=1000,
            weight=2,
        )
        store.admit(unlimited, "default")  # warm the pool and the statement cache
        admitted = timed(lambda: store.admit(unlimited, "default"), seconds)
        refused = timed(refuse(store, exhausted), seconds / 2)
        parallel = threaded_rate(store, unlimited, seconds / 2)
        with_limits = timed(lambda: store.admit(limited, "default"), seconds)
        grouped = {size: grouped_rate(store, unlimited, size, seconds / 2) for size in GROUPS}
    stats = summary(admitted)
    plain_rate, limited_rate = len(admitted) / sum(admitted), len(with_limits) / sum(with_limits)
    print(
        f"{name:<10}  {len(admitted) / sum(admitted):8.0f} admissions/s (1 thread)   "
        f"p50 {stats['p50_ms']:.2f} ms  p99 {stats['p99_ms']:.2f} ms   "
        f"{len(refused) / sum(refused):6.0f} refusals/s   "
        f"{parallel:6.0f} admissions/s ({THREADS} threads)\n"
        f"{'':<10}  {limited_rate:8.0f} admissions/s (1 thread, every limit set) = {limited_rate / plain_rate:.2f}x plain"
    )
    for size, rate in grouped.items():
        print(f"{'':<10}  {rate:8.0f} admissions/s (1 thread, groups of {size}) = {rate / plain_rate:.2f}x one at a time")


@contextmanager
def postgres_schema(url: str) -> Iterator[str | None]:
    """A URL on a new schema, or None (after saying why) when PostgreSQL is unreachable."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    schema = f"accounts_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except exc.DBAPIError as error:
        print(f"postgresql  skipped: unreachable ({str(error.orig).strip().splitlines()[0]})")
        admin.dispose()
        yield None
        return
    try:
        yield admin.url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the single-thread run")
    parser.add_argument("--postgres-url", default=os.environ.get("LLMAPI_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only
    with tempfile.TemporaryDirectory() as tmp:
        bench("sqlite", f"sqlite:///{Path(tmp) / 'accounts.db'}", args.seconds)
    with postgres_schema(args.postgres_url) as url:
        if url is not None:
            bench("postgresql", url, args.seconds)


if __name__ == "__main__":
    main()
