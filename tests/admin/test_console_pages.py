"""The console's pages over plain HTTP: where people are sent, what a wrong form answers, signing out,
and every per-key limit shown and edited."""

from __future__ import annotations

import html

import requests

from accounts import limits
from tests.admin.conftest import FORM_TOKEN, Console


def test_someone_not_signed_in_is_sent_to_sign_in_and_back_where_they_were_going(console: Console) -> None:
    answer = requests.get(console.url + "/admin/usage", allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and answer.headers["Location"] == "/admin/sign-in?next=/admin/usage"
    browser = requests.Session()
    form = browser.get(console.url + answer.headers["Location"], timeout=10)
    signed_in = browser.post(
        console.url + "/admin/sign-in",
        data={"token": console.token, "next": "/admin/usage", "_csrf": FORM_TOKEN.search(form.text).group(1)},  # type: ignore[union-attr]
        timeout=10,
    )
    assert signed_in.url == console.url + "/admin/usage" and "<h1>Usage</h1>" in signed_in.text
    assert "frame-ancestors 'none'" in signed_in.headers["Content-Security-Policy"]
    assert signed_in.headers["Cache-Control"] == "no-store"


def test_a_wrong_token_or_an_old_form_is_refused_with_a_message_and_no_session(console: Console) -> None:
    browser = requests.Session()
    form = browser.get(console.url + "/admin/sign-in", timeout=10)
    token = FORM_TOKEN.search(form.text).group(1)  # type: ignore[union-attr]
    wrong = browser.post(console.url + "/admin/sign-in", data={"token": "llmadm_nope", "_csrf": token}, timeout=10)
    assert wrong.status_code == 401 and "not a valid admin token" in wrong.text
    stale = requests.post(console.url + "/admin/sign-in", data={"token": console.token, "_csrf": token}, timeout=10)
    assert stale.status_code == 403 and "expired" in stale.text  # the form's token without its cookie
    assert "llmapi_admin=" not in stale.headers.get("Set-Cookie", "").replace("llmapi_admin_sign_in=", "")


def test_a_wrong_form_shows_what_is_wrong_keeps_what_was_typed_and_changes_nothing(console: Console) -> None:
    info, _ = console.api.store.create_key(email="ana@example.org", max_requests=5)
    browser, csrf = console.signed_in()
    edit = {"email": "ana@example.org", "max_requests": "five", "_csrf": csrf}
    refused = browser.post(f"{console.url}/admin/keys/{info.id}", data=edit, timeout=10)
    assert refused.status_code == 400 and "must be a whole number" in refused.text and 'value="five"' in refused.text
    assert console.api.store.get_key(info.id).max_requests == 5
    created = browser.post(console.url + "/admin/keys", data={"email": "bo", "name": "Bo", "_csrf": csrf}, timeout=10)
    assert created.status_code == 400 and "invalid email" in created.text and 'value="Bo"' in created.text
    assert console.api.store.find_keys().total == 1
    missing = browser.get(console.url + "/admin/keys/99", timeout=10)
    assert missing.status_code == 404 and "no key with id 99" in missing.text
    assert missing.headers["Content-Type"].startswith("text/html")


def test_signing_out_ends_the_session(console: Console) -> None:
    browser, csrf = console.signed_in()
    out = browser.post(console.url + "/admin/sign-out", data={"_csrf": csrf}, timeout=10)
    assert out.url.startswith(console.url + "/admin/sign-in")
    assert browser.get(console.url + "/admin/api/keys", timeout=10).status_code == 401


def test_every_limit_is_shown_on_the_key_page_and_changed_by_its_form(console: Console) -> None:
    info, _ = console.api.store.create_key(email="ana@example.org", requests_per_minute=60)
    browser, csrf = console.signed_in()
    page = browser.get(f"{console.url}/admin/keys/{info.id}", timeout=10).text
    for limit in limits.LIMITS:
        assert f'name="{limit.name}"' in page
    assert '<dd id="limit-requests_per_minute">60 requests a minute</dd>' in page
    assert '<dd id="limit-token_budget">unlimited</dd>' in page
    wanted = {limit.name: limit.maximum if limit.optional else limit.minimum + 1 for limit in limits.LIMITS}
    edit = {"email": "ana@example.org", "_csrf": csrf, **{name: str(value) for name, value in wanted.items()}}
    saved = browser.post(f"{console.url}/admin/keys/{info.id}", data=edit, timeout=10)
    assert saved.ok and "Saved." in saved.text
    assert console.api.store.get_key(info.id).limits == wanted
    for limit in limits.LIMITS:
        assert f'<dd id="limit-{limit.name}">{limit.describe(wanted[limit.name])}</dd>' in saved.text
    cleared = {**edit, **{name: "" for name in wanted}}
    assert browser.post(f"{console.url}/admin/keys/{info.id}", data=cleared, timeout=10).ok
    assert console.api.store.get_key(info.id).limits == limits.DEFAULTS


def test_a_day_not_typed_as_yyyy_mm_dd_is_refused_by_every_page_saying_how_to_type_it(console: Console) -> None:
    browser, _ = console.signed_in()
    for page, name in (("requests", "since"), ("requests", "until"), ("usage", "since"), ("usage", "until"),
                       ("audit", "since")):
        refused = browser.get(f"{console.url}/admin/{page}", params={name: "12/04/2026"}, timeout=10)
        assert refused.status_code == 400 and f"'{name}' must be a date as YYYY-MM-DD" in html.unescape(refused.text), page
        shown = browser.get(f"{console.url}/admin/{page}", params={name: "2026-12-04"}, timeout=10)
        assert shown.status_code == 200 and 'value="2026-12-04"' in shown.text and 'type="date"' not in shown.text
