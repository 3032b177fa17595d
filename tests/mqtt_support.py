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
