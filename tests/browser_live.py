"""The page's live mode in a real browser, for tests/test_live_page.py and benchmarks/bench_browser.py: the default
model served by `omnivox serve --http --checkpoint demo` over HTTPS (a self-signed certificate, reached as
https://omnivox.test:<port>), Debian's chromium driven by Playwright with a fake microphone that plays a WAV of
spoken questions (chromium loops it: the WAV ends in a long silence), and what the page received and measured
(window.omnivox.live)."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from http_support import self_signed
from mqtt_support import free_port
from test_http_page import CHROMIUM, chromium_args, playwright_api

from omnivox.core import audio
from omnivox.plugins.audio_files import read_audio, write_audio

RATE = 16000
NOISE = 0.002  # the microphone's noise floor (-54 dBFS): what a browser's noise suppression expects to find
HOST = "omnivox.test"


def microphone_wav(folder: Path, questions: list[str], gaps_s: list[float], lead_s: float = 1.0,
                   tail_s: float = 30.0) -> tuple[Path, list[float]]:
    """The fake microphone's WAV: `lead_s` of room noise, each question (espeak-ng) followed by its gap, then
    `tail_s`; returns it and where each question's speech ends (s)."""
    parts, ends, at = [np.zeros(int(lead_s * RATE), np.float32)], [], int(lead_s * RATE)
    for i, (question, gap) in enumerate(zip(questions, gaps_s, strict=True)):
        wav = folder / f"question{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), question], check=True)
        pcm, rate = read_audio(wav)
        speech = audio.resample(audio.to_mono(pcm), rate, RATE)
        ends.append((at + np.flatnonzero(np.abs(speech) > 0.02)[-1] + 1) / RATE)
        parts += [speech, np.zeros(int(gap * RATE), np.float32)]
        at += len(speech) + int(gap * RATE)
    parts.append(np.zeros(int(tail_s * RATE), np.float32))
    stream = np.concatenate(parts)
    stream += np.random.default_rng(0).normal(0.0, NOISE, len(stream)).astype(np.float32)
    path = folder / "microphone.wav"
    write_audio(path, stream, RATE)
    return path, ends


@dataclass
class Server:
    url: str  # https://omnivox.test:<port>
    spki: str  # the certificate's key hash, which chromium is told to trust
    log: Path


@contextlib.contextmanager
def demo_server(folder: Path, token: str | None = None, max_steps: int | None = None):
    """`omnivox serve --http --checkpoint demo` over HTTPS on a free loopback port (a subprocess, as users run it)."""
    cert = self_signed(folder, name=HOST)
    port, log = free_port(), folder / "serve.log"
    command = [sys.executable, "-m", "omnivox.cli.main", "serve", "--http", f"127.0.0.1:{port}", "--checkpoint",
               "demo", "--http-tls-cert", str(cert.cert), "--http-tls-key",
               str(cert.key)] + (["--http-token", token] if token else []) + \
        (["--max-steps", str(max_steps)] if max_steps else [])
    with open(log, "wb") as stderr:
        server = subprocess.Popen(command, stderr=stderr, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while "HTTP on" not in log.read_text(errors="replace"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"omnivox serve did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield Server(f"https://{HOST}:{port}", cert.spki, log)
    finally:
        server.terminate()
        server.wait(30)


@contextlib.contextmanager
def browser_page(microphone: Path, server: Server):
    """A chromium page of `server` (not yet loaded) whose microphone plays `microphone`; `page.console` collects
    its console lines and page errors."""
    sync_api = playwright_api()
    args = chromium_args(microphone) + [f"--host-resolver-rules=MAP {HOST} 127.0.0.1",
                                        f"--ignore-certificate-errors-spki-list={server.spki}"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            page.console = []
            page.on("console", lambda message: page.console.append(message.text))
            page.on("pageerror", lambda error: page.console.append(f"page error: {error}"))
            yield page
        finally:
            browser.close()


def renice_browser(microphone: Path, nice: int) -> int:
    """Set the niceness of every thread of the chromium that plays `microphone` (the process whose command line
    names it, and all its descendants); returns how many threads. On a machine shared with the server, a browser
    that does not compete for the server's cores stands for a phone or a second computer. Chromium runs its audio
    threads (capture, echo cancellation, the AudioWorklet, output) real time (SCHED_RR) where it may, as root
    does, and a niceness does not reach such a thread, so those are first put back to the normal policy."""
    parents, roots = {}, set()
    for proc in Path("/proc").iterdir():
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if str(microphone) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                roots.add(int(proc.name))
        except (OSError, ValueError, IndexError):  # not a process folder, or gone meanwhile
            continue

    def in_browser(pid: int) -> bool:
        while pid > 1:
            if pid in roots:
                return True
            pid = parents.get(pid, 0)
        return False

    threads = 0
    for pid in filter(in_browser, parents):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                if os.sched_getscheduler(int(task.name)) in (os.SCHED_RR, os.SCHED_FIFO):
                    os.sched_setscheduler(int(task.name), os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
                threads += 1
    return threads


def slow_session_start(page, seconds: float) -> None:
    """Hold each live session's `started` message `seconds` before the page's handler sees it (and what comes
    after it, in order): the page then sees the session open as slowly as on a busy machine. Set before goto."""
    page.add_init_script("""(() => {
      const native = Object.getOwnPropertyDescriptor(WebSocket.prototype, "onmessage");
      Object.defineProperty(WebSocket.prototype, "onmessage", {
        configurable: true,
        get() { return native.get.call(this); },
        set(handler) {
          let state = "before", queue = [];
          native.set.call(this, (message) => {
            if (state === "before" && typeof message.data === "string" && message.data.includes('"started"')) {
              state = "holding";
              setTimeout(() => { state = "after"; handler(message); queue.splice(0).forEach(handler); }, DELAY_MS);
            } else if (state === "holding") {
              queue.push(message);
            } else {
              handler(message);
            }
          });
        },
      });
    })();""".replace("DELAY_MS", str(round(seconds * 1000))))


def wait_for_turns(page, turns: int, timeout_s: float = 90.0) -> dict:
    """window.omnivox.live once `turns` turns have ended and their answers have played out."""
    page.wait_for_function(f"""() => {{
        const live = window.omnivox.live;
        const ended = Object.values(live.turns).filter((t) => t.reason !== null).length;
        return live.errors.length > 0 || (ended >= {turns} && live.state === "listening");
    }}""", timeout=timeout_s * 1000)
    return page.evaluate("window.omnivox.live")


def answer_audio(page, turn: int) -> tuple[np.ndarray, int] | None:
    """The answer audio the page received for `turn` (float32 mono, rate)."""
    got = page.evaluate(f"window.omnivox.live.answerAudio({turn})")
    if got is None:
        return None
    pcm = np.frombuffer(base64.b64decode(got["pcm"]), np.int16).astype(np.float32) / 32768
    return pcm, got["rate"]
