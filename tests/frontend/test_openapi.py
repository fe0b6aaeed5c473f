"""The served OpenAPI document matches the routes the server has."""

import re

from frontend.app import make_app
from frontend.openapi import document


def route_templates():
    app = make_app(gateway=None, services=[])  # type: ignore[arg-type]
    templates = set()
    for rule in app.default_router.rules[0].target.rules:
        pattern = rule.matcher.regex.pattern.rstrip("$")
        templates.add(re.sub(r"\([^)]*\)", "{service}", pattern))
    return templates


def test_every_route_is_documented_and_every_documented_path_is_routed():
    assert route_templates() == set(document()["paths"])


def test_the_document_is_served_and_valid_openapi_3(api):
    served = api.get("/openapi.json").json()
    assert served == document()
    assert served["openapi"].startswith("3.")
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                assert operation["responses"], (path, method)
