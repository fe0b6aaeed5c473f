"""``/``: what this server is, the endpoints a client calls and where they are documented, without
a key; JSON, or a page of links for a browser."""

from __future__ import annotations

import importlib.metadata
from functools import cache

import tornado.template

from frontend import openapi
from frontend.handlers.base import BaseHandler
from frontend.handlers.metrics import LOOPBACK
from frontend.schemas import ServerInfo

DISTRIBUTION = "llmapi"
DESCRIPTION = (
    "An authenticated API in front of language models held resident on GPUs: the Django LLM API "
    "server's POST /api/, and the OpenAI API under /v1/ for any OpenAI client."
)
# What a client calls, in the order a newcomer reads them; their summaries come from the OpenAPI document.
CLIENT_PATHS = (
    "/api/", "/api/{service}/", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/models", "/usage/",
)

PAGE = tornado.template.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ info.name }}</title><link rel="icon" href="data:,"></head>
<body><h1>{{ info.name }} {{ info.version }}</h1>
<p>{{ info.description }}</p>
<ul>{% for endpoint, summary in info.endpoints.items() %}
<li><code>{{ endpoint }}</code>: {{ summary }}</li>{% end %}
</ul>
<p>Every endpoint, its bodies and answers: <a href="{{ info.documentation }}">{{ info.documentation }}</a>
(OpenAPI 3.1).</p>{% if info.console %}
<p>The web console: <a href="{{ info.console }}">{{ info.console }}</a></p>{% end %}
</body></html>
"""
)


class HomeHandler(BaseHandler):
    """``console_url`` is the web console's address when it serves, else None."""

    def initialize(self, gateway, console_url: str | None) -> None:  # type: ignore[override]
        super().initialize(gateway)
        self.console_url = console_url

    def get(self) -> None:
        # Where the console listens is for the operator: told only to callers on this machine.
        console = self.console_url if self.request.remote_ip in LOOPBACK else None
        info = server_info(console)
        self.add_header("Vary", "Accept")
        if "text/html" not in self.request.headers.get("Accept", ""):
            self.write_json(info.model_dump())
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'none'; img-src data:")
        self.finish(PAGE.generate(info=info))

    head = get


def server_info(console: str | None) -> ServerInfo:
    return ServerInfo(
        name=DISTRIBUTION,
        version=_version(),
        description=DESCRIPTION,
        documentation=openapi.DOCUMENT,
        endpoints=_endpoints(),
        console=console,
    )


@cache
def _endpoints() -> dict[str, str]:
    paths = openapi.document()["paths"]
    return {
        f"{method.upper()} {path}": operation["summary"]
        for path in CLIENT_PATHS
        for method, operation in paths[path].items()
        if method != "parameters"
    }


@cache
def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
