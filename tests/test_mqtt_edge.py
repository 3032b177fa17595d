"""The MQTT edge against careless and hostile devices (issue 22), on a REAL mosquitto: declared formats and turn
ids within their documented ranges, `unknown-session` (rate-limited), exactly one `turn-end` per turn (reaped
turns too), `session-taken`, the per-site session quota, error replies rate-limited with a summary, a current
status count, a pool of two workers that leave each other's sessions alone, the device will (`omnivox ask`
killed), and the document's error-code table. Each row of its "Kinds of bad input" table is sent to a real
`omnivox serve` by tests/test_bad_input_catalogue.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import aiomqtt
import pytest
from mqtt_support import (
    DOCS,
    Mosquitto,
    doc_tables,
    documented_bad_inputs,
    documented_error_codes,
    running_service,
)

from omnivox.core.runtime.events import AudioStart
from omnivox.mqtt import Client
from omnivox.plugins.mqtt import protocol as wire

V1 = wire.encode_json


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield server
    server.kill()


class Raw:
    """A device written without omnivox's client (aiomqtt): publishes any payload, records every `out` message
    of `site` ("+": of every site) as ("<site>/<session>", event, JSON dict or bytes, arrival time). Sessions
    are named "<site>/<session>", or by the session alone for the device's own site."""

    def __init__(self, port: int, site: str):
        self.port, self.site = port, site
        self.messages: list[tuple[str, str, dict | bytes, float]] = []
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> Raw:
        self.client = aiomqtt.Client("127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5)
        await self.client.__aenter__()
        await self.client.subscribe(f"omnivox/{self.site}/+/out/+", qos=1)
        self._collector = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc) -> None:
        self._collector.cancel()
        await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for message in self.client.messages:
            address = wire.parse_topic(str(message.topic))
            payload = bytes(message.payload)
            data = payload if address.event in wire.BINARY_EVENTS else json.loads(payload)
            self.messages.append((address.session_id, address.event, data, time.monotonic()))
            self._arrived.set()

    def key(self, session: str) -> str:
        return session if "/" in session else f"{self.site}/{session}"

    async def send(self, session: str, event: str, payload: bytes | None = None, **fields) -> None:
        body = wire.encode_json(event, **fields) if payload is None else payload
        site, name = self.key(session).split("/", 1)
        await self.client.publish(wire.topic(site, name, "in", event), body, qos=1)

    async def wait(self, session: str, event: str, count: int = 1, timeout: float = 20.0, **match) -> list:
        """Wait until `session` got `count` `event` messages whose fields include `match`; their data."""
        deadline = time.monotonic() + timeout
        while True:
            found = [d for e, d in self.of(session) if e == event and all(d.get(k) == v for k, v in match.items())]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"{session}: no {count} x {event} {match} within {timeout} s: {self.of(session)}"
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def start(self, session: str, **fields) -> dict:
        await self.send(session, "session-start", **fields)
        return (await self.wait(session, "session-started"))[0]

    async def end(self, session: str) -> None:
        await self.send(session, "session-end")
        await self.wait(session, "session-ended")

    def of(self, session: str) -> list[tuple[str, dict | bytes]]:
        key = self.key(session)
        return [(e, d) for s, e, d, _ in self.messages if s == key]

    def codes(self, session: str) -> list[str]:
        return [d["code"] for e, d in self.of(session) if e == "error"]

    def ends(self, session: str) -> list[tuple[int, str]]:
        return [(d["turn"], d["reason"]) for e, d in self.of(session) if e == "turn-end"]


def _pcm_f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_formats_turn_ids_and_empty_input_get_named_errors_before_any_work(broker):
    """Defects 1, 2 and 9: the 16000048000 Hz turn is refused at audio-start (nothing reaches the pipeline);
    turn ids beyond uint32, an empty payload, a turn without audio, NaN samples: each its named error, one
    turn-end per turn id; a good session meanwhile answers, audio-stop before metrics before turn-end."""
    bad = [  # (session, messages, expected error codes, expected turn-ends)
        ("huge-rate", [("audio-start", V1("audio-start", turn=0, rate=16000048000)),
                       ("audio-chunk", wire.encode_audio(0, 0, b"\0" * 3200)),
                       ("audio-stop", V1("audio-stop", turn=0))],
         ["bad-format", "audio-without-start", "audio-without-start"], [(0, "error")]),
        ("formats", [("audio-start", V1("audio-start", turn=0, rate=16000, width=3)),
                     ("audio-start", V1("audio-start", turn=1, rate=16000, channels=3)),
                     ("audio-start", V1("audio-start", turn=2, rate=7999)),
                     ("audio-start", V1("audio-start", turn=3, rate=48001)),
                     ("audio-start", V1("audio-start", turn=4, rate="16000"))],
         ["bad-format"] * 4 + ["bad-field"], [(0, "error"), (1, "error"), (2, "error"), (3, "error"), (4, "error")]),
        ("turn-ids", [("audio-start", V1("audio-start", turn=2**32, rate=16000)),
                      ("text", V1("text", turn=7, text="x" * 3000)),  # refused: turn 7 is used up
                      ("text", V1("text", turn=7, text="again")),  # so this one may not end turn 7 again
                      ("text", V1("text", turn=1.5, text="hi"))],
         ["bad-turn", "text-too-long", "bad-turn", "bad-turn"], [(7, "error")]),
        ("empty", [("text", b""), ("audio-start", V1("audio-start", turn=0, rate=16000)),
                   ("audio-stop", V1("audio-stop", turn=0)), ("text", b"{" + b" " * 40_000 + b"}")],
         ["bad-json", "empty-turn", "payload-too-large"], [(0, "error")]),
        ("nan", [("audio-start", V1("audio-start", turn=0, rate=16000, width=4)),
                 ("audio-chunk", wire.encode_audio(0, 0, _pcm_f32(0.1, float("nan"))))],
         ["bad-samples"], [(0, "error")]),
    ]

    async def scenario():
        async with running_service(broker.url, max_steps=16) as (pipeline, service):
            fed = []
            feed = service.feed
            service.feed = lambda event: (fed.append(event), feed(event))[1]
            async with Raw(broker.port, "edge") as raw, Client(broker.url, site="polite") as polite:
                session = await polite.session()
                good = asyncio.create_task(session.ask(pcm=b"\1\0" * 8000, rate=16000))
                for name, messages, codes, _ in bad:
                    await raw.start(name)
                    sent = time.monotonic()
                    for event, payload in messages:
                        await raw.send(name, event, payload)
                    await raw.wait(name, "error", len(codes))
                    if name == "huge-rate":
                        refused_s = raw.messages[-1][3] - sent
                    await raw.send(name, "session-end")
                    await raw.wait(name, "session-ended")
                answer = await good
            await asyncio.sleep(0.5)  # anything late would arrive now
            return raw, answer, fed, refused_s

    raw, answer, fed, refused_s = asyncio.run(scenario())
    for name, _, codes, ends in bad:
        assert raw.codes(name) == codes, (name, raw.of(name))
        assert raw.ends(name) == ends, (name, raw.of(name))
        errors = [d for e, d in raw.of(name) if e == "error"]
        assert all(e["message"] and e["fix"] and "Error" not in e["message"] + e["fix"] for e in errors), errors
    assert refused_s < 2.0
    assert not [e for e in fed if isinstance(e, AudioStart) and e.session_id == "edge/huge-rate"]
    assert answer.ok, answer.errors
    events = [r.event for r in answer.replies]
    assert events.index("audio-stop") < events.index("metrics") < events.index("turn-end") == len(events) - 1


def test_unknown_session_for_never_started_ended_and_reaped_sessions_and_errors_are_rate_limited(broker, caplog):
    """Defects 3 and 8: `unknown-session` for a never-started, an ended and a reaped session; a flood of 2,000
    bad messages gets the burst of error replies, then max_errors_per_s, the rest counted by `errors-suppressed`
    summaries (at most one per tick) until it is muted (the broker drops the rest); no "pending publish calls"
    warning is logged."""
    caplog.set_level("INFO")
    limits = {"session_idle_s": 2.0, "max_errors_per_s": 5, "mute_s": 0.5}

    async def scenario():
        async with running_service(broker.url, max_steps=8, limits=limits), Raw(broker.port, "lost") as raw:
            await raw.send("never", "text", turn=0, text="hello?")
            await raw.start("ended")
            await raw.send("ended", "session-end")
            await raw.wait("ended", "session-ended")
            await raw.send("ended", "interrupt")
            await raw.start("reaped")
            await raw.wait("reaped", "session-ended", reason="idle", timeout=10)
            await raw.send("reaped", "audio-start", turn=0, rate=16000)
            for name in ("never", "ended", "reaped"):
                await raw.wait(name, "error", code="unknown-session")
            await asyncio.sleep(2.0)  # the error budget refills
            await raw.start("flood")
            started = time.monotonic()
            for _ in range(2000):
                await raw.send("flood", "text", b"{not json")
            took = time.monotonic() - started
            await asyncio.sleep(1.2)  # over the message rate: the session was muted (mute_s)
            await raw.send("flood", "text", turn=0, text="and a real question")
            await raw.wait("flood", "turn-end", turn=0, timeout=60)
            await asyncio.sleep(1.5)  # the last summary
            return raw, took

    raw, took = asyncio.run(scenario())
    for name in ("never", "ended", "reaped"):
        assert raw.codes(name) == ["unknown-session"], (name, raw.of(name))
    codes = raw.codes("flood")
    replies = codes.count("bad-json") + codes.count("rate-limited")  # over 200 messages/s: rate-limited
    summaries = [d for e, d in raw.of("flood") if e == "error" and d["code"] == "errors-suppressed"]
    assert 10 <= replies <= 10 + 5 * took + 1, (replies, took)  # the burst, then 5 per second
    assert 1 <= len(summaries) <= took / 0.5 + 4 and summaries[0]["message"] and summaries[0]["fix"]
    suppressed = sum(d["suppressed"].get(code, 0) for d in summaries for code in ("bad-json", "rate-limited"))
    # the flood muted the session: the broker dropped what came during the mute, the rest was counted once
    assert "muted" in codes and 400 <= replies + suppressed < 2000, (Counter(codes), summaries)
    assert raw.ends("flood") == [(0, "done")], raw.of("flood")[-3:]
    assert not [r for r in caplog.records if "pending publish" in r.getMessage()]


def test_a_flooding_session_is_muted_so_the_broker_drops_its_flood(broker):
    """Issue 22's worst input (a flood of tiny chunks): over max_messages_per_s the session is muted for mute_s.
    Its receiving turn ends (error), the broker stops delivering what it sends but audio-stop, interrupt and
    session-end (the worker reads a handful of 2,000 chunks and a question), another site is answered, and after
    mute_s the session is answered again. The Python client ends a question asked during the mute itself."""
    limits = {"max_messages_per_s": 50, "mute_s": 3.0}

    async def scenario():
        async with running_service(broker.url, max_steps=8, limits=limits) as (_, service), \
                Raw(broker.port, "noisy") as raw, Client(broker.url, site="calm") as calm_client, \
                Client(broker.url, site="eager") as eager_client:
            await raw.start("flood")
            await raw.send("flood", "audio-start", turn=0, rate=16000)
            chunk_topic = wire.topic("noisy", "flood", "in", "audio-chunk")
            for seq in range(150):  # over the burst (2 s x 50)
                await raw.client.publish(chunk_topic, wire.encode_audio(0, seq, b"\0\1" * 8), qos=0)
            muted = (await raw.wait("flood", "error", code="muted"))[0]
            await raw.wait("flood", "turn-end", turn=0)
            await asyncio.sleep(0.5)  # the subscription swap is done
            read_before = service.messages_read
            for seq in range(150, 2150):
                await raw.client.publish(chunk_topic, wire.encode_audio(0, seq, b"\0\1" * 8), qos=0)
            await raw.send("flood", "text", turn=1, text="are you there?")
            calm = await (await calm_client.session()).ask(text="hello")
            read = service.messages_read - read_before
            eager = await eager_client.session()  # the Python client, over the rate, then asking while muted
            spoken = await eager.start_turn(16000)
            for _ in range(150):
                await spoken.send(b"\0\1" * 8)
            flooded = await spoken.result(timeout=20)
            during = await eager.ask(text="and now?", timeout=5)
            await asyncio.sleep(3.0)  # mute_s is over
            await raw.send("flood", "text", turn=2, text="and now?")
            await raw.wait("flood", "turn-end", turn=2, timeout=60)
            await asyncio.sleep(eager.muted_until - asyncio.get_running_loop().time())  # its mute is over too
            after = await eager.ask(text="and now?")
            return muted, read, calm, raw, flooded, during, after

    muted, read, calm, raw, flooded, during, after = asyncio.run(scenario())
    assert muted["turn"] == 0 and muted["seconds"] == 3.0 and "3 s" in muted["fix"]
    assert read <= 10, f"the worker read {read} messages of a muted session's 2,000 chunks and 1 question"
    assert raw.ends("flood") == [(0, "error"), (2, "done")]  # turn 1, asked while muted, was dropped
    assert calm.ok, calm.errors
    assert flooded.reason == "error" and "muted" in [e["code"] for e in flooded.errors]
    assert during.reason == "error" and [e["code"] for e in during.errors] == ["muted"]  # ended by the client
    assert after.ok, after.errors


def test_every_turn_ends_once_and_reaped_or_ended_turns_end_before_session_ended(broker):
    """Defect 4: a device that opens a turn and goes silent gets `turn-end` (idle) then `session-ended` (idle);
    a session ended during an answer gets `turn-end` (interrupted) then `session-ended`, and nothing after."""
    async def scenario():
        async with running_service(broker.url, max_steps=400, limits={"session_idle_s": 1.0}), \
                Raw(broker.port, "quiet") as raw:
            await raw.start("silent")
            await raw.send("silent", "audio-start", turn=0, rate=16000)
            await raw.send("silent", "audio-chunk", wire.encode_audio(0, 0, b"\0\0" * 1600))
            await raw.wait("silent", "session-ended", timeout=10)
            await raw.start("busy")
            await raw.send("busy", "text", turn=0, text="a long answer please")
            await raw.wait("busy", "transcript-chunk")
            await raw.send("busy", "session-end")
            await raw.wait("busy", "session-ended")
            await asyncio.sleep(1.0)
            return raw

    raw = asyncio.run(scenario())
    assert raw.ends("silent") == [(0, "idle")]
    assert [e for e, _ in raw.of("silent")][-2:] == ["turn-end", "session-ended"]
    assert raw.of("silent")[-1][1]["reason"] == "idle"
    assert raw.ends("busy") == [(0, "interrupted")]
    assert [e for e, _ in raw.of("busy")][-2:] == ["turn-end", "session-ended"]  # nothing after session-ended


def test_a_held_session_is_not_taken_by_another_client_and_a_site_has_a_session_quota(broker):
    """Defects 5 and 7: another client's (or an anonymous) session-start on a held session gets `session-taken`
    and the owner goes on undisturbed; its own client starting it again gets `session-started`. A site holds
    at most max_sessions_per_site sessions, however fast it asks; other sites still get theirs."""
    limits = {"max_sessions_per_site": 3, "max_sessions": 10}

    async def scenario():
        async with running_service(broker.url, max_steps=16, limits=limits) as (pipeline, service), \
                Client(broker.url, site="home") as owner, Raw(broker.port, "home") as raw:
            session = await owner.session()
            turn = await session.send_text("hello")
            await raw.send(session.name, "session-start", client="intruder")
            await raw.send(session.name, "session-start")  # anonymous
            await raw.send(session.name, "session-start", client=owner.client_id)
            await raw.wait(session.name, "error", 2, code="session-taken")
            await raw.wait(session.name, "session-started", 2)
            first = await turn.result(30)
            second = await session.ask(text="still mine?")
            for i in range(200):  # a burst of starts from one site
                await raw.send(f"greedy{i}", "session-start")
            await raw.wait("greedy199", "error")
            held = sorted(s for s in service.engine.sessions if s.startswith("home/"))
            async with Client(broker.url, site="other") as other:
                other_answer = await (await other.session()).ask(text="my turn")
            return raw, session, first, second, held, other_answer

    raw, session, first, second, held, other_answer = asyncio.run(scenario())
    assert first.ok and second.ok and not session.errors and not first.errors
    assert len(held) == 3  # the owner's session and two of the burst
    refused = {code for i in range(200) for code in raw.codes(f"greedy{i}")}
    assert "too-many-site-sessions" in refused and refused <= {"too-many-site-sessions", "errors-suppressed"}
    assert other_answer.ok


def test_the_status_session_count_follows_the_sessions_debounced(broker):
    """Defect 6: the retained status's `sessions` is current within a second, without one status per change."""
    async def scenario():
        async with running_service(broker.url, max_steps=8, worker="counted") as (pipeline, service), \
                aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as watcher:
            statuses = []

            async def watch():
                async for message in watcher.messages:
                    statuses.append(json.loads(bytes(message.payload))["sessions"])

            await watcher.subscribe(wire.status_topic("counted"), qos=1)
            task = asyncio.create_task(watch())
            async with Client(broker.url, site="counter") as client:
                sessions = [await client.session() for _ in range(6)]
                await asyncio.sleep(1.5)
                opened = list(statuses)
                for session in sessions:
                    await session.close()
                await asyncio.sleep(1.5)
            task.cancel()
            return opened, statuses

    opened, statuses = asyncio.run(scenario())
    assert opened[-1] == 6 and statuses[-1] == 0, statuses
    assert len(statuses) <= 1 + 2 * 4, statuses  # the retained one, then at most one per 0.5 s tick


def test_two_workers_leave_each_others_sessions_alone(broker):
    """A pool: a start for a session held by one worker is answered by that worker only (`session-taken`), the
    other never claims it; a message to a never-started session gets exactly one `unknown-session`."""
    async def scenario():
        async with running_service(broker.url, max_steps=8, worker="wa", group="pair") as (_, wa), \
                running_service(broker.url, max_steps=8, worker="wb", group="pair") as (_, wb), \
                Raw(broker.port, "duo") as raw, Client(broker.url, site="duo") as owner:
            sessions = [await owner.session() for _ in range(4)]
            for session in sessions:
                for _ in range(3):
                    await raw.send(session.name, "session-start", client="intruder")
            answers = [await session.ask(text="still mine?") for session in sessions]
            for i in range(6):
                await raw.send(f"nobody{i}", "interrupt")
            await raw.wait("nobody5", "error")
            await asyncio.sleep(1.0)
            held = {"wa": set(wa.engine.sessions), "wb": set(wb.engine.sessions)}
            return raw, sessions, held, answers

    raw, sessions, held, answers = asyncio.run(scenario())
    assert not held["wa"] & held["wb"]  # never claimed twice
    assert all(a.ok and a.worker == s.worker for a, s in zip(answers, sessions, strict=True))
    for session in sessions:
        assert raw.codes(session.name) == ["session-taken"] * 3, raw.of(session.name)  # from the owner only
        assert [e for e, _ in raw.of(session.name)].count("session-started") == 1
    for i in range(6):
        assert raw.codes(f"nobody{i}") == ["unknown-session"], raw.of(f"nobody{i}")
    print(f"sessions per worker: {[s.worker for s in sessions]}")


def test_a_killed_omnivox_ask_frees_its_session_at_once_through_its_will(broker):
    """The device will: `omnivox ask` (the Python client) SIGKILLed mid-answer; its session is freed by the will
    (turn-end client-gone, then session-ended client-gone) long before session_idle_s (60 s)."""
    async def scenario():
        async with running_service(broker.url, max_steps=2000) as (pipeline, service), \
                Raw(broker.port, "doomed") as raw:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "omnivox.cli.main", "ask", "--broker", broker.url, "--site", "doomed",
                "--text", "tell me everything", "--quiet", stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
            try:
                deadline = time.monotonic() + 120
                while not any(s.site == "doomed" and s.open_turns for s in service.engine.sessions.values()):
                    assert time.monotonic() < deadline and process.returncode is None, "ask never got going"
                    await asyncio.sleep(0.02)
                process.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                while any(s.site == "doomed" for s in service.engine.sessions.values()):
                    assert time.monotonic() - killed < 10, "the session outlived its device"
                    await asyncio.sleep(0.01)
                freed_s = time.monotonic() - killed
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
            name = next(s for s, *_ in raw.messages)
            await raw.wait(name, "session-ended")
            return raw, name, freed_s

    raw, name, freed_s = asyncio.run(scenario())
    assert freed_s < 2.0, f"freed {freed_s:.2f} s after the kill"
    assert raw.ends(name) == [(0, "client-gone")]
    ended = [d for e, d in raw.of(name) if e == "session-ended"]
    assert [e for e, _ in raw.of(name)][-2:] == ["turn-end", "session-ended"] and ended[0]["reason"] == "client-gone"
    print(f"killed device -> session freed in {freed_s * 1000:.0f} ms")


def test_the_document_lists_every_error_code_with_its_cause_and_fix():
    """docs/mqtt_protocol.md: every code the worker can send is in its error-code table, with a cause and a fix;
    every kind of bad input names a code of that table."""
    root = Path(__file__).resolve().parents[1]
    source = "".join((root / path).read_text() for path in ("core/runtime/sessions.py", "plugins/mqtt/protocol.py",
                                                            "plugins/mqtt/service.py", "plugins/mqtt/stages.py"))
    sent = set(re.findall(r'ProtocolError\(\s*"([a-z-]+)"', source)) | set(re.findall(r'code="([a-z-]+)"', source))
    sent |= {"bad-site", "bad-session"}  # check_name's f"bad-{kind}" (bad-worker, bad-group: serve's settings)
    documented = documented_error_codes(DOCS / "mqtt_protocol.md")
    assert sent - {"bad-topic"} <= documented, f"sent but not documented: {sent - documented}"
    for row in doc_tables(DOCS / "mqtt_protocol.md", "error codes"):
        assert all(row.values()), f"an error code without its cause or fix: {row}"
    kinds = documented_bad_inputs(DOCS / "mqtt_protocol.md")
    assert len(kinds) >= 46 and set(kinds.values()) <= documented
