"""What a first visit finds over HTTP: ``/`` on the API's port says what the server is, the endpoints
a client calls and where they are documented (a page of links for a browser); the console has an icon."""

from __future__ import annotations

import importlib.metadata

import pytest
import requests

from tests.admin.conftest import running_console

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    # Behind a proxy that names the client, as a deployment is: a caller from elsewhere can be sent.
    with running_console(tmp_path_factory.mktemp("home"), frontend={"trust_proxy_headers": True}) as running:
        yield running


def test_the_root_says_what_the_server_is_and_where_its_endpoints_and_their_documentation_are(console):
    answer = requests.get(console.api.url + "/", timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    info = answer.json()
    assert (info["name"], info["version"]) == ("llmapi", importlib.metadata.version("llmapi"))
    assert info["console"] == console.url + "/admin/"
    for endpoint in ("POST /api/", "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings",
                     "POST /v1/responses", "GET /v1/models", "GET /usage/"):
        assert info["endpoints"][endpoint], endpoint
    document = requests.get(console.api.url + info["documentation"], timeout=10).json()
    for endpoint in info["endpoints"]:
        method, path = endpoint.split(" ")
        assert method.lower() in document["paths"][path], endpoint


def test_the_console_address_is_told_to_callers_on_this_machine_only(console):
    elsewhere = requests.get(console.api.url + "/", headers={"X-Real-IP": "203.0.113.7"}, timeout=10)
    assert elsewhere.json()["console"] is None
    assert console.url not in requests.get(console.api.url + "/", headers={**BROWSER, "X-Real-IP": "203.0.113.7"},
                                           timeout=10).text


def test_head_on_the_root_answers_as_get_does_without_a_body(console):
    answer = requests.head(console.api.url + "/", timeout=10)
    assert answer.status_code == 200 and answer.content == b""
    assert answer.headers["Content-Type"].startswith("application/json")


def test_a_browser_gets_a_page_of_links_to_the_documentation_and_the_console(console):
    answer = requests.get(console.api.url + "/", headers=BROWSER, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Accept" in answer.headers["Vary"]
    assert '<a href="/openapi.json">' in answer.text and f'<a href="{console.url}/admin/">' in answer.text
    assert "<code>POST /v1/chat/completions</code>" in answer.text


def test_the_console_has_an_icon(console):
    answer = requests.get(console.url + "/favicon.ico", timeout=10)
    assert answer.status_code == 200 and answer.content.startswith(b"\x00\x00\x01\x00")
