"""Debian's Chromium under Selenium for the page tests: no browser download, headless,
the microphone fed from a wav file, downloads into a folder the test reads.

Imported by name from tests/serve (pytest puts the folder on sys.path).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver", "chromium-driver")
MISSING = (
    "Chromium or its driver is not installed; `make test` installs them with apt-get "
    "(packages chromium and chromium-driver)"
)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@contextmanager
def chromium(microphone_wav: Path, downloads: Path) -> Iterator[Any]:
    """A headless Chromium whose microphone plays ``microphone_wav`` (in a loop, from the
    moment a page opens it) and whose downloads land in ``downloads``."""
    binary, driver_path = _which(CHROMIUM_NAMES), _which(DRIVER_NAMES)
    if not binary or not driver_path:
        pytest.skip(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield driver
    finally:
        driver.quit()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``condition()``'s first truthy value, polled every 100 ms."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.1)


def wait_for_download(folder: Path, name: str, timeout_s: float = 20) -> bytes:
    """The bytes of ``folder/name`` once Chromium has finished writing it."""
    path = folder / name
    wait_until(lambda: path.exists() and not list(folder.glob("*.crdownload")), timeout_s, name)
    return path.read_bytes()


def relative_luminance(rgb: tuple[float, float, float]) -> float:
    """WCAG 2's relative luminance of an sRGB colour given as 0-255 channels."""

    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(fg: tuple[float, float, float], bg: tuple[float, float, float]) -> float:
    """WCAG 2's contrast ratio of two colours (1 to 21)."""
    hi, lo = sorted((relative_luminance(fg), relative_luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
