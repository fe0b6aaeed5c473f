"""A live stack with the console on a listener of its own, and an admin token for it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.admin.browser import chromium
from tests.frontend.conftest import Api, running_api
from tests.harness import free_port, wait_until

FORM_TOKEN = re.compile(r'name="_csrf" value="([0-9a-f]+)"')


@dataclass
class Console:
    """The public API (``api``), the console's base URL and an admin token (``token``) for it."""

    api: Api
    url: str
    token: str

    def call(self, method: str, path: str, token: str | None = "", **kwargs: Any) -> requests.Response:
        """``method path`` on the console's listener with ``token`` (by default the admin token; None: no header)."""
        token = self.token if token == "" else token
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def signed_in(self, token: str | None = None) -> tuple[requests.Session, str]:
        """A browser-like session signed in through the sign-in form, and its CSRF token."""
        browser = requests.Session()
        form = browser.get(self.url + "/admin/sign-in", timeout=10)
        answer = browser.post(
            self.url + "/admin/sign-in",
            data={"token": token or self.token, "_csrf": FORM_TOKEN.search(form.text).group(1)},  # type: ignore[union-attr]
            timeout=10,
        )
        assert answer.ok and answer.url.endswith("/admin/keys"), answer.text
        return browser, FORM_TOKEN.search(answer.text).group(1)  # type: ignore[union-attr]


@contextmanager
def running_console(tmp_path: Path, workers=(("default", "echo"),), **sections: dict) -> Iterator[Console]:
    port = free_port()
    sections.setdefault("admin", {}).update({"enabled": True, "port": port})
    with running_api(tmp_path, workers, **sections) as api:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url + "/admin/sign-in", timeout=1).ok, what="the console")
        _, token = api.store.create_admin_token("tester")
        yield Console(api, url, token)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    with running_console(tmp_path) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium driven by Selenium (see tests/admin/browser.py)."""
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver
