"""The demo page (localdev/demo), as a front-end developer would use it, from another origin."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from localdev.harness import LocalStack
from tests.browser.conftest import PageServer
from tests.factories import bearer, png, token
from tests.support import RunningPostgres


def use_demo(driver: Any, origin: str, api: str, tok: str, picture: Path) -> str:
    driver.get(f"{origin}/demo/index.html?api={api}")
    driver.find_element(By.ID, "token").send_keys(tok)
    driver.find_element(By.ID, "file").send_keys(str(picture))
    driver.find_element(By.ID, "upload").click()
    status = driver.find_element(By.ID, "status")
    WebDriverWait(driver, 60).until(
        lambda d: status.text.startswith("ready:") or "error" in (status.get_attribute("class") or "")
    )
    return str(status.text)


def test_the_demo_page_uploads_and_shows_the_picture(
    driver: Any, pages: PageServer, api: LocalStack, tmp_path: Path
) -> None:
    data = png(320, 200)
    picture = tmp_path / "tarte-tatin.png"
    picture.write_bytes(data)
    tok = token()
    status = use_demo(driver, pages.origin, api.base, tok, picture)
    assert status.startswith("ready:"), status
    media_id = status.split(":", 1)[1].strip()
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "const i = document.getElementById('preview'); return i.complete && !i.hidden;"
        )
    )
    assert driver.execute_script("return document.getElementById('preview').naturalWidth") == 320
    assert driver.find_element(By.ID, "progress").get_attribute("value") == "100"
    # Then the placeholder, then the <picture>: Chromium takes AVIF, so the AVIF variant is shown.
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script(
            "const i = document.querySelector('#picture img');"
            " return !!i && i.complete && i.naturalWidth > 0 && !document.getElementById('picture').hidden;"
        )
    )
    assert driver.execute_script("return document.getElementById('placeholder').dataset.drawn") == "true"
    shown = driver.execute_script("return document.querySelector('#picture img').currentSrc")
    assert "format=avif" in shown and "w=320" in shown, shown
    assert "processing: done" in driver.find_element(By.ID, "processing").text
    driver.save_screenshot(str(tmp_path / "demo.png"))
    stored = requests.get(f"{api.base}/media/{media_id}/content", headers=bearer(tok), timeout=10)
    assert hashlib.sha256(stored.content).hexdigest() == hashlib.sha256(data).hexdigest()


def test_an_origin_not_allowed_fails_in_the_browser_and_stores_nothing(
    driver: Any, other_pages: PageServer, api: LocalStack, tmp_path: Path
) -> None:
    picture = tmp_path / "crepe.png"
    picture.write_bytes(png())
    tok = token()
    status = use_demo(driver, other_pages.origin, api.base, tok, picture)
    assert not status.startswith("ready:")
    assert "error" in (driver.find_element(By.ID, "status").get_attribute("class") or "")
    listed = requests.get(f"{api.base}/media", headers=bearer(tok), timeout=10).json()
    assert listed["items"] == []


def test_the_demo_page_as_make_run_serves_it(driver: Any, pg: RunningPostgres, tmp_path: Path) -> None:
    """Same origin, development secrets: the page fetches its own token from /demo/token."""
    stack = LocalStack(data_dir=tmp_path / "v", env={"MEDIA_DATABASE_URL": pg.url})
    stack.env["MEDIA_PUBLIC_BASE_URL"] = f"http://localhost:{stack.port}"  # make run's default
    stack.start()
    try:
        data = png(64, 48)
        picture = tmp_path / "soup.png"
        picture.write_bytes(data)
        driver.get(f"http://localhost:{stack.port}/demo/")
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "token").get_attribute("value"))
        driver.find_element(By.ID, "file").send_keys(str(picture))
        driver.find_element(By.ID, "upload").click()
        status = driver.find_element(By.ID, "status")
        WebDriverWait(driver, 60).until(
            lambda d: status.text.startswith("ready:") or "error" in (status.get_attribute("class") or "")
        )
        assert status.text.startswith("ready:"), status.text
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script(
                "const i = document.getElementById('preview'); return i.complete && !i.hidden;"
            )
        )
        assert driver.execute_script("return document.getElementById('preview').naturalWidth") == 64
    finally:
        stack.stop()
