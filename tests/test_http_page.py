"""The browser page of `omnivox serve --http` in a REAL headless Chromium (Debian's `chromium`, driven by
Playwright; its fake microphone plays a WAV spoken by espeak-ng): record, send, hear the streamed answer
(WebAudio chunks counted by the page), see the text and the latency figures. The screenshot is kept under the
test's tmp_path (its path is printed). Over HTTPS (a self-signed certificate made by openssl, trusted by its
key's hash) from a non-localhost origin with a token, the page is a secure context, asks for the token and gets
its answer; over plain HTTP from that origin it says the microphone needs HTTPS."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from http_support import ROOT, self_signed, serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.slow


def chromium_args(microphone: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}",
            "--autoplay-policy=no-user-gesture-required"]


def playwright_api():
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (the page test drives Debian's chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make install-system` (apt package chromium)")
    return sync_api


def spoken_question(folder: Path) -> Path:
    microphone = folder / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(microphone), "What is the capital of France?"], check=True)
    return microphone


def record_and_send(page) -> None:
    page.click("#record")
    page.wait_for_function("document.querySelector('#status').textContent === 'recording…'")
    page.wait_for_timeout(1500)  # speak for 1.5 s (the fake microphone loops the WAV)
    page.click("#stop")


@contextlib.contextmanager
def plain_page_server():
    """The page's files over plain HTTP on a free loopback port (yields the port)."""
    handler = functools.partial(QuietHandler, directory=str(ROOT / "plugins" / "http" / "page"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_the_page_records_sends_plays_the_streamed_answer_and_shows_text(tmp_path):
    sync_api = playwright_api()
    microphone = spoken_question(tmp_path)
    screenshot = tmp_path / "omnivox_page.png"
    with serving(max_steps=64) as served, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=chromium_args(microphone))
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(served.url + "/")
            record_and_send(page)
            page.wait_for_function("window.omnivox.turns >= 1 || window.omnivox.lastError !== null", timeout=60_000)
            state = page.evaluate("window.omnivox")
            figures = {cell: page.text_content(f"#{cell}") for cell in ("first-text", "first-audio", "server-rtf")}
            shown = page.text_content("#answer")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    assert state["lastError"] is None, (state, console)
    assert state["audioChunks"] > 0 and state["audioSeconds"] > 0  # WebAudio received the streamed answer
    assert state["text"] and shown == state["text"]
    assert all(value.endswith(" ms") for key, value in figures.items() if key != "server-rtf"), figures
    assert screenshot.stat().st_size > 0


def test_the_page_works_over_https_from_another_origin_and_asks_for_the_token(tmp_path):
    sync_api = playwright_api()
    microphone = spoken_question(tmp_path)
    cert = self_signed(tmp_path, name="omnivox.test")
    token = "page-5e1c0b"
    browser_args = chromium_args(microphone) + ["--host-resolver-rules=MAP omnivox.test 127.0.0.1",
                                                f"--ignore-certificate-errors-spki-list={cert.spki}"]
    with serving(max_steps=64, tls_cert=str(cert.cert), tls_key=str(cert.key), token=token) as served, \
            plain_page_server() as plain_port, sync_api.sync_playwright() as playwright:
        origin = f"https://omnivox.test:{urlsplit(served.url).port}"
        refused = requests.post(f"{served.url}/v1/chat", json={"text": "hi"}, verify=str(cert.cert), timeout=30)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=browser_args)
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(origin + "/")
            secure = page.evaluate("[window.isSecureContext, location.origin]")
            record_and_send(page)
            page.wait_for_function("window.omnivox.lastError !== null", timeout=60_000)
            asked = (page.evaluate("window.omnivox.lastError"), page.is_visible("#token"))
            page.fill("#token", token)
            page.click("#use-token")  # the recorded question is asked again, with the token
            page.wait_for_function("window.omnivox.turns >= 1 || window.omnivox.lastError !== null", timeout=60_000)
            spoken = page.evaluate("window.omnivox")
            page.fill("#question", "And of Spain?")
            page.click("#ask")  # the token is remembered (this tab's sessionStorage)
            page.wait_for_function("window.omnivox.turns >= 2 || window.omnivox.lastError !== null", timeout=60_000)
            typed = page.evaluate("[window.omnivox, sessionStorage.getItem('omnivox-token')]")
            page.goto(f"http://omnivox.test:{plain_port}/")  # the same page over plain HTTP: no secure context
            insecure = page.evaluate("window.isSecureContext")
            page.click("#record")
            refused_microphone = page.text_content("#status")
        finally:
            browser.close()
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "token-required"
    assert secure == [True, origin]
    assert "token" in asked[0] and asked[1], (asked, console)
    assert spoken["lastError"] is None and spoken["turns"] == 1, (spoken, console)
    assert spoken["audioChunks"] > 0 and spoken["text"]  # the microphone's question was answered
    assert typed[0]["lastError"] is None and typed[0]["turns"] == 2 and typed[1] == token, (typed, console)
    assert insecure is False and "needs HTTPS" in refused_microphone
