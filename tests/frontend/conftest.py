from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from accounts.store import AccountStore
from broker.client import Client
from tests.conftest import fast_stack
from tests.harness import Stack, free_port, wait_until


@dataclass
class Api:
    """A live stack behind HTTP: broker, workers, frontend and an accounts database."""

    stack: Stack
    url: str
    store: AccountStore
    frontend: Any

    def key(self, **fields: Any) -> str:
        fields.setdefault("email", "user@example.com")
        _, secret = self.store.create_key(**fields)
        return secret

    def post(self, path: str, secret: str | None, json: Any = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        kwargs.setdefault("timeout", 30)
        return requests.post(self.url + path, headers=headers, json=json, **kwargs)

    def openai(self, secret: str | None = None, timeout: float = 60) -> openai.OpenAI:
        """The official client on this stack, with ``secret`` (a new key's by default) and no retries."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=secret or self.key(), max_retries=0, timeout=timeout)

    def get(self, path: str, secret: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return requests.get(self.url + path, headers=headers, timeout=30, **kwargs)

    def wait_for_workers(self, service: str, count: int = 1) -> None:
        with Client(self.stack.endpoint, timeout=5) as client:
            wait_until(
                lambda: client.service_info(service).get("idle", 0) >= count, timeout=30, what=f"{service} workers"
            )


@contextmanager
def running_api(tmp_path: Path, workers=(("default", "echo"),), **sections: dict) -> Iterator[Api]:
    """Broker, frontend and ``workers`` ((service, algorithm, *worker args), ...) on a
    fresh SQLite database; ``sections`` override settings."""
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'accounts.db'}"
    sections.setdefault("frontend", {}).setdefault("request_timeout", 5.0)
    sections["frontend"]["port"] = port
    sections.setdefault("accounts", {}).setdefault("database_url", database_url)
    sections["accounts"].setdefault("usage_flush_interval", 0.1)
    stack = fast_stack(tmp_path, **sections)
    store = AccountStore.from_url(sections["accounts"]["database_url"])
    try:
        if sections["accounts"]["database_url"] == database_url:
            store.migrate()
        stack.broker()
        for service, algorithm, *extra in workers:
            stack.worker(service, algorithm, *extra)
        api = Api(stack, f"http://127.0.0.1:{port}", store, stack.start("frontend", "frontend"))
        wait_until(lambda: requests.get(api.url + "/healthz", timeout=1).ok, what="the frontend")
        for service, *_ in workers:
            api.wait_for_workers(service)
        yield api
    finally:
        stack.stop()
        store.close()


@pytest.fixture
def api_factory(tmp_path):
    with ExitStack() as stack:
        yield lambda workers=(("default", "echo"),), **sections: stack.enter_context(
            running_api(tmp_path, workers, **sections)
        )


@pytest.fixture
def api(api_factory):
    return api_factory()
