"""The admin API (/admin/api/) end to end, through a live stack: keys, usage, the audit log and
the cluster, with its errors; which credential opens what; CSRF; throttled sign-ins; no secret kept."""

from __future__ import annotations

import re
from datetime import date

import pytest
import requests
from openapi_schema_validator import validate as validate_schema
from sqlalchemy import text

from accounts import keys
from frontend.admin import schemas
from frontend.openapi import document
from tests.accounts.test_secrets_at_rest import dump_database
from tests.admin.conftest import Console, running_console
from tests.frontend.conftest import running_api
from tests.harness import free_port, wait_until


def conforms(body: dict, model: type) -> None:
    """``body`` validates against the model's schema in /openapi.json."""
    spec = document()
    validate_schema(body, {**spec["components"]["schemas"][model.__name__], "components": spec["components"]})


def test_a_key_is_created_found_changed_rotated_and_revoked_through_the_admin_api(console: Console) -> None:
    created = console.call("POST", "/admin/api/keys", json={"email": "ana@example.org", "max_requests": 5,
                                                             "valid_until": "2099-12-31", "services": ["default"]})
    assert created.status_code == 201, created.text
    assert created.headers["Cache-Control"] == "no-store"
    conforms(created.json(), schemas.KeySecretAnswer)
    key, secret = created.json()["key"], created.json()["secret"]
    assert secret.startswith(key["prefix"]) and key["valid_until"] == "2100-01-01T00:00:00+00:00"
    assert console.api.post("/api/", secret, {"text": "hello"}).json()["message"] == "hello"

    found = console.call("GET", "/admin/api/keys", params={"search": "ANA@", "status": "active"}).json()
    conforms(found, schemas.KeyPageAnswer)
    assert [k["id"] for k in found["keys"]] == [key["id"]] and found["total"] == 1
    shown = console.call("GET", f"/admin/api/keys/{key['id']}").json()["key"]
    assert (shown["used"], shown["remaining"], shown["status"]) == (1, 4, "active") and "secret" not in shown

    changed = console.call("PATCH", f"/admin/api/keys/{key['id']}", json={"max_requests": 1, "note": "trial"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["key"]["status"], changed.json()["key"]["note"]) == ("exhausted", "trial")
    assert console.api.post("/api/", secret, {"text": "again"}).status_code == 429
    unlimited = console.call("PATCH", f"/admin/api/keys/{key['id']}", json={"max_requests": None, "services": None})
    assert (unlimited.json()["key"]["max_requests"], unlimited.json()["key"]["services"]) == (None, None)
    limited = console.call("PATCH", f"/admin/api/keys/{key['id']}",
                           json={"requests_per_minute": 60, "token_budget": 10**6, "max_concurrent": 2, "weight": 4,
                                 "max_prompt_tokens": 512})
    conforms(limited.json(), schemas.KeyAnswer)
    shown = limited.json()["key"]
    assert (shown["requests_per_minute"], shown["token_budget"], shown["max_concurrent"], shown["weight"]) == (
        60, 10**6, 2, 4
    )
    assert shown["max_prompt_tokens"] == 512

    rotated = console.call("POST", f"/admin/api/keys/{key['id']}/rotate").json()
    conforms(rotated, schemas.KeySecretAnswer)
    assert console.api.post("/api/", secret, {"text": "old"}).status_code == 401
    assert console.api.post("/api/", rotated["secret"], {"text": "new"}).status_code == 200
    revoked = console.call("POST", f"/admin/api/keys/{key['id']}/revoke").json()["key"]
    assert (revoked["status"], revoked["revoked"]) == ("revoked", True)
    assert console.api.post("/api/", rotated["secret"], {"text": "gone"}).status_code == 401

    audit = console.call("GET", "/admin/api/audit", params={"key": key["id"]}).json()
    conforms(audit, schemas.AuditAnswer)
    assert [e["action"] for e in audit["entries"]] == ["create", "update", "update", "update", "rotate", "revoke"]
    assert {(e["user"], e["host"]) for e in audit["entries"]} == {("tester (admin token 1)", "127.0.0.1")}
    assert console.call("GET", "/admin/api/audit", params={"since": "2099-01-01"}).json()["entries"] == []


def test_usage_per_key_and_in_all_is_the_command_lines_report_with_the_same_filters(console: Console) -> None:
    store = console.api.store
    ana = console.call("POST", "/admin/api/keys", json={"email": "ana@example.org"}).json()
    bo = console.call("POST", "/admin/api/keys", json={"email": "bo@example.org"}).json()
    for secret, count in ((ana["secret"], 1), (bo["secret"], 2)):
        for _ in range(count):
            assert console.api.post("/api/", secret, {"text": "a b c"}).ok
    wait_until(lambda: sum(r.requests for r in store.usage_report()) == 3, what="the usage records")
    today = date.today().isoformat()

    mine = console.call("GET", f"/admin/api/keys/{bo['key']['id']}/usage", params={"since": today}).json()
    conforms(mine, schemas.UsageAnswer)
    assert mine["usage"] == [row.to_dict() for row in store.usage_report(key_id=bo["key"]["id"])]
    by_query = console.call("GET", "/admin/api/usage", params={"key": bo["key"]["id"], "since": today}).json()
    assert by_query["usage"] == mine["usage"]
    every = console.call("GET", "/admin/api/usage", params={"service": "default", "until": today}).json()
    assert every["usage"] == [row.to_dict() for row in store.usage_report()] and every["usage"][0]["requests"] == 3
    assert console.call("GET", "/admin/api/usage", params={"service": "other"}).json()["usage"] == []
    top = console.call("GET", "/admin/api/usage/keys", params={"limit": 1}).json()
    conforms(top, schemas.TopKeysAnswer)
    assert [(k["key_id"], k["requests"]) for k in top["keys"]] == [(bo["key"]["id"], 2)]


def test_the_cluster_view_shows_each_service_its_workers_and_its_queue(console: Console) -> None:
    cluster = console.call("GET", "/admin/api/cluster").json()
    conforms(cluster, schemas.ClusterAnswer)
    service = cluster["services"]["default"]
    assert (service["idle"], service["busy"], service["queued"]) == (1, 0, 0)
    assert service["workers"][0]["state"] == "idle" and "served" in service["workers"][0]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "words"),
    [
        ("POST", "/admin/api/keys", {"email": "not an email"}, 400, "invalid_request", "invalid email"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "max_requests": -1}, 400, "invalid_value", "max_requests"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "max_requests": "5"}, 400, "invalid_value", "max_requests"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "colour": "red"}, 400, "unsupported_parameter", "colour"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "valid_until": "soon"}, 400, "invalid_request", "invalid date"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "valid_from": "2030-02-01", "valid_until": "2030-01-01"}, 400,
         "invalid_request", "ends"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "services": []}, 400, "invalid_value", "services"),
        ("POST", "/admin/api/keys", {"email": "a@b.c", "weight": 0}, 400, "invalid_value", "weight"),
        ("PATCH", "/admin/api/keys/1", {"weight": None}, 400, "invalid_value", "weight"),
        ("PATCH", "/admin/api/keys/1", {"max_concurrent": 0}, 400, "invalid_value", "max_concurrent"),
        ("POST", "/admin/api/keys", None, 400, "invalid_json", "JSON"),
        ("PATCH", "/admin/api/keys/1", {}, 400, "invalid_value", "nothing to update"),
        ("PATCH", "/admin/api/keys/1", {"email": None}, 400, "invalid_value", "'email' cannot be null"),
        ("PATCH", "/admin/api/keys/99", {"note": "x"}, 404, "key_not_found", "no key with id 99"),
        ("GET", "/admin/api/keys/99", None, 404, "key_not_found", "no key with id 99"),
        ("POST", "/admin/api/keys/99/rotate", None, 404, "key_not_found", "no key with id 99"),
        ("POST", "/admin/api/keys/99/revoke", None, 404, "key_not_found", "no key with id 99"),
        ("GET", "/admin/api/keys/99/usage", None, 404, "key_not_found", "no key with id 99"),
        ("GET", "/admin/api/usage?key=99", None, 404, "key_not_found", "no key with id 99"),
        ("GET", "/admin/api/keys?status=sleeping", None, 400, "invalid_request", "unknown key status"),
        ("GET", "/admin/api/keys?limit=0", None, 400, "invalid_request", "1 to 500"),
        ("GET", "/admin/api/keys?offset=-1", None, 400, "invalid_value", "offset"),
        ("GET", "/admin/api/usage?since=yesterday", None, 400, "invalid_date", "since"),
        ("GET", "/admin/api/usage?since=2030-02-01&until=2030-01-01", None, 400, "invalid_request", "before it starts"),
        ("GET", "/admin/api/audit?key=x", None, 400, "invalid_value", "key"),
        ("DELETE", "/admin/api/keys/1", None, 405, "method_not_allowed", "Method Not Allowed"),
        ("GET", "/admin/api/nothing", None, 404, "not_found", "no such endpoint"),
    ],
)
def test_a_wrong_admin_request_gets_its_status_and_a_precise_error(
    console: Console, method: str, path: str, body: object, status: int, code: str, words: str
) -> None:
    console.api.store.create_key(email="ana@example.org")
    if body is not None:
        answer = console.call(method, path, json=body)
    else:
        malformed = {"data": b"{not json"} if (method, path) == ("POST", "/admin/api/keys") else {}
        answer = console.call(method, path, **malformed)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert (error["error"]["code"], error["request_id"]) == (code, answer.headers["X-Request-Id"])
    assert words in error["error"]["message"]


def test_an_api_key_never_opens_admin_and_an_admin_token_never_serves_a_model_request(console: Console) -> None:
    api_key = console.api.key()
    refused = console.call("GET", "/admin/api/keys", token=api_key)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_not_accepted"
    assert console.call("GET", "/admin/keys", token=api_key).status_code == 401
    assert console.call("GET", "/admin/api/keys", token=None).json()["error"]["code"] == "sign_in_required"
    for path, body in (("/api/", {"text": "x"}), ("/v1/chat/completions", {"model": "default", "messages": []}),
                       ("/v1/completions", {"model": "default", "prompt": "x"})):
        answer = console.api.post(path, console.token, body)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["error"]["code"] == "admin_token_not_accepted"
    for path in ("/v1/models", "/usage/"):
        assert console.api.get(path, console.token).status_code == 401
    # And the API's own listener has no /admin/ at all.
    assert console.api.get("/admin/api/keys", console.token).status_code == 404


def test_a_change_made_with_a_console_session_needs_its_csrf_token(console: Console) -> None:
    browser, csrf = console.signed_in()
    assert browser.get(console.url + "/admin/api/keys", timeout=10).ok  # reading needs none
    refused = browser.post(console.url + "/admin/api/keys", json={"email": "ana@example.org"}, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_token_invalid"
    forged = browser.post(console.url + "/admin/api/keys", json={"email": "ana@example.org"},
                          headers={"X-CSRF-Token": "0" * 64}, timeout=10)
    assert forged.status_code == 403
    form = browser.post(console.url + "/admin/keys", data={"email": "ana@example.org"}, timeout=10)
    assert form.status_code == 403 and "CSRF" in form.text
    assert console.api.store.find_keys().total == 0
    made = browser.post(console.url + "/admin/api/keys", json={"email": "ana@example.org"},
                        headers={"X-CSRF-Token": csrf}, timeout=10)
    assert made.status_code == 201, made.text
    other, _ = console.signed_in()  # another session's token is not this one's
    assert other.post(console.url + "/admin/api/keys", json={"email": "bo@example.org"},
                      headers={"X-CSRF-Token": csrf}, timeout=10).status_code == 403


def test_the_session_cookie_is_http_only_same_site_strict_and_ends_with_its_admin_token(console: Console) -> None:
    browser, _ = console.signed_in()
    cookie = next(c for c in browser.cookies if c.name == "llmapi_admin")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"
    assert cookie.path == "/admin/" and not cookie.secure
    console.api.store.revoke_admin_token(1)
    assert browser.get(console.url + "/admin/api/keys", timeout=10).status_code == 401
    assert console.call("GET", "/admin/api/keys").status_code == 401


def test_signing_out_ends_the_session_for_whoever_kept_its_cookie(tmp_path) -> None:
    with running_console(tmp_path) as console:
        browser, csrf = console.signed_in()
        kept = requests.Session()
        kept.cookies.update(browser.cookies)  # a copy of the cookie, kept after signing out
        assert kept.get(console.url + "/admin/api/keys", timeout=10).status_code == 200
        signed_out = browser.post(console.url + "/admin/sign-out", data={"_csrf": csrf}, timeout=10)
        assert signed_out.url.endswith("/admin/sign-in")
        made = kept.post(console.url + "/admin/api/keys", json={"email": "ana@example.org"},
                         headers={"X-CSRF-Token": csrf}, timeout=10)
        assert made.status_code == 401 and console.api.store.find_keys(None, None, 10, 0).total == 0


def test_nothing_stored_in_the_database_lets_anyone_make_a_session(tmp_path) -> None:
    with running_console(tmp_path) as console:
        browser, _ = console.signed_in()
        session = next(c.value for c in browser.cookies if c.name == "llmapi_admin")
        stored = dump_database(console.api.store)
        assert session not in stored and "console_secrets" not in stored
        # A cookie made up from what is stored (the session's hash, its token's id) opens nothing.
        with console.api.store.engine.connect() as conn:
            (digest, token_id), = conn.execute(text("SELECT session_hash, admin_token_id FROM console_sessions")).all()
        for forged in (digest, f"{token_id}.{digest}", str(token_id)):
            answer = requests.get(console.url + "/admin/api/keys", cookies={"llmapi_admin": forged}, timeout=10)
            assert answer.status_code == 401


def test_the_session_cookie_is_secure_behind_a_tls_proxy(tmp_path) -> None:
    with running_console(tmp_path, frontend={"trust_proxy_headers": True}) as console:
        form = console.call("GET", "/admin/sign-in", token=None, headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in form.headers["Set-Cookie"] and "HttpOnly" in form.headers["Set-Cookie"]


def test_failed_sign_ins_are_throttled_per_address_even_for_a_right_token(tmp_path) -> None:
    with running_console(tmp_path, admin={"sign_in_failures": 3, "sign_in_window": 60.0}) as console:
        wrong = keys.new_secret(keys.ADMIN_PREFIX)
        for token in (wrong, console.api.key(), "llmadm_short"):
            assert console.call("GET", "/admin/api/keys", token=token).status_code == 401
        throttled = console.call("GET", "/admin/api/keys")
        assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_sign_ins"
        assert 0 < int(throttled.headers["Retry-After"]) <= 60
        form = console.call("GET", "/admin/sign-in", token=None)
        assert form.ok


def test_no_secret_or_admin_token_is_stored_or_logged(console: Console) -> None:
    created = console.call("POST", "/admin/api/keys", json={"email": "ana@example.org"}).json()
    rotated = console.call("POST", f"/admin/api/keys/{created['key']['id']}/rotate").json()
    browser, csrf = console.signed_in()
    form = browser.post(console.url + "/admin/keys", data={"email": "bo@example.org", "_csrf": csrf}, timeout=10)
    shown = re.search(r'id="secret" class="mono" readonly value="(llmapi_\w+)"', form.text).group(1)  # type: ignore[union-attr]
    assert console.api.post("/api/", shown, {"text": "works"}).ok
    secrets = [created["secret"], rotated["secret"], shown, console.token]
    console.api.stack.stop()  # every log line written, every record flushed
    logged = console.api.frontend.log()
    assert "admin_request" in logged and "key_created" in logged
    stored = dump_database(console.api.store)
    for secret in secrets:
        for seen in (logged, stored):
            assert secret not in seen and secret[len(keys.KEY_PREFIX) :] not in seen


def test_the_console_is_served_only_when_enabled(tmp_path) -> None:
    port = free_port()
    with running_api(tmp_path, admin={"port": port}) as api:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/admin/sign-in", timeout=5)
        assert "console_listening" not in api.frontend.log()
