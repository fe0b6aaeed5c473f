"""The served OpenAPI document matches the routes the server has, validates as OpenAPI 3.1,
and is built from the same models that validate requests."""

import re

from openapi_spec_validator import validate

from config.settings import AdminSettings
from frontend.app import make_admin_app, make_app
from frontend.openapi import document

# Routes that answer only errors: not operations to document.
UNDOCUMENTED = {"/v1/.*"}
# The console's listener also serves pages (HTML for people) and their static files: only its API is an API.
CONSOLE_API = "/admin/api/"


def route_templates():
    app = make_app(gateway=None, services=[])  # type: ignore[arg-type]
    admin = make_admin_app(gateway=None, settings=AdminSettings())  # type: ignore[arg-type]
    patterns = [rule.matcher.regex.pattern.rstrip("$") for rule in app.default_router.rules[0].target.rules]
    for rule in admin.default_router.rules[0].target.rules:
        pattern = rule.matcher.regex.pattern.rstrip("$")
        if pattern.startswith(CONSOLE_API):
            patterns.append(pattern)
    templates = set()
    for pattern in patterns:
        if pattern in UNDOCUMENTED:
            continue
        names = {"/v1/models/": "{model}", "/v1/responses/": "{response_id}"}
        name = next((n for prefix, n in names.items() if pattern.startswith(prefix)), None)
        name = name or ("{key_id}" if "/keys/" in pattern else "{service}")
        templates.add(re.sub(r"\([^)]*\)", name, pattern))
    return templates


def test_every_route_is_documented_and_every_documented_path_is_routed():
    assert route_templates() == set(document()["paths"])


def test_the_document_validates_as_openapi_3_1():
    validate(document())


def test_the_document_is_served_and_every_operation_has_its_answers(api):
    served = api.get("/openapi.json").json()
    assert served == document()
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            if method != "parameters":
                assert operation["responses"], (path, method)
