"""The upload service's page for people (`GET /`), driven in headless Debian Chromium against a real server: choose
a file, a user id and top-k, press Predict, and see the ranked lines and the histogram of predicted CTRs.

Chromium is driven through chromedriver's W3C WebDriver protocol (plain HTTP + JSON, spoken here with `requests`,
so no browser-automation package is needed). Needs Debian's `chromium` and `chromium-driver` packages
(`apt-get install -y chromium chromium-driver`); skipped without them, a failure when CI=true.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest
import requests

from ctrkit.data import parse_lines
from ctrkit.inference import PredictorOptions, create_predictor, load_exported_model
from upload_helpers import UploadServer, free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def _binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must install them")
        pytest.skip(reason)
    return chromium, driver


class Browser:
    """A minimal W3C WebDriver client for one headless Chromium session."""

    def __init__(self, chromium: str, driver: str, profile: str, log_path: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        self.driver = subprocess.Popen([driver, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.base + "/status", timeout=2).json()["value"]["ready"]:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.driver.poll() is not None:
                self.close()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]}}
        answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.session = f"/session/{answer['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        response = requests.request(method, self.base + path, json=body if body is not None else None,
                                    timeout=120)
        value = response.json()["value"]
        if response.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {value}")
        return value

    def get(self, url: str) -> None:
        self._call("POST", self.session + "/url", {"url": url})

    def element(self, css: str) -> str:
        found = self._call("POST", self.session + "/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def type(self, css: str, text: str, clear: bool = True) -> None:
        element = self.element(css)
        if clear:
            self._call("POST", f"{self.session}/element/{element}/clear", {})
        self._call("POST", f"{self.session}/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"{self.session}/element/{self.element(css)}/click", {})

    def script(self, source: str, *args):
        return self._call("POST", self.session + "/execute/sync", {"script": source, "args": list(args)})

    def wait(self, source: str, timeout_s: float = 60):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.script(f"return ({source});")
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {source}")

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", self.session)
        except (RuntimeError, requests.RequestException):
            pass
        self.driver.terminate()
        try:
            self.driver.wait(20)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = _binaries()
    directory = tmp_path_factory.mktemp("chromium")
    with tempfile.TemporaryDirectory(dir=directory) as profile:  # a fresh profile
        b = Browser(chromium, driver, profile, str(directory / "chromedriver.log"))
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(exported_deepfm, tmp_path_factory):
    server = UploadServer(exported_deepfm, str(tmp_path_factory.mktemp("page") / "server.log"))
    yield server
    server.stop()


def test_page_ranks_lines_and_draws_the_histogram(browser, server, exported_deepfm, slot_sample):
    with open(slot_sample, "rb") as f:
        lines = f.readlines()
    batch = parse_lines(lines, load_exported_model(exported_deepfm).feature_spec).batch
    expected = create_predictor(exported_deepfm, PredictorOptions()).predict(batch.dense, batch.sparse)
    order = np.lexsort((np.arange(len(expected)), -expected))[:5]

    browser.get(server.url + "/")
    assert browser.script("return document.title;") == "CTR upload"
    browser.type("#file", os.path.abspath(slot_sample), clear=False)
    browser.type("#user_id", "browser-1")
    browser.type("#top_k", "5")
    browser.click("#submit")
    browser.wait("document.getElementById('results').hidden === false")

    rows = browser.script("return [...document.querySelectorAll('#ranking tr')].map("
                          "tr => [...tr.children].map(td => td.textContent));")
    assert len(rows) == 5
    assert [int(row[1]) for row in rows] == (order + 1).tolist()  # line numbers, best first
    np.testing.assert_allclose([float(row[2]) for row in rows], expected[order], atol=2e-6)
    assert rows[0][3] == lines[order[0]].decode().rstrip("\n")  # the line's own text
    counts = json.loads(browser.script("return document.getElementById('histogram').dataset.counts;"))
    assert len(counts) == 20 and sum(counts) == len(lines)
    drawn = browser.script("""const c = document.getElementById('histogram');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let blue = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i] < 100) blue++;
        return blue;""")
    assert drawn > 1000  # bars were drawn
    status = browser.script("return document.getElementById('status').textContent;")
    assert f"{len(lines)} lines scored by model version 0" in status


def test_page_shows_the_services_error(browser, server, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("this is not a data line\n")
    browser.get(server.url + "/")
    browser.type("#file", str(bad), clear=False)
    browser.click("#submit")
    text = browser.wait("document.getElementById('status').className === 'error' && "
                        "document.getElementById('status').textContent")
    assert text.startswith("Error 400: line 1:")
    assert browser.script("return document.getElementById('results').hidden;") is True
