"""`omnivox serve --http`: the options (`--broker` optional with `--http`; both = one pipeline, one model; HTTPS,
token and timeout, checked before a model loads), the real command serving upstream Mini-Omni's request and an
MQTT device at once, and serving HTTPS with a token from the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from http_support import question_b64, self_signed
from mqtt_support import Mosquitto, free_port, write_question

from omnivox.cli import serve
from omnivox.cli.main import parse_args
from omnivox.core.errors import ConfigError

pytest.importorskip("aiohttp")


def values_of(*argv: str) -> dict:
    return serve.settings(parse_args(["serve", *argv]))


def test_http_makes_the_broker_optional_and_both_serve_one_pipeline():
    from omnivox.plugins.http.stages import HttpAudioInput
    from omnivox.plugins.mqtt.stages import MqttAudioInput

    assert serve.transports(values_of()) == ["mqtt"]  # unchanged: MQTT on the default broker
    assert serve.transports(values_of("--http", "60808")) == ["http"]
    assert serve.transports(values_of("--http", "0.0.0.0:8080", "--broker", "mqtt://b:1883")) == ["mqtt", "http"]
    http = serve.served_transports()["http"]  # the transport registered by the http plugin
    assert http.serve.params(values_of("--http", "0.0.0.0:8080")) == {"host": "0.0.0.0", "port": 8080}
    args = parse_args(["serve", "--http", "0", "--broker", "mqtt://127.0.0.1:1", "--checkpoint",
                                      "random"])
    pipeline = serve.build_pipeline(args, serve.settings(args), say=lambda line: None)
    kinds = [type(stage).__name__ for stage in pipeline.stages]
    assert kinds.count("LMStage") == 1 and isinstance(pipeline.stages[0], MqttAudioInput)
    assert isinstance(pipeline.stages[1], HttpAudioInput)
    assert pipeline.inputs["http_out"] == pipeline.inputs["mqtt_out"] == ["codec"]


@pytest.mark.parametrize("address", ["localhost:", "host:99999", "port"])
def test_a_bad_http_address_is_a_config_error_naming_the_form(address):
    with pytest.raises(ConfigError) as error:
        values_of("--http", address)
    assert "[HOST:]PORT" in error.value.problem and "--http 60808" in error.value.fix


def test_https_token_and_timeout_options_reach_the_stage_and_mqtts_tls_options_stay_its_own(tmp_path, monkeypatch):
    cert = self_signed(tmp_path)
    http = serve.served_transports()["http"]
    values = values_of("--http", "0.0.0.0:8443", "--http-tls-cert", str(cert.cert), "--http-tls-key", str(cert.key),
                       "--http-token", "s3cret", "--http-timeout", "30")
    assert http.serve.params(values) == {"host": "0.0.0.0", "port": 8443, "tls_cert": str(cert.cert),
                                         "tls_key": str(cert.key), "token": "s3cret", "request_timeout_s": 30.0}
    mqtt_tls = values_of("--http", "8443", "--broker", "mqtts://b:8883", "--tls-cert", str(cert.cert), "--tls-key",
                         str(cert.key))
    assert http.serve.params(mqtt_tls) == {"host": "127.0.0.1", "port": 8443}  # the MQTT client's, not HTTPS
    assert http.serve.params(values_of("--http", "8443", "--token", "short"))["token"] == "short"  # issue 22's name
    monkeypatch.setenv("OMNIVOX_HTTP_TOKEN", "from-env")
    assert http.serve.params(values_of("--http", "8443"))["token"] == "from-env"
    yaml = tmp_path / "serve.yaml"
    yaml.write_text(f"http: 8443\nhttp_tls_cert: {cert.cert}\nhttp_tls_key: {cert.key}\nhttp_timeout: 5\n")
    params = http.serve.params(values_of("--config", str(yaml)))
    assert (params["tls_cert"], params["request_timeout_s"], params["token"]) == (str(cert.cert), 5, "from-env")


@pytest.mark.parametrize("argv, problem", [
    (["--http-tls-cert", "{cert}"], "the certificate was given without the key"),
    (["--http-tls-key", "{key}"], "the key was given without the certificate"),
    (["--http-tls-cert", "{missing}", "--http-tls-key", "{key}"], "cannot load the HTTPS certificate"),
    (["--http-tls-cert", "{key}", "--http-tls-key", "{key}"], "cannot load the HTTPS certificate"),
    (["--http-token", "two words"], "visible ASCII characters without spaces"),
    (["--http-token", ""], "visible ASCII characters without spaces"),
    (["--http-timeout", "0"], "positive number of seconds"),
])
def test_bad_https_token_or_timeout_options_are_config_errors_before_a_model_loads(tmp_path, argv, problem):
    cert = self_signed(tmp_path)
    files = {"cert": cert.cert, "key": cert.key, "missing": tmp_path / "missing.pem"}
    with pytest.raises(ConfigError) as error:
        values_of("--http", "8443", *[arg.format(**files) for arg in argv])
    assert problem in error.value.problem and error.value.fix


@pytest.mark.slow
def test_serve_https_with_a_token_from_the_environment(tmp_path):
    cert = self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMNIVOX_HTTP_TOKEN": "env-token"}
    server = subprocess.Popen([sys.executable, "-m", "omnivox.cli.main", "serve", "--http", f"127.0.0.1:{port}",
                               "--http-tls-cert", str(cert.cert), "--http-tls-key", str(cert.key), "--max-steps", "24",
                               "--checkpoint", "random"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = announced(server, "HTTP on")
        assert any(f"HTTP on https://127.0.0.1:{port}" in line and "bearer token required" in line
                   for line in lines), "".join(lines)
        url, body = f"https://127.0.0.1:{port}", {"audio": question_b64(tmp_path)}
        refused = requests.post(f"{url}/chat", json=body, verify=str(cert.cert), timeout=60)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "token-required"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        answer = requests.post(f"{url}/chat", json=body, verify=str(cert.cert), timeout=60,
                               headers={"Authorization": "Bearer env-token"})
        assert answer.status_code == 200 and answer.content[:4] == b"RIFF" and len(answer.content) > 44
        assert requests.get(f"{url}/", verify=str(cert.cert), timeout=10).text.startswith("<!doctype html>")
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()


def announced(server: subprocess.Popen, what: str, timeout: float = 120) -> list[str]:
    """serve's stderr lines up to the one announcing `what`."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while not any(what in line for line in lines) and time.monotonic() < deadline:
        line = server.stderr.readline()
        assert line or server.poll() is None, "".join(lines)
        lines.append(line)
    return lines


@pytest.mark.slow
def test_serve_http_and_mqtt_at_once_answers_both(tmp_path):
    broker = Mosquitto(tmp_path).start()
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "omnivox.cli.main", "serve", "--http", f"127.0.0.1:{port}",
                               "--broker", broker.url, "--max-steps", "24", "--checkpoint", "random"],
                              stderr=subprocess.PIPE, text=True,
                              env=env)
    try:
        lines = announced(server, "HTTP on")
        assert any(f"HTTP on http://127.0.0.1:{port}" in line for line in lines), "".join(lines)
        assert any(f"on {broker.url}" in line for line in lines), "".join(lines)
        answer = requests.post(f"http://127.0.0.1:{port}/chat", json={"audio": question_b64(tmp_path)}, timeout=60)
        assert answer.status_code == 200 and answer.content[:4] == b"RIFF" and len(answer.content) > 44
        ask = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "ask", "--broker", broker.url, "--site",
                              "cli", "--input", str(write_question(tmp_path / "q.wav")), "--output",
                              str(tmp_path / "a.wav")], capture_output=True, text=True, timeout=120)
        assert ask.returncode == 0 and "turn done" in ask.stderr, ask.stderr
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text.startswith("<!doctype html>")
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        broker.kill()


def test_serve_pipeline_file_gets_the_http_address(tmp_path):
    shipped = Path(__file__).resolve().parents[1] / "recipes" / "pipelines" / "http_demo.yaml"
    recipe = tmp_path / "http_demo.yaml"  # on the tiny random kit: no trained weights needed
    recipe.write_text(shipped.read_text().replace("checkpoint: demo", "checkpoint: random"))
    args = parse_args(["serve", "--http", "0.0.0.0:8081", "--pipeline", str(recipe)])
    pipeline = serve.build_pipeline(args, serve.settings(args), say=lambda line: None)
    assert (pipeline.stages[0].config.host, pipeline.stages[0].config.port) == ("0.0.0.0", 8081)
    assert type(pipeline.stages[-1]).__name__ == "HttpAudioOutput"
    mqtt_recipe = shipped.with_name("mqtt_demo.yaml")
    args = parse_args(["serve", "--http", "8081", "--pipeline", str(mqtt_recipe)])
    with pytest.raises(ConfigError, match="starts with audio_inputs/http"):
        serve.build_pipeline(args, serve.settings(args), say=lambda line: None)


@pytest.mark.slow
def test_a_real_install_carries_the_page(tmp_path):
    """package-data: a non-editable install has page/index.html and page/app.js next to the server."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(tmp_path / "site"), str(root)], check=True, capture_output=True)
    page = tmp_path / "site" / "omnivox" / "plugins" / "http" / "page"
    for name in ("index.html", "app.js"):
        assert (page / name).read_bytes() == (root / "plugins" / "http" / "page" / name).read_bytes()
