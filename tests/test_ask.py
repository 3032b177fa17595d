"""`omnivox ask`'s wiring to the omnivox.mqtt client, with a fake client (no broker): --context reaches the session,
the worker's actions are printed one line each among the live text, action warnings go to stderr, and --text-out
stays the plain answer. tests/test_mqtt_service.py runs the command against a real broker and worker."""

from __future__ import annotations

import pytest

from omnivox.cli.main import main
from omnivox.plugins.mqtt.client import Answer, Reply

ACTION = {"turn": 0, "index": 0, "name": "light", "arguments": {"room": "kitchen", "on": True}, "step": 3}
REPLIES = [Reply("transcript-chunk", {"text": "turning on", "token": 1}), Reply("action", ACTION),
           Reply("transcript-chunk", {"text": " the light", "token": 2}),
           Reply("action-warning", {"turn": 0, "code": "unknown-action", "message": "no action 'fly'"}),
           Reply("turn-end", {"reason": "done", "worker": "w1"})]


class FakeTurn:
    def __aiter__(self):
        return self._replies()

    async def _replies(self):
        for reply in REPLIES:
            yield reply

    async def result(self, timeout):
        return Answer(turn=0, text="turning on the light", reason="done", actions=[ACTION], worker="w1")


class FakeSession:
    async def send_text(self, text):
        return FakeTurn()

    async def close(self):
        pass


class FakeClient:
    sessions: list[dict] = []

    def __init__(self, broker, **options):
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        pass

    async def wait_for_worker(self, timeout):
        return {}

    async def session(self, **options):
        FakeClient.sessions.append(options)
        return FakeSession()


@pytest.fixture
def fake_client(monkeypatch):
    import omnivox.mqtt

    FakeClient.sessions = []
    monkeypatch.setattr(omnivox.mqtt, "Client", FakeClient)
    return FakeClient


def test_ask_sends_the_context_and_prints_each_action_on_its_own_line(fake_client, capsys, tmp_path):
    text_out = tmp_path / "answer.txt"
    assert main(["ask", "--text", "light please", "--context", "battery forty percent",
                 "--text-out", str(text_out)]) == 0
    out, err = capsys.readouterr()
    assert fake_client.sessions == [{"context": "battery forty percent"}]
    assert out.splitlines() == ["turning on", 'action light {"room": "kitchen", "on": true}', " the light"]
    assert "omnivox ask: warning: action dropped (unknown-action): no action 'fly'" in err
    assert text_out.read_text() == "turning on the light\n"  # the plain answer, no action lines


def test_ask_quiet_prints_only_the_actions_and_no_context_sends_none(fake_client, capsys):
    assert main(["ask", "--text", "light please", "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert fake_client.sessions == [{"context": None}]
    assert out == 'action light {"room": "kitchen", "on": true}\n'
