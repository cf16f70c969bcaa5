"""A client nobody here wrote: Uppy's AWS S3 uploader, in headless Chromium, against our presign
endpoint and PUT target, across origins."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from localdev.harness import LocalStack
from tests.browser.conftest import PageServer
from tests.factories import bearer, png, token


@pytest.mark.parametrize("page", ["uppy6", "uppy5"])
def test_uppy_uploads_a_real_image_through_a_presigned_url(
    driver: Any, pages: PageServer, api: LocalStack, page: str
) -> None:
    data = png(200, 150)
    tok = token()
    driver.get(f"{pages.origin}/pages/{page}.html")
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "state").text == "ready")
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.runUpload(arguments[0], arguments[1], arguments[2], arguments[3], arguments[4])"
        ".then(done, (e) => done({failed: [String(e)]}));",
        api.base,
        tok,
        base64.b64encode(data).decode(),
        "pancakes.png",
        "image/png",
    )
    assert result.get("successful") == 1, result
    record = requests.get(f"{api.base}/media/{result['mediaId']}", headers=bearer(tok), timeout=10).json()
    assert record["status"] == "ready"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["filename"] == "pancakes.png"
