from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import requests

from accounts.store import AccountStore
from broker.client import Client
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
        return requests.post(self.url + path, headers=headers, json=json, timeout=30, **kwargs)

    def get(self, path: str, secret: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return requests.get(self.url + path, headers=headers, timeout=30, **kwargs)

    def wait_for_workers(self, service: str, count: int = 1) -> None:
        with Client(self.stack.endpoint, timeout=5) as client:
            wait_until(
                lambda: client.service_info(service).get("idle", 0) >= count, timeout=20, what=f"{service} workers"
            )


@pytest.fixture
def api_factory(stack_factory, tmp_path):
    """Starts broker, frontend and the given workers; ``sections`` override settings."""
    stores: list[AccountStore] = []

    def build(workers=(("default", "echo"),), **sections: dict) -> Api:
        port = free_port()
        database_url = f"sqlite:///{tmp_path / 'accounts.db'}"
        sections.setdefault("frontend", {}).setdefault("request_timeout", 5.0)
        sections["frontend"]["port"] = port
        sections.setdefault("accounts", {}).setdefault("database_url", database_url)
        sections["accounts"].setdefault("usage_flush_interval", 0.1)
        stack = stack_factory(**sections)
        store = AccountStore.from_url(sections["accounts"]["database_url"])
        if sections["accounts"]["database_url"] == database_url:
            store.migrate()
        stores.append(store)
        stack.broker()
        for service, algorithm in workers:
            stack.worker(service, algorithm)
        frontend = stack.start("frontend", "frontend")
        api = Api(stack, f"http://127.0.0.1:{port}", store, frontend)
        wait_until(lambda: requests.get(api.url + "/healthz", timeout=1).ok, what="the frontend")
        for service, _ in workers:
            api.wait_for_workers(service)
        return api

    yield build
    for store in stores:
        store.close()


@pytest.fixture
def api(api_factory):
    return api_factory()
