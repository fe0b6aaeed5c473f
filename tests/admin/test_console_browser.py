"""The console in a real browser (headless Chromium through Selenium), against a live stack:
an admin signs in, makes a key, reads its secret once, sees its request in the chart, changes its
limit, rotates and revokes it, and watches a worker go from idle to busy and back.

Each page's screenshot is saved (in docs/console when LLMAPI_CONSOLE_SCREENSHOTS=docs/console)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from accounts.limits import LIMITS
from tests.admin.browser import LAPTOP, PHONE, screenshot_directory
from tests.admin.conftest import Console, running_console
from tests.harness import wait_until

pytestmark = pytest.mark.timeout(240)


def by_css(driver: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def sign_in(driver: Any, console: Console) -> None:
    driver.get(console.url + "/admin/")
    assert driver.current_url.startswith(console.url + "/admin/sign-in")
    by_css(driver, "#token").send_keys(console.token)
    by_css(driver, "form button[type=submit]").click()
    wait_until(lambda: by_css(driver, "h1").text.startswith("Keys"), what="the keys page")


def submit_confirmed(driver: Any, selector: str) -> None:
    """Click a button whose form asks first, and say yes."""
    by_css(driver, selector).click()
    wait_until(lambda: driver.switch_to.alert, what="the confirmation").accept()


def show_days(driver: Any, **days: str) -> None:
    """Type each day (``since="2026-01-31"``) in the filter form's field of that name, as a person
    does in any locale, and press Show."""
    for name, day in days.items():
        field = by_css(driver, f"form.filters input[name={name}]")
        field.clear()
        field.send_keys(day)
    by_css(driver, "form.filters button[type=submit]").click()


def tomorrow() -> str:
    return (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


def fills_the_screen_without_scrolling_sideways(driver: Any) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_an_admin_signs_in_makes_a_key_uses_it_sees_it_charted_changes_rotates_and_revokes_it(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    shots = screenshot_directory(tmp_path)
    browser.get(console.url + "/admin/sign-in")
    browser.save_screenshot(str(shots / "sign-in.png"))
    sign_in(browser, console)

    form = by_css(browser, "#new-key")
    by_css(form, "input[name=email]").send_keys("ana@example.org")
    by_css(form, "input[name=name]").send_keys("Ana Lima")
    by_css(form, "input[name=max_requests]").send_keys("5")
    by_css(form, "button[type=submit]").click()
    wait_until(lambda: all_by_css(browser, "#secret"), what="the new secret")
    secret = by_css(browser, "#secret").get_attribute("value")
    assert secret.startswith("llmapi_") and "shown only now" in by_css(browser, ".secret").text
    by_css(browser, "[data-copy=secret]").click()
    wait_until(lambda: by_css(browser, "[data-copy=secret]").text == "Copied", what="the copy button")
    browser.save_screenshot(str(shots / "key-created.png"))
    key_url = browser.current_url.rsplit("/admin/", 1)[0] + "/admin/keys/" + _key_id(browser)

    answer = console.api.post("/api/", secret, {"text": "hello from the browser test"})
    assert answer.status_code == 200 and answer.json()["message"] == "hello from the browser test"

    today = datetime.now(UTC).date().isoformat()

    def charted() -> bool:
        browser.get(key_url)
        return f"{today}: 1 answered, 0 failed or refused" in browser.page_source

    wait_until(charted, timeout=20, interval=0.5, what="the request in the usage chart")
    assert secret not in browser.page_source  # the secret was shown once, and only then
    assert "1 used of 5, 4 remaining" in by_css(browser, "#requests").text
    browser.save_screenshot(str(shots / "key.png"))

    limit = by_css(browser, "#edit input[name=max_requests]")
    limit.clear()
    limit.send_keys("1")
    by_css(browser, "#edit button[type=submit]").click()
    wait_until(lambda: "1 used of 1, 0 remaining" in by_css(browser, "#requests").text, what="the new limit")
    assert "quota used up" in by_css(browser, "h1 .badge").text
    assert console.api.post("/api/", secret, {"text": "over the limit"}).status_code == 429

    submit_confirmed(browser, "#rotate")
    wait_until(lambda: all_by_css(browser, "#secret"), what="the rotated secret")
    rotated = by_css(browser, "#secret").get_attribute("value")
    assert rotated != secret and rotated.startswith("llmapi_")
    assert console.api.post("/api/", secret, {"text": "old secret"}).status_code == 401
    assert console.api.post("/api/", rotated, {"text": "new secret"}).status_code == 429  # same key, same count

    submit_confirmed(browser, "#revoke")
    wait_until(lambda: "revoked" in by_css(browser, "h1 .badge").text, what="the revoked badge")
    assert console.api.post("/api/", rotated, {"text": "revoked"}).status_code == 401

    browser.get(console.url + "/admin/keys?search=ana")
    assert "Ana Lima" in browser.page_source and "revoked" in by_css(browser, "td .badge").text
    browser.save_screenshot(str(shots / "keys.png"))
    browser.get(console.url + "/admin/usage")
    assert f"{today}: 1 answered" in browser.page_source and "ana@example.org" in by_css(browser, "main").text
    assert by_css(browser, "input[name=until]").get_attribute("value") == today  # ISO, whatever the locale
    browser.save_screenshot(str(shots / "usage.png"))
    show_days(browser, since="2020-01-01", until="2020-01-31")
    wait_until(lambda: "until=2020-01-31" in browser.current_url, what="the usage of January 2020")
    assert "1 answered" not in browser.page_source and "No requests in these days." in by_css(browser, "main").text
    assert by_css(browser, "input[name=since]").get_attribute("value") == "2020-01-01"

    browser.get(console.url + "/admin/requests")
    show_days(browser, since=today, until=today)
    wait_until(lambda: f"since={today}&until={today}" in browser.current_url, what="today's requests")
    row = by_css(browser, "table.requests tbody tr")
    assert answer.headers["X-Request-Id"] in row.text and "/api/" in row.text and " 200 " in f" {row.text} "
    assert [field.get_attribute("value") for field in all_by_css(browser, "input.date")] == [today, today]
    browser.save_screenshot(str(shots / "requests.png"))
    show_days(browser, since=tomorrow(), until="")
    wait_until(lambda: "No request matches." in by_css(browser, "table.requests").text, what="tomorrow's requests")
    show_days(browser, since="12/04/2026", until="")  # the en-US way: the browser refuses to send it
    assert browser.execute_script("return document.querySelector('input[name=since]').validity.patternMismatch")
    browser.get(console.url + "/admin/requests?since=12/04/2026")  # sent all the same: the server refuses it
    assert "'since' must be a date as YYYY-MM-DD" in by_css(browser, "[role=alert]").text
    browser.get(console.url + "/admin/requests")
    from selenium.webdriver.support.ui import Select

    Select(by_css(browser, "select[name=outcome]")).select_by_value("failed")
    by_css(browser, "form.filters button[type=submit]").click()
    wait_until(lambda: "No request matches." in by_css(browser, "table.requests").text, what="the filtered view")

    browser.set_window_size(*PHONE)
    pages = (
        "/admin/keys", key_url.split(console.url)[1], "/admin/usage", "/admin/requests", "/admin/cluster",
        "/admin/audit", "/admin/tokens",
    )
    for page in pages:
        browser.get(console.url + page)
        assert fills_the_screen_without_scrolling_sideways(browser), page
    browser.get(console.url + "/admin/keys")
    browser.save_screenshot(str(shots / "keys-phone.png"))
    browser.set_window_size(*LAPTOP)


def test_every_limit_is_shown_and_edited_from_the_key_page(console: Console, browser: Any) -> None:
    info, _ = console.api.store.create_key(email="limits@example.org")
    sign_in(browser, console)
    browser.get(f"{console.url}/admin/keys/{info.id}")
    wanted = {limit.name: max(limit.minimum, 7) for limit in LIMITS}
    for limit in LIMITS:
        assert by_css(browser, f"#limit-{limit.name}").text == limit.describe(info.limits[limit.name])
        field = by_css(browser, f"#edit input[name={limit.name}]")
        field.clear()
        field.send_keys(str(wanted[limit.name]))
    assert by_css(browser, "#keep-texts").text == "not kept"
    by_css(browser, "#edit input[name=keep_texts]").click()
    by_css(browser, "#edit button[type=submit]").click()
    wait_until(lambda: "Saved." in by_css(browser, "main").text, what="the save")
    assert dict(console.api.store.get_key(info.id).limits) == wanted
    assert console.api.store.get_key(info.id).keep_texts and by_css(browser, "#keep-texts").text == "kept in its usage records"
    for limit in LIMITS:
        assert by_css(browser, f"#limit-{limit.name}").text == limit.describe(wanted[limit.name])
    optional = [limit for limit in LIMITS if limit.optional]
    for limit in optional:
        by_css(browser, f"#edit input[name={limit.name}]").clear()
    by_css(browser, "#edit button[type=submit]").click()
    wait_until(
        lambda: all(by_css(browser, f"#limit-{limit.name}").text == "unlimited" for limit in optional),
        what="the limits cleared",
    )
    assert all(console.api.store.get_key(info.id).limits[limit.name] is None for limit in optional)


def test_admin_tokens_are_made_and_revoked_and_every_keys_changes_are_listed(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    shots = screenshot_directory(tmp_path)
    store = console.api.store
    info, _ = store.create_key(email="audited@example.org")
    store.update_key(info.id, max_requests=3)
    sign_in(browser, console)

    browser.get(console.url + "/admin/audit")
    rows = all_by_css(browser, "table.audit tbody tr")
    assert "max_requests: null -> 3" in rows[0].text and f"#{info.id}" in rows[0].text  # newest first
    assert "create" in rows[-1].text
    browser.save_screenshot(str(shots / "audit.png"))
    show_days(browser, since=tomorrow())
    wait_until(lambda: "No changes." in by_css(browser, "table.audit").text, what="tomorrow's changes")
    show_days(browser, since=datetime.now(UTC).date().isoformat())
    wait_until(lambda: "max_requests: null -> 3" in by_css(browser, "table.audit").text, what="today's changes")

    browser.get(console.url + "/admin/tokens")
    by_css(browser, "#new-token input[name=name]").send_keys("bo")
    by_css(browser, "#new-token button[type=submit]").click()
    wait_until(lambda: all_by_css(browser, "#secret"), what="the new admin token's secret")
    made = by_css(browser, "#secret").get_attribute("value")
    assert made.startswith("llmadm_") and console.call("GET", "/admin/api/keys", token=made).status_code == 200
    browser.save_screenshot(str(shots / "admins.png"))
    made_id = next(token.id for token in store.list_admin_tokens() if token.name == "bo")
    submit_confirmed(browser, f"#revoke-{made_id}")
    wait_until(lambda: "revoked" in by_css(browser, "main").text, what="the revoked token")
    assert made not in browser.page_source
    assert console.call("GET", "/admin/api/keys", token=made).status_code == 401


def _key_id(browser: Any) -> str:
    return by_css(browser, "h1").text.split("#", 1)[1].split()[0]


def test_the_cluster_page_shows_a_worker_go_from_idle_to_busy_during_a_slow_request_and_back(
    tmp_path: Path, browser: Any
) -> None:
    with running_console(tmp_path, workers=(("default", "sleep"),)) as console:
        secret = console.api.key()
        sign_in(browser, console)
        browser.get(console.url + "/admin/cluster")

        def state() -> str:
            badges = all_by_css(browser, "[data-service=default] .state")
            return badges[0].text if badges else ""

        assert state() == "idle"
        slow = threading.Thread(
            target=lambda: requests.post(
                console.api.url + "/api/", headers={"Authorization": f"Bearer {secret}"},
                json={"text": "x", "sleep_ms": 3000}, timeout=30,
            )
        )
        slow.start()
        try:
            wait_until(lambda: state() == "busy", timeout=6, interval=0.1, what="the worker shown busy")
            assert "1 busy" in by_css(browser, "[data-service=default] .counts").text
            browser.save_screenshot(str(screenshot_directory(tmp_path) / "cluster.png"))
            wait_until(lambda: state() == "idle", timeout=10, interval=0.1, what="the worker shown idle again")
        finally:
            slow.join()
