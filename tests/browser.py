"""Headless Chromium for viewer tests: Debian's chromium + chromedriver, driven by Selenium."""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--window-size=1600,1000"]


def available() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(CHROMIUM) and os.path.exists(DRIVER)


def chrome(tmp_path):
    """A fresh headless browser (own profile folder); CI must have it, elsewhere the test skips."""
    if not available():
        if os.environ.get("CI"):
            pytest.fail("headless Chromium, chromedriver and selenium are required in CI (.ci/run installs them)")
        pytest.skip("needs chromium, chromium-driver and selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        o.add_argument(f)
    return webdriver.Chrome(service=Service(DRIVER), options=o)


def open_page(driver, path: str, timeout: float = 30.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("file://" + os.path.abspath(path))
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
