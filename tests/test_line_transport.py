"""A new transport from one file (tests/line_transport.py: typed questions over TCP, one line each), registered
through the `register_transports` hook, is served by `omnivox serve` through the option it declares
(`--line-port`) and answers with the LM's text; `serve` itself names no transport."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import line_transport
import pytest

from omnivox.cli import serve
from omnivox.cli.main import main, parse_args
from omnivox.core.contracts.manager import get_plugin_manager, reset_plugin_manager
from omnivox.core.runtime.model_stages import LMStage

TESTS = Path(__file__).resolve().parent
QUESTION = "hello"  # the tiny random model (seed 0) answers it with decodable text within 24 steps


@pytest.fixture
def with_line_transport():
    """The default plugin manager with tests/line_transport.py registered as a plugin (forgotten after)."""
    reset_plugin_manager()
    get_plugin_manager().pm.register(line_transport, name="line_transport")
    yield
    reset_plugin_manager()


def test_a_transport_from_one_file_is_served_by_its_option_and_answers_with_the_lms_text(with_line_transport,
                                                                                         capsys):
    args = parse_args(["serve", "--line-port", "0", "--checkpoint", "random", "--max-steps", "24"])
    values = serve.settings(args)
    assert serve.transports(values) == ["line"]  # its option enables it alone: the default transport is not served
    pipeline = serve.build_pipeline(args, values, say=lambda line: None)
    assert [type(stage).__name__ for stage in pipeline.stages] == ["LineInput", "EncoderStage", "LMStage",
                                                                   "CodecStage", "LineOutput"]

    async def scenario():
        runner = asyncio.create_task(pipeline.run())
        try:
            await asyncio.wait_for(serve.announce_addresses(pipeline), 60)
            reader, writer = await asyncio.open_connection("127.0.0.1", pipeline.stages[0].service.port)
            writer.write(QUESTION.encode() + b"\n")
            reply = json.loads(await asyncio.wait_for(reader.readline(), 120))
            writer.close()
            return reply
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    reply = asyncio.run(scenario())
    port = pipeline.stages[0].service.port
    assert f"omnivox serve: line transport on 127.0.0.1:{port}\n" in capsys.readouterr().err
    lm = next(stage for stage in pipeline.stages if isinstance(stage, LMStage))
    said = lm.model.tokenizer.decode(lm.results[("line-1", 1)].text_ids)  # what the LM said in that turn
    assert reply["end"] == "done" and reply["text"]
    # the streamed text is the decoded answer (the LM stage holds back a tail of undecodable bytes)
    assert said.startswith(reply["text"]) and set(said[len(reply["text"]):]) <= {"\ufffd"}
    assert not pipeline.errors


def test_serve_help_shows_the_transports_options_and_other_commands_load_no_plugins(with_line_transport, capsys,
                                                                                    monkeypatch):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "--line-port PORT" in shown and "line_port" in shown  # the transport's option and its --config key
    monkeypatch.setattr(serve, "served_transports", lambda: pytest.fail("another command loaded the transports"))
    assert parse_args(["plugins", "--json"]).command == "plugins"


@pytest.mark.slow
def test_an_installed_transport_plugin_is_served_by_the_real_command(tmp_path):
    """The transport as a third-party plugin (entry point group `omnivox`), served by `omnivox serve --line-port`
    in a subprocess: announced, answering, stopped cleanly by SIGTERM."""
    dist = tmp_path / "site" / "omnivox_line-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: omnivox-line\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[omnivox]\nline_transport = line_transport\n")
    path = os.pathsep.join(filter(None, [str(tmp_path / "site"), str(TESTS), os.environ.get("PYTHONPATH")]))
    server = subprocess.Popen([sys.executable, "-m", "omnivox.cli.main", "serve", "--line-port", "0", "--checkpoint",
                               "random", "--max-steps", "24"], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"})
    try:
        lines: list[str] = []
        while not any("line transport on" in line for line in lines):
            line = server.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        port = int(re.search(r"line transport on 127\.0\.0\.1:(\d+)", lines[-1]).group(1))
        assert not any("worker" in line and "mqtt://" in line for line in lines)  # only the transport asked for
        with socket.create_connection(("127.0.0.1", port), timeout=120) as client:
            client.sendall(QUESTION.encode() + b"\n")
            reply = json.loads(client.makefile().readline())
        assert reply["end"] == "done" and reply["text"]
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
