"""The policy seam: a policy added to the gateway's list sees every request at the same
hooks, may refuse one after admission, and every admitted request still ends once,
with one usage record and its count settled by the billing rule.

Real broker and worker processes, a real accounts database and the gateway in this
process, so that test policies can be put in its list.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import tornado.web

from accounts.store import AccountStore
from broker.client import AsyncClient, new_request_id
from frontend import errors
from frontend.gateway import Gateway
from frontend.policies import Call, Ending, Policy
from frontend.policies.usage import UsageRecords
from tests.bus.test_bus import ready
from tests.faults.conftest import usage_outcomes
from tests.harness import accounts_database


@dataclass
class Seen:
    hook: str
    text: str
    outcome: str = ""
    charged: bool | None = None


class Recorder(Policy):
    """Notes each hook it sees, in order."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.changed = asyncio.Event()

    async def before(self, call: Call) -> None:
        self.seen.append(Seen("before", call.payload["text"]))
        self.changed.set()

    async def sent(self, text: str) -> None:
        """Once the request of ``text`` has passed this policy's ``before``."""
        while Seen("before", text) not in self.seen:
            self.changed.clear()
            await self.changed.wait()

    async def answered(self, call: Call, ending: Ending) -> None:
        self.seen.append(Seen("answered", call.payload["text"], ending.outcome, ending.charged))

    async def failed(self, call: Call, ending: Ending) -> None:
        self.seen.append(Seen("failed", call.payload["text"], ending.outcome, ending.charged))


class NoQuestions(Policy):
    """A limit the frontend judges, as a new one would be: one class in the list."""

    async def before(self, call: Call) -> None:
        if call.payload["text"].endswith("?"):
            raise errors.ApiError("invalid_value", "questions are not served here", param="text")


class BrokenHook(Policy):
    async def answered(self, call: Call, ending: Ending) -> None:
        raise RuntimeError("a policy that fails as a request ends")


class HeldEnding(Policy):
    """Holds each answered ending until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def answered(self, call: Call, ending: Ending) -> None:
        await self.release.wait()


@pytest.fixture
def gateway_parts(stack_factory, tmp_path):
    stack = stack_factory()
    stack.broker()
    stack.worker("default", "sleep")
    ready(stack, 1).close()
    url, secret = accounts_database(tmp_path)
    with AccountStore.from_url(url) as store:
        yield stack, store, secret


def run_with_gateway(gateway_parts, scenario):
    stack, store, secret = gateway_parts

    async def main():
        async with AsyncClient(stack.endpoint, timeout=10, heartbeat_interval=stack.heartbeat_interval) as bus:
            gateway = Gateway(stack.settings.frontend, store, bus, ["default"])
            try:
                return await scenario(gateway, secret)
            finally:
                await gateway.wait_for_endings(10)  # as the server does before it stops
                gateway.close()

    return asyncio.run(main())


def new_call(secret: str, service: str = "default") -> Call:
    return Call(secret=secret, service=service, request_id=new_request_id())


def test_a_policy_sees_each_request_before_it_is_sent_and_once_as_it_ends(gateway_parts):
    recorder = Recorder()

    async def scenario(gateway: Gateway, secret: str) -> None:
        gateway.policies.policies.insert(1, NoQuestions())
        gateway.policies.policies.append(recorder)
        answer = await gateway.complete(new_call(secret), {"text": "hello", "sleep_ms": 0})
        assert answer["output"] == "hello"
        with pytest.raises(errors.ApiError) as refused:
            await gateway.complete(new_call(secret), {"text": "why?", "sleep_ms": 0})
        with pytest.raises(errors.ApiError) as unknown:
            await gateway.complete(new_call(secret, "nobody-serves-this"), {"text": "lost", "sleep_ms": 0})
        pieces = [event async for event in gateway.stream(new_call(secret), {"text": "one two", "sleep_ms": 0})]
        assert pieces[-1].summary is not None
        # A client that leaves: the request is cancelled once it was sent.
        leaving = asyncio.ensure_future(gateway.complete(new_call(secret), {"text": "bye", "sleep_ms": 30_000}))
        await asyncio.wait_for(recorder.sent("bye"), timeout=10)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        for error in (refused.value, unknown.value):
            assert not isinstance(error, tornado.web.HTTPError)  # HTTP is the handlers' business
        assert (refused.value.code, refused.value.param) == ("invalid_value", "text")
        assert unknown.value.code == "unknown_service"

    run_with_gateway(gateway_parts, scenario)
    _, store, _ = gateway_parts
    assert recorder.seen == [
        Seen("before", "hello"),
        Seen("answered", "hello", "ok", True),
        # Refused by the policy before it: its own hook never saw a "before", but its ending.
        Seen("failed", "why?", "invalid_value", False),
        Seen("before", "lost"),
        Seen("failed", "lost", "unknown_service", False),
        Seen("before", "one two"),
        Seen("answered", "one two", "ok", True),
        Seen("before", "bye"),
        Seen("failed", "bye", "client_left", False),
    ]
    store.flush_usage()
    key_id = store.list_keys()[0].id
    state = store.ledger_state(key_id)
    assert (state.used, state.charged, state.open, state.records) == (2, 2, 0, 5)
    assert usage_outcomes(store, key_id) == [
        ("ok", True),
        ("invalid_value", False),
        ("unknown_service", False),
        ("ok", True),
        ("client_left", False),
    ]


def test_a_policy_that_fails_as_a_request_ends_does_not_stop_the_others(gateway_parts):
    async def scenario(gateway: Gateway, secret: str) -> None:
        at = next(i for i, policy in enumerate(gateway.policies.policies) if isinstance(policy, UsageRecords))
        gateway.policies.policies.insert(at, BrokenHook())
        answer = await gateway.complete(new_call(secret), {"text": "kept", "sleep_ms": 0})
        assert answer["output"] == "kept"

    run_with_gateway(gateway_parts, scenario)
    _, store, _ = gateway_parts
    store.flush_usage()
    state = store.ledger_state(store.list_keys()[0].id)
    assert (state.used, state.charged, state.open, state.records) == (1, 1, 0, 1)


def test_an_answer_is_handed_over_without_waiting_for_its_ending(gateway_parts):
    """So that a cancel (a shutdown) just after the answer came cannot turn a charged answer into an error."""
    held = HeldEnding()

    async def scenario(gateway: Gateway, secret: str) -> None:
        gateway.policies.policies.insert(0, held)
        answer = await asyncio.wait_for(gateway.complete(new_call(secret), {"text": "now", "sleep_ms": 0}), 10)
        assert answer["output"] == "now"
        held.release.set()

    run_with_gateway(gateway_parts, scenario)
    _, store, _ = gateway_parts
    store.flush_usage()
    state = store.ledger_state(store.list_keys()[0].id)
    assert (state.used, state.charged, state.open, state.records) == (1, 1, 0, 1)
