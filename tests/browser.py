"""Loading HTML reports in headless Chromium (through Selenium and Debian's chromium-driver).

Where the browser, its driver or selenium is missing, the browser tests skip with a message; in CI
(environment CI=true) they fail instead, so that CI never passes without having looked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _missing(what: str) -> None:
    msg = f"browser tests need {what} (Debian: apt-get install chromium chromium-driver; pip install selenium)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module, its console log captured."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium")
    binary = next((b for b in map(shutil.which, BROWSERS) if b), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("chromium and chromedriver on PATH")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)  # --no-sandbox: chromium refuses to run as root without it
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


def load(driver, page: Path) -> dict:
    """Open `page` and return its images ({src prefix, complete, naturalWidth}), its console
    errors (SEVERE log entries) and its text."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(Path(page).resolve().as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.src.slice(0, 22), "
        "complete: i.complete, width: i.naturalWidth}))"
    )
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return {
        "images": images,
        "errors": errors,
        "text": driver.find_element("tag name", "body").text,
    }
