"""Blocking calls off the event loop: what queues while a drainer is busy is run together, and
a group's members each get their own result or error."""

from __future__ import annotations

import asyncio
import threading

from frontend.blocking import BatchedCalls


def test_members_queued_together_are_run_as_one_group_and_each_gets_its_own_outcome() -> None:
    groups: list[list[int]] = []
    busy, release = threading.Event(), threading.Event()

    def hold() -> str:
        busy.set()
        release.wait(10)
        return "held"

    def halve(items: list[int]) -> list[int | BaseException]:
        groups.append(items)
        return [item // 2 if item % 2 == 0 else ValueError(f"{item} is odd") for item in items]

    async def main() -> list[object]:
        calls = BatchedCalls(1, "test")
        try:
            first = asyncio.ensure_future(calls.call(hold))
            await asyncio.get_running_loop().run_in_executor(None, busy.wait, 10)
            members = [asyncio.ensure_future(calls.grouped(item, halve)) for item in (2, 3, 4)]
            plain = asyncio.ensure_future(calls.call(lambda: "plain"))
            await asyncio.sleep(0)  # let every member queue behind the held call
            release.set()
            return await asyncio.gather(first, *members, plain, return_exceptions=True)
        finally:
            calls.close()

    held, two, three, four, plain = asyncio.run(main())
    assert (held, two, four, plain) == ("held", 1, 2, "plain")
    assert isinstance(three, ValueError) and str(three) == "3 is odd"
    assert groups == [[2, 3, 4]]


def test_a_group_function_that_raises_fails_every_member() -> None:
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("database gone")

    async def main() -> list[object]:
        calls = BatchedCalls(1, "test")
        try:
            return await asyncio.gather(*(calls.grouped(item, broken) for item in range(3)), return_exceptions=True)
        finally:
            calls.close()

    outcomes = asyncio.run(main())
    assert len(outcomes) == 3 and all(isinstance(outcome, RuntimeError) for outcome in outcomes)
