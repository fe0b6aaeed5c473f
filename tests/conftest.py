from __future__ import annotations

import pytest

from tests.harness import Stack

# Fast heartbeats so that dead peers are noticed within a second in tests.
FAST_BUS = {
    "broker": {"heartbeat_interval": 0.2, "heartbeat_liveness": 3, "unavailable_after": 5.0, "startup_grace": 0.0},
    "worker": {"reconnect_initial": 0.1, "reconnect_max": 0.5},
}


def fast_stack(tmp_path, **sections: dict) -> Stack:
    """A :class:`Stack` with the fast bus settings merged with the given ones."""
    config = {name: dict(values) for name, values in FAST_BUS.items()}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return Stack(tmp_path, config)


@pytest.fixture
def stack_factory(tmp_path):
    """Builds stacks for one test and stops them all at its end."""
    stacks: list[Stack] = []

    def build(**sections: dict) -> Stack:
        stacks.append(fast_stack(tmp_path, **sections))
        return stacks[-1]

    yield build
    for stack in stacks:
        stack.stop()
