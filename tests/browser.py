"""A real headless Chromium for the status page tests, driven by selenium.

Debian's chromium and chromedriver (scripts/setup-system installs them) are
named by path, so selenium never looks for or downloads a browser or driver
of its own.  Missing, they fail the test with what to run: CI must run these
tests, not skip them.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.conftest import kill_tree

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 1280, 800


class Page:
    """One browser tab on the status page, with waits that say what they waited for."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    def open(self, route: str = "#/") -> None:
        self.driver.get(self.base + "/" + route)

    def go(self, route: str) -> None:
        """Change the hash route in place, as a click on a link does (no reload)."""
        self.driver.execute_script("location.hash = arguments[0]", route)

    def wait(self, predicate: Callable[[], Any], timeout: float = 15.0, what: str = "it") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(StaleElementReferenceException):
                value = predicate()
                if value:
                    return value
            if time.monotonic() > deadline:
                path = self.shot("timeout")
                raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                     f"(screenshot {path}); page text:\n{self.text()[:3000]}")
            time.sleep(0.1)

    def click(self, css: str, timeout: float = 15.0) -> None:
        """Click the element once it is there; the page re-renders live, so an element
        replaced between finding and clicking it is found again."""
        def clicked() -> bool:
            el = self.one(css)
            if el is None:
                return False
            el.click()
            return True
        self.wait(clicked, timeout, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def one(self, css: str) -> WebElement | None:
        found = self.all(css)
        return found[0] if found else None

    def text(self, css: str = "body") -> str:
        el = self.one(css)
        return el.text if el is not None else ""

    def has_text(self, css: str, text: str) -> bool:
        return text in self.text(css)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def errors(self) -> list[str]:
        """What the page logged as SEVERE: script errors, and requests that failed."""
        return [e["message"] for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE"]

    def script_errors(self) -> list[str]:
        """Script errors only (a 503 while the daemon is down is logged too, and expected)."""
        return [m for m in self.errors()
                if "Failed to load resource" not in m and "api/events" not in m]


def chrome(log_dir: Path) -> webdriver.Chrome:
    """A headless Chromium; fails the test with what to install when it is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the status page is tested in Debian's "
                    "headless Chromium; run scripts/setup-system (as root it installs the "
                    "chromium and chromium-driver packages)", pytrace=False)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--disable-background-networking",
                f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={log_dir / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER),
                      log_output=str(log_dir / "chromedriver.log"))
    try:
        return webdriver.Chrome(service=service, options=options)
    except WebDriverException:
        if service.process is not None:
            kill_tree(service.process.pid)
        raise


@contextlib.contextmanager
def browser(base: str, directory: Path) -> Iterator[Page]:
    """A page on ``base`` (http://127.0.0.1:PORT); the browser and its driver are gone
    afterwards, killed by pid if quitting does not end them."""
    directory.mkdir(parents=True, exist_ok=True)
    driver = chrome(directory)
    driver_pid = driver.service.process.pid
    try:
        # The viewport itself WIDTH x HEIGHT (a window size would include the frame).
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        yield Page(driver, base, directory)
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        kill_tree(driver_pid)

