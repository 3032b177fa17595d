"""Helpers of the MQTT tests: a REAL mosquitto on a free loopback port with a generated config (optionally a
password file and an ACL), and the tiny omnivox MQTT service pipeline run in-process."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")

# A SNAC with 3 codebooks of 4096 (like the 24 kHz model) but tiny layers (as tests/test_chat.py).
TINY_SNAC = dict(sampling_rate=8000, encoder_dim=4, encoder_rates=[2, 2], decoder_dim=16, decoder_rates=[2, 2],
                 attn_window_size=None, codebook_size=4096, codebook_dim=4, vq_strides=[4, 2, 1], noise=True,
                 depthwise=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run `make install-system` (apt package mosquitto)")


class Mosquitto:
    """A mosquitto process on 127.0.0.1:`port`; `users` {name: password} and `acl` text switch auth on."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, acl: str | None = None,
                 tls: bool = False):
        need_mosquitto()
        self.folder, self.port = folder, free_port()
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        # `user`: stay the current user (as root mosquitto would switch to "mosquitto", which cannot read
        # the password file in a private temporary folder)
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", "persistence false",
                 "log_dest stderr",
                 "log_type error", "log_type warning"]
        if users:
            passwords = folder / "passwords"
            passwords.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True)
            passwords.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            (folder / "acl").write_text(acl)
            (folder / "acl").chmod(0o600)
            lines.append(f"acl_file {folder / 'acl'}")
        if tls:  # a throwaway CA and a server certificate for 127.0.0.1
            self.ca_file = make_test_certificates(folder)
            lines += [f"cafile {self.ca_file}", f"certfile {folder / 'server.crt'}", f"keyfile {folder / 'server.key'}"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.folder / "mosquitto.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / 'mosquitto.log').read_text()}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port within 10 s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def make_test_certificates(folder: Path) -> Path:
    """ca.crt/ca.key and server.crt/server.key (subjectAltName IP 127.0.0.1) in `folder`; returns ca.crt."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, cwd=folder, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=omnivox test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.crt"


def write_question(path: Path, seconds: float = 0.6, rate: int = 16000) -> Path:
    """A short WAV "question" (a chirp; the tiny model's answer is noise whatever it hears)."""
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def tiny_service_stages(broker: str, *, max_steps: int = 16, worker: str | None = None, limits: dict | None = None,
                        **mqtt):
    """mqtt in -> tiny whisper encoder -> tiny random LM -> tiny SNAC -> mqtt out (one shared model)."""
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.plugins.mqtt.stages import MqttAudioInput, MqttAudioOutput
    from omnivox.plugins.snac_codec import SnacCodec

    kit = SpeechKit.random(seed=1, speak=False)  # a tiny SNAC instead of the kit's full-size one
    return [MqttAudioInput(broker, worker=worker, limits=limits, **mqtt), EncoderStage(kit.encoder),
            LMStage("text-delay", model=kit.model, task="A1A2", max_steps=max_steps),
            CodecStage(SnacCodec.load(config=TINY_SNAC, seed=0)), MqttAudioOutput()]


@contextlib.asynccontextmanager
async def running_service(broker: str, **kwargs):
    """The tiny service pipeline, started and online; yields (pipeline, service)."""
    from omnivox.core.runtime.pipeline import Pipeline

    pipeline = Pipeline(tiny_service_stages(broker, **kwargs))
    runner = asyncio.create_task(pipeline.run())
    service = pipeline.stages[0]
    while service.service is None:
        await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(service.service.online.wait(), 10)
        yield pipeline, service.service
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


# ---- issue 22: `omnivox serve` as a subprocess and a raw device (fuzz, bad-input catalogue, soak, bench) -------
LOG_RECORD = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) "


class ServeProcess:
    """`omnivox serve --checkpoint random` (the tiny random model) in a subprocess on `broker_url`, with HTTP on a
    free loopback port when `http`; `config` is written as its --config YAML (e.g. {"limits": {...}}). Its stderr
    (the INFO log) goes to `<folder>/<worker>.log`; `pid` is for /proc/PID/status (RSS)."""

    def __init__(self, folder: Path, broker_url: str, *, worker: str = "edge", max_steps: int = 8, http: bool = True,
                 config: dict | None = None, args: tuple = (), env: dict | None = None):
        import sys

        self.folder, self.worker, self.log_path = folder, worker, folder / f"{worker}.log"
        self.env = env or {}
        self.http_url = None
        command = [sys.executable, "-m", "omnivox.cli.main", "serve", "--broker", broker_url, "--worker", worker,
                   "--checkpoint", "random", "--max-steps", str(max_steps), *args]
        if http:
            self.http_url = f"http://127.0.0.1:{free_port()}"
            command += ["--http", self.http_url.removeprefix("http://")]
        if config:
            import yaml

            (folder / f"{worker}.yaml").write_text(yaml.safe_dump(config))
            command += ["--config", str(folder / f"{worker}.yaml")]
        self.command = command
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> ServeProcess:
        import os

        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **self.env)
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"),
                                        env=env)
        expected = 2 if self.http_url else 1  # one "omnivox serve: ..." announcement per transport
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count("omnivox serve: ") >= expected and "online at" in self.log():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"omnivox serve exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"omnivox serve did not come up within {timeout:.0f} s:\n{self.log()[-4000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS of /proc/PID/status), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def records(self) -> list[tuple[str, str]]:
        """The log as (level, text) records; text printed before the first record has level ""."""
        import re

        parts = re.split(LOG_RECORD, self.log(), flags=re.M)
        return [("", parts[0]), *zip(parts[1::2], parts[2::2], strict=True)]

    def error_tracebacks(self) -> list[str]:
        """Tracebacks at ERROR level: in ERROR or CRITICAL records, or printed outside a log record (a crash;
        they land in the record before them, so only WARNING records' own tracebacks are not counted)."""
        return [f"{level} {text}" for level, text in self.records()
                if level != "WARNING" and "Traceback (most recent call last)" in text]

    def warning_tracebacks(self) -> list[str]:
        """WARNING records with a traceback (e.g. a stage that failed on a turn)."""
        return [text for level, text in self.records()
                if level == "WARNING" and "Traceback (most recent call last)" in text]

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class RawDevice:
    """A paho-mqtt (MQTT 5) device that publishes any bytes on any topic and records every message it receives on
    `subscribe` (default: everything under omnivox/), as (topic, payload, time.monotonic())."""

    def __init__(self, port: int, name: str, subscribe: str = "omnivox/#"):
        import threading

        import paho.mqtt.client as paho

        self.messages: list[tuple[str, bytes, float]] = []
        self.changed = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"raw-{name}",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        result, mid = self.client.subscribe(subscribe, qos=1)
        deadline = time.monotonic() + 10
        while not self.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the SUBACK

    def _on_message(self, client, userdata, message) -> None:
        with self.changed:
            self.messages.append((message.topic, bytes(message.payload), time.monotonic()))
            self.changed.notify_all()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def since(self, start: int, prefix: str = "") -> list[tuple[str, bytes, float]]:
        with self.changed:
            return [m for m in self.messages[start:] if m[0].startswith(prefix)]

    def mark(self) -> int:
        with self.changed:
            return len(self.messages)

    def wait_for(self, predicate, start: int = 0, timeout: float = 10.0):
        """The first message from index `start` on with predicate(topic, payload), or None after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for topic_name, payload, _ in self.messages[start:]:
                    if predicate(topic_name, payload):
                        return topic_name, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc_tables(path: Path, heading: str) -> list[dict[str, str]]:
    """The rows of the markdown tables under the headings of `path` that contain `heading` (case-insensitive), up
    to the next heading of the same or a higher level, as {column header (lower case): cell text}."""
    rows: list[dict[str, str]] = []
    level, header = None, None
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            depth = len(line) - len(line.lstrip("#"))
            if level is not None and depth <= level:
                level = None
            if level is None and heading.lower() in line.lower():
                level, header = depth, None
            continue
        if level is None:
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = [cell.lower() for cell in cells]
        elif not all(set(cell) <= set("-: ") for cell in cells):
            rows.append(dict(zip(header, cells, strict=False)))
    return rows


def backticked(text: str) -> list[str]:
    """The `code` spans of a markdown cell."""
    import re

    return re.findall(r"`([^`]+)`", text)


def documented_error_codes(path: Path) -> set[str]:
    """Every error code of `path`'s tables under an "Error codes" or "Errors" heading (the backticked names in the
    first column of the tables whose first column is headed "code")."""
    rows = doc_tables(path, "error codes") or doc_tables(path, "errors")
    codes = {code for row in rows if next(iter(row)) == "code" for code in backticked(next(iter(row.values())))}
    if not codes:
        raise AssertionError(f"{path} has no table of error codes (first column `code`) under a heading "
                             "'Error codes' or 'Errors'")
    return codes


def documented_bad_inputs(path: Path) -> dict[str, str]:
    """The table of kinds of bad input of `path` (under a heading with "bad input"): kind id -> error code, in the
    document's order (the first backticked name of the id column and of the code column)."""
    table = {}
    for row in doc_tables(path, "bad input"):
        ids, codes = backticked(row.get("id", "")), backticked(row.get("code", row.get("error", "")))
        if ids and codes:
            table[ids[0]] = codes[0]
    return table
