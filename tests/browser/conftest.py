"""Browser end-to-end tests: Debian's headless Chromium driven by Selenium, pages served from an
origin other than the API's, the API being `make run`'s stack as a real process."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from localdev.harness import LocalStack
from tests.support import RunningPostgres, service_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# URL prefix -> directory, for the page server.
MOUNTS = {
    "/pages/": HERE / "pages",
    "/uppy6/": HERE / "node_modules" / "uppy" / "dist",
    "/uppy5/": HERE / "node_modules" / "uppy5" / "dist",
    "/demo/": ROOT / "localdev" / "demo",
}


def _missing() -> list[str]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    missing += [str(d) for d in MOUNTS.values() if not d.is_dir()]
    return missing


@pytest.fixture(scope="session", autouse=True)
def browser_available() -> None:
    missing = _missing()
    if not missing:
        return
    reason = f"BROWSER TESTS NOT RUN: missing {', '.join(missing)} (make test installs them as root)"
    if os.environ.get("MEDIA_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class _Handler(SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, directory in MOUNTS.items():
            if clean.startswith(prefix):
                rest = clean[len(prefix) :] or "index.html"
                target = (directory / rest).resolve()
                if directory.resolve() in target.parents or target == directory.resolve():
                    return str(target)
        return str(HERE / "does-not-exist")

    def log_message(self, format: str, *args: Any) -> None:
        return None


class PageServer:
    """A static web server on its own loopback port: an origin different from the API's."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(HERE)))
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def other_pages() -> Iterator[PageServer]:
    """Pages from an origin that is NOT in MEDIA_CORS_ORIGINS."""
    server = PageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def api(
    pg: RunningPostgres, pages: PageServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    stack = LocalStack(
        data_dir=tmp_path_factory.mktemp("browser-api"),
        env=service_env(pg.url, MEDIA_CORS_ORIGINS=pages.origin),
    ).start()
    yield stack
    stack.stop()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_script_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
