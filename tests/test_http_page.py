"""The browser page of `omnivox serve --http` in a REAL headless Chromium (Debian's `chromium`, driven by
Playwright; its fake microphone plays a WAV spoken by espeak-ng): record, send, hear the streamed answer
(WebAudio chunks counted by the page), see the text and the latency figures. The screenshot is kept under the
test's tmp_path (its path is printed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from http_support import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.slow


def chromium_args(microphone: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}",
            "--autoplay-policy=no-user-gesture-required"]


def test_the_page_records_sends_plays_the_streamed_answer_and_shows_text(tmp_path):
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (the page test drives Debian's chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make install-system` (apt package chromium)")
    microphone = tmp_path / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(microphone), "What is the capital of France?"], check=True)
    screenshot = tmp_path / "omnivox_page.png"
    with serving(max_steps=64) as served, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=chromium_args(microphone))
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(served.url + "/")
            page.click("#record")
            page.wait_for_function("document.querySelector('#status').textContent === 'recording…'")
            page.wait_for_timeout(1500)  # speak for 1.5 s (the fake microphone loops the WAV)
            page.click("#stop")
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
