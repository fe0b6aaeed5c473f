"""Chaos soak: mixed load while processes are killed and the database frozen, then a reconciliation.

    python -m bench.chaos_soak [--seconds 600] [--seed 1] [--clients 12]

It starts, on a PostgreSQL cluster of its own (so it can be frozen), a
broker, two frontends, two echo workers and two text-generation workers on
the tests' tiny Llama. Client threads send, to either frontend at random:
echo requests, streamed chat on the tiny model (greedy, so every stream's
text is known), long greedy streams that a worker's death or drain should not
break (the stream goes on on the other worker), requests with a bad key,
with a used-up key, and requests whose client leaves half-way. Meanwhile a chaos thread, every few seconds,
injects one fault at a time and restores it: kill -9 a worker, kill -9 the
broker, kill -9 one frontend, SIGTERM a worker, or freeze the database.

At the end it stops the load, settles what the killed frontends left open,
and checks, per key, that ``used`` equals the charged usage records and
``tokens_used`` the tokens those records carry; that every request a client
saw answered has exactly one usage record; that no stream was answered twice
(each complete stream is exactly its known text, each broken one a prefix of
it); and that the memory of every process that lived through the soak stayed
flat. It counts the streams that went on on another worker (the brokers'
``stream_migrated`` lines) and how many long streams still read their whole
known text. It prints the figures and the recovery
time after each kind of fault, and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from accounts.store import AccountStore
from broker.client import Client
from config.logs import configure_logging
from config.settings import LoggingSettings
from tests.faults.postgres import ThrowawayPostgres
from tests.harness import Process, Stack, free_port, wait_until

PROMPTS = ["Tell me about the lighthouse.", "Name the capitals.", "Count along with me.", "Why stream?"]
STREAM_TOKENS = 24
LONG_TOKENS = 300
# Where the wrong keys claim to come from (a documentation address, named in a header only).
GUESSER = "203.0.113.9"
FAULTS = ("kill_worker", "kill_broker", "kill_frontend", "stop_worker", "freeze_database")


@dataclass
class Tally:
    """What the clients saw, gathered across threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    answered: list[str] = field(default_factory=list)  # request ids of whole answers seen
    streams_whole: int = 0
    streams_broken: int = 0
    stream_errors: list[str] = field(default_factory=list)  # streams whose text was not the known one
    long_whole: int = 0
    long_broken: int = 0

    def add(self, kind: str, status: int | str, request_id: str | None = None) -> None:
        with self.lock:
            self.statuses[f"{kind} {status}"] += 1
            if status == 200 and request_id:
                self.answered.append(request_id)


class Soak:
    """The stack, its keys and the known answers; ``tmp`` holds logs and configuration."""

    def __init__(self, tmp: Path, database: ThrowawayPostgres, rng: random.Random) -> None:
        from tests.fixtures.tiny_model import build_tiny_llama

        self.rng = rng
        self.ports = [free_port(), free_port()]
        store = AccountStore.from_url(database.url)
        store.migrate()
        self.good_key, self.good = store.create_key(email="soak@example.org")
        self.spent_key, self.spent = store.create_key(email="spent@example.org", max_requests=5)
        self.store = store
        model = build_tiny_llama(tmp / "tiny-llama")
        self.generation = [f"--option={name}={value}" for name, value in
                           {"model": model, "cpu_threads": 1, "max_batch": 8, "max_new_tokens_limit": 400}.items()]
        self.stack = Stack(
            tmp,
            {
                "broker": {"heartbeat_interval": 0.5, "client_timeout": 2.0, "startup_grace": 5.0},
                # Every client is on loopback: the wrong keys say they come from another address
                # (a header only), so the brake on key guessing blocks that one, not everyone.
                "frontend": {"request_timeout": 20.0, "admission_timeout": 2.0, "shutdown_grace": 2.0,
                             "abandoned_check_interval": 3600.0, "trust_proxy_headers": True},
                "accounts": {"database_url": database.url, "usage_flush_interval": 0.2},
                "logging": {"level": "warning"},
            },
        )
        self.database = database
        self.processes: dict[str, Process] = {}
        self.start("broker")
        for name in ("echo-0", "echo-1", "tiny-0", "tiny-1", "frontend-0", "frontend-1"):
            self.start(name)
        self.wait_serving()
        self.expected = {(prompt, STREAM_TOKENS): self.known_text(prompt, STREAM_TOKENS) for prompt in PROMPTS}
        self.expected.update({(prompt, LONG_TOKENS): self.known_text(prompt, LONG_TOKENS) for prompt in PROMPTS})

    def start(self, name: str) -> None:
        if name == "broker":
            process = self.stack.broker()
        elif name.startswith("frontend"):
            process = self.stack.start(name, "frontend", "--port", str(self.ports[int(name[-1])]))
        elif name.startswith("echo"):
            process = self.stack.worker("default", "echo")
        else:
            process = self.stack.worker("tiny", "text-generation", *self.generation)
        self.processes[name] = process

    def wait_serving(self, timeout: float = 120) -> None:
        with Client(self.stack.endpoint, timeout=5) as client:

            def ready() -> bool:
                services = client.status()["services"]
                return all(len([w for w in services.get(s, {}).get("workers", [])]) == 2 for s in ("default", "tiny"))

            wait_until(ready, timeout=timeout, interval=0.2, what="every worker")
        for port in self.ports:
            wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, timeout=30)

    def wait_registered(self, pid: int) -> None:
        """Until the worker with ``pid`` has registered with the broker."""
        with Client(self.stack.endpoint, timeout=5) as client:

            def registered() -> bool:
                services = client.status()["services"].values()
                return any(worker.get("pid") == pid for service in services for worker in service["workers"])

            wait_until(registered, timeout=120, interval=0.05, what=f"worker {pid} to register")

    def known_text(self, prompt: str, tokens: int) -> str:
        """The greedy answer to ``prompt`` in ``tokens`` tokens, asked once, whole."""
        response = requests.post(
            f"http://127.0.0.1:{self.ports[0]}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                  "temperature": 0},
            headers={"Authorization": f"Bearer {self.good}"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.rng.choice(self.ports)}"


# -- the load -------------------------------------------------------------------------------


def client_loop(soak: Soak, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    session = requests.Session()
    while not stop.is_set():
        kind = rng.choices(["echo", "stream", "long", "bad_key", "spent_key", "leave"], weights=[5, 4, 2, 1, 1, 2])[0]
        try:
            if kind in ("stream", "long"):
                one_stream(soak, tally, session, rng, STREAM_TOKENS if kind == "stream" else LONG_TOKENS)
            elif kind == "leave":
                leave_midway(soak, tally, rng)
            else:
                key = {"echo": soak.good, "bad_key": "llmapi_notakey", "spent_key": soak.spent}[kind]
                headers = {"Authorization": f"Bearer {key}"}
                if kind == "bad_key":
                    headers["X-Forwarded-For"] = GUESSER
                response = session.post(soak.url() + "/api/", json={"text": "soak"}, headers=headers, timeout=30)
                tally.add(kind, response.status_code, response.headers.get("X-Request-Id"))
        except requests.RequestException as error:
            tally.add(kind, type(error).__name__)
            session = requests.Session()


def one_stream(soak: Soak, tally: Tally, session: requests.Session, rng: random.Random, tokens: int) -> None:
    prompt = rng.choice(PROMPTS)
    body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True}
    response = session.post(
        soak.url() + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {soak.good}"},
        stream=True, timeout=30,
    )
    request_id = response.headers.get("X-Request-Id")
    if response.status_code != 200:
        tally.add("stream", response.status_code)
        response.close()
        return
    text, done, failed = "", False, False
    for line in response.iter_lines():
        if line == b"data: [DONE]":
            done = True
        elif line.startswith(b"data: {"):
            event = json.loads(line[6:])
            if "error" in event:
                failed = True
            else:
                text += "".join(choice["delta"].get("content") or "" for choice in event["choices"])
    expected = soak.expected[prompt, tokens]
    with tally.lock:
        if done and not failed and text == expected:
            tally.streams_whole += 1
            tally.long_whole += tokens == LONG_TOKENS
        elif expected.startswith(text) and (failed or not done):
            tally.streams_broken += 1
            tally.long_broken += tokens == LONG_TOKENS
        else:
            tally.stream_errors.append(f"{request_id}: {text!r} against {expected!r}")
    tally.add("stream", 200 if done and not failed else "broken", request_id if done and not failed else None)


def leave_midway(soak: Soak, tally: Tally, rng: random.Random) -> None:
    if rng.random() < 0.5:
        path = "/v1/chat/completions"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 400,
                "stream": rng.random() < 0.5}
    else:
        path, body = "/api/tiny/", {"text": "go on", "max_new_tokens": 400}
    try:
        requests.post(
            soak.url() + path, json=body, headers={"Authorization": f"Bearer {soak.good}"},
            timeout=rng.uniform(0.05, 0.4),
        )
        tally.add("leave", "stayed")
    except requests.Timeout:
        tally.add("leave", "left")


# -- the chaos --------------------------------------------------------------------------------


def chaos_loop(soak: Soak, stop: threading.Event, rng: random.Random, recovery: dict[str, list[float]]) -> None:
    while not stop.wait(rng.uniform(2.0, 5.0)):
        fault = rng.choice(FAULTS)
        started = time.monotonic()
        if fault == "freeze_database":
            soak.database.freeze()
            stop.wait(rng.uniform(1.0, 3.0))
            soak.database.thaw()
            started = time.monotonic()
            wait_until(lambda: probe(soak, soak.ports[0]), timeout=60, interval=0.05)
        else:
            name = {
                "kill_worker": rng.choice(["echo-0", "echo-1", "tiny-0", "tiny-1"]),
                "stop_worker": rng.choice(["echo-0", "echo-1", "tiny-0", "tiny-1"]),
                "kill_broker": "broker",
                "kill_frontend": "frontend-1",
            }[fault]
            process = soak.processes[name]
            process.signal(signal.SIGTERM if fault == "stop_worker" else signal.SIGKILL)
            process.wait(60)
            process.stop()
            soak.start(name)
            if name.startswith(("echo", "tiny")):
                soak.wait_registered(soak.processes[name].pid)
            wait_until(lambda: probe(soak, soak.ports[1 if name == "frontend-1" else 0]), timeout=60, interval=0.05)
        recovery[fault].append(time.monotonic() - started)


def probe(soak: Soak, port: int) -> bool:
    try:
        response = requests.post(
            f"http://127.0.0.1:{port}/api/", json={"text": "probe"}, headers={"Authorization": f"Bearer {soak.good}"},
            timeout=2,
        )
    except requests.RequestException:
        return False
    return response.status_code == 200


# -- the reconciliation -----------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def records_by_request(store: AccountStore, key_ids: list[int]) -> Counter:
    from sqlalchemy import bindparam, text

    query = text("SELECT request_id FROM usage_records WHERE key_id IN :keys").bindparams(bindparam("keys", expanding=True))
    with store.engine.connect() as conn:
        return Counter(row[0] for row in conn.execute(query, {"keys": key_ids}))


def reconcile(soak: Soak, tally: Tally) -> tuple[list[str], dict[str, Any]]:
    """Stop the frontends gracefully, settle what killed ones left open, and check the ledger."""
    for name in ("frontend-0", "frontend-1"):
        soak.processes[name].stop()  # SIGTERM: their buffered records are written
    settled = 0
    while count := soak.store.settle_abandoned(older_than=0):
        settled += count
    failures = []
    keys = [soak.good_key.id, soak.spent_key.id]
    states = {key: soak.store.ledger_state(key) for key in keys}
    for key, state in states.items():
        if not state.balanced or state.open or state.used != state.charged:
            failures.append(f"key {key}: {state}")
    recorded = records_by_request(soak.store, keys)
    missing = [rid for rid in tally.answered if recorded[rid] != 1]
    if missing:
        failures.append(f"{len(missing)} answered requests without exactly one record, e.g. {missing[:3]}")
    doubled = [rid for rid, count in recorded.items() if rid is not None and count > 1]
    if doubled:
        failures.append(f"{len(doubled)} requests with more than one record")
    if tally.stream_errors:
        failures.append(f"{len(tally.stream_errors)} streams not equal to (a prefix of) their text: {tally.stream_errors[:2]}")
    figures = {
        "records": sum(recorded.values()),
        "charged": sum(state.charged for state in states.values()),
        "used": sum(state.used for state in states.values()),
        "tokens of charged records": sum(state.charged_tokens for state in states.values()),
        "tokens_used": sum(state.tokens_used for state in states.values()),
        "abandoned_settled_at_end": settled,
        "answered": len(tally.answered),
    }
    return failures, figures


def run(seconds: float, seed: int, clients: int) -> int:
    rng = random.Random(seed)
    database = ThrowawayPostgres()
    database.start()
    tmp = Path(tempfile.mkdtemp(prefix="llmapi-soak-"))
    soak = None
    try:
        soak = Soak(tmp, database, rng)
        tally, stop = Tally(), threading.Event()
        recovery: dict[str, list[float]] = defaultdict(list)
        threads = [threading.Thread(target=client_loop, args=(soak, tally, stop, seed * 100 + n)) for n in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(min(10.0, seconds / 6))  # warm up before the first memory reading
        started = dict(soak.processes)
        memory_before = {name: rss_mib(process.pid) for name, process in started.items()}
        chaos = threading.Thread(target=chaos_loop, args=(soak, stop, random.Random(seed + 1), recovery))
        chaos.start()
        stop.wait(seconds)
        stop.set()
        chaos.join()
        for thread in threads:
            thread.join()
        # Only the processes the chaos never restarted can show a trend.
        survivors = [name for name, process in started.items() if soak.processes[name] is process and process.alive()]
        memory_before = {name: memory_before[name] for name in survivors}
        memory_after = {name: rss_mib(started[name].pid) for name in survivors}
        failures, figures = reconcile(soak, tally)
        figures["migrated"] = sum(
            process.log().count("stream_migrated") for process in soak.stack.processes if "broker" in process.args
        )
        for name, before in memory_before.items():
            if memory_after[name] > before * 1.5 + 30:
                failures.append(f"{name} memory grew from {before:.0f} to {memory_after[name]:.0f} MiB")
        print(report(seconds, tally, figures, recovery, memory_before, memory_after))
        print("\nreconciled: every check passed" if not failures else "\nFAILED:\n  " + "\n  ".join(failures))
        return 1 if failures else 0
    finally:
        if soak is not None:
            soak.stack.stop()
            soak.store.close()
        database.stop()


def report(seconds, tally, figures, recovery, memory_before, memory_after) -> str:
    lines = [f"chaos soak: {seconds:.0f} s, {sum(tally.statuses.values())} requests", "", "| what clients saw | count |",
             "| --- | ---: |"]
    lines += [f"| {what} | {count} |" for what, count in sorted(tally.statuses.items())]
    lines += [f"| streams whole / broken (a prefix, then an error) | {tally.streams_whole} / {tally.streams_broken} |"]
    lines += [f"| of which long ({LONG_TOKENS} tokens) whole / broken | {tally.long_whole} / {tally.long_broken} |"]
    lines += [f"| streams that went on on another worker (stream_migrated) | {figures.pop('migrated')} |"]
    lines += ["", "| ledger | count |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in figures.items()]
    lines += ["", "Recovery: from the fault to a restarted worker registered, or a probe answered through",
              "the frontend that was killed (the other frontend serves throughout), or after a thaw.", "",
              "| fault | times | recovery median s | max s |", "| --- | ---: | ---: | ---: |"]
    for fault in FAULTS:
        times = recovery.get(fault, [])
        if times:
            lines.append(f"| {fault} | {len(times)} | {statistics.median(times):.2f} | {max(times):.2f} |")
    lines += ["", "| process (lived through the soak) | RSS MiB after warm-up | at the end |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {memory_before[name]:.0f} | {memory_after[name]:.0f} |" for name in memory_before]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=12)
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="warning"), "chaos-soak")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run(args.seconds, args.seed, args.clients)


if __name__ == "__main__":
    raise SystemExit(main())
