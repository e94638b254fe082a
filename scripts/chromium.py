"""Debian's headless Chromium driven by selenium (``apt-get install chromium chromium-driver``; selenium is in the
``test`` and ``dev`` extras): for the README's screenshots and the test that opens report.html in a real browser.

The flags keep Chromium off the network (this machine's is closed: without them it retries Google's hosts at every
start) and out of the user's profile.
"""
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver"


def available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def browser(profile: Path, window: tuple[int, int]):
    """A headless Chromium with a fresh profile folder and the given window size (pixels)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
