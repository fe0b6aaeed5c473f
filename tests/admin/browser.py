"""A real browser for the console's tests: Debian's Chromium, driven by Selenium through
Debian's chromedriver. Nothing is downloaded: Selenium is given both programs' paths, and
Chromium runs headless, with a fresh profile and its background network traffic off.

Without Chromium and chromedriver the browser tests skip, saying so, or fail when
``LLMAPI_REQUIRE_BROWSER=1`` (CI), so a missing browser never passes silently there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE_BROWSER_ENV = "LLMAPI_REQUIRE_BROWSER"
SCREENSHOTS_ENV = "LLMAPI_CONSOLE_SCREENSHOTS"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--lang=en-US",  # where a date picker would show MM/DD/YYYY: the console's dates are ISO all the same
)
LAPTOP = (1280, 860)
PHONE = (390, 844)


def programs() -> tuple[str, str]:
    """Chromium's and chromedriver's paths, or a skip (a failure in CI) saying what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or shutil.which("chromedriver", path="/usr/lib/chromium")
    if chromium and driver:
        return chromium, driver
    message = "Chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
    if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
        pytest.fail(f"{REQUIRE_BROWSER_ENV}=1 but {message}", pytrace=False)
    pytest.skip(message)


@contextmanager
def chromium(profile: Path) -> Iterator[object]:
    """A headless Chromium with the profile directory ``profile``, quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = programs()
    options = Options()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={LAPTOP[0]},{LAPTOP[1]}"):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(profile.parent / "chromedriver.log"))
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, should it ever run, fetches nothing
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception as error:  # the browser cannot start: in CI a failure, never a pass
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(f"Chromium did not start: {error}", pytrace=False)
        raise
    try:
        yield driver
    finally:
        driver.quit()


def screenshot_directory(tmp_path: Path) -> Path:
    """Where screenshots go: ``$LLMAPI_CONSOLE_SCREENSHOTS`` (docs/console is refreshed so), else the test's
    own directory."""
    chosen = os.environ.get(SCREENSHOTS_ENV)
    directory = Path(chosen) if chosen else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory
