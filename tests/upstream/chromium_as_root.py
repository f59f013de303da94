"""A pytest plugin (``-p chromium_as_root``) for Channels' Selenium tests on this machine.

Their ``ChromeOptions`` only add ``--headless``; Debian's Chromium, run as root in a container
with no network, also needs the flags below, and Selenium must not try to download a driver.
The tests themselves are untouched, and the same plugin runs for stock Channels and for ours.
"""

import os

from selenium import webdriver

os.environ.setdefault("SE_OFFLINE", "true")  # use /usr/bin/chromedriver; no download attempt

FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


class ChromeOptions(webdriver.ChromeOptions):
    def __init__(self) -> None:
        super().__init__()
        self.binary_location = "/usr/bin/chromium"
        for flag in FLAGS:
            self.add_argument(flag)


webdriver.ChromeOptions = ChromeOptions
