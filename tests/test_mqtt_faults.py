"""The MQTT service under faults, on a REAL mosquitto: broker restarts between and during turns, two `omnivox
serve` worker processes on one shared subscription with one SIGKILLed mid-session, password + ACL auth;
the soak (8 devices, 100 turns each, RSS within 5%) is tests/test_soak.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiomqtt
import pytest
import yaml
from mqtt_support import TINY_SNAC, Mosquitto, running_service, tiny_service_stages

from omnivox.core.runtime.pipeline import Pipeline
from omnivox.mqtt import Client, ServiceError
from omnivox.plugins.mqtt import protocol as wire

WORKER_DEATH_BOUND_S = 3.0  # docs/mqtt_protocol.md: a killed worker's sessions get an error within this


def test_broker_restart_between_turns_and_during_a_turn(tmp_path):
    broker = Mosquitto(tmp_path).start()

    async def scenario():
        async with running_service(broker.url, max_steps=100) as (pipeline, service), \
                Client(broker.url, site="yard") as client:
            session = await client.session()
            first = await session.ask(text="hello")
            broker.kill()  # between two turns
            await asyncio.sleep(0.5)
            broker.start()
            second = await session.ask(text="are you there?", timeout=60)

            turn = await session.send_text("a long answer please")
            async for reply in turn:
                if reply.event == "transcript-chunk":
                    break
            broker.kill()  # during a turn
            cut = await turn.result(timeout=20)
            broker.start()
            third = await session.ask(text="and now?", timeout=60)
            return first, second, cut, third, service.connections

    try:
        first, second, cut, third, connections = asyncio.run(scenario())
    finally:
        broker.kill()
    assert first.ok and second.ok and third.ok
    assert cut.reason == "error" and [e["code"] for e in cut.errors] == ["connection-lost"]
    assert connections == 3  # the service reconnected after each restart


def _serve_pipeline(folder, max_steps: int = 32):
    """A tiny pipeline file for `omnivox serve --pipeline` (tiny whisper, tiny random LM, tiny SNAC)."""
    config = {"stages": [
        {"name": "input", "plugin": "audio_inputs/mqtt"},
        {"name": "encoder", "plugin": "encoders/whisper",
         "params": {"dims": {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2,
                             "n_audio_layer": 2}}},
        {"name": "lm", "plugin": "lm/omni",
         "params": {"checkpoint": "tiny-random", "strategy": "text-delay", "task": "A1A2", "max_steps": max_steps}},
        {"name": "codec", "plugin": "codecs/snac", "params": {"config": TINY_SNAC, "seed": 0}},
        {"name": "output", "plugin": "audio_outputs/mqtt"},
    ]}
    path = folder / "serve_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_worker(broker, pipeline, worker, folder):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "omnivox.cli.main", "serve", "--broker", broker.url,
                             "--pipeline", str(pipeline), "--worker", worker, "--group", "pool"],
                            stdout=subprocess.DEVNULL, stderr=open(folder / f"{worker}.log", "wb"), env=env)


async def _wait_online(broker, workers, timeout=90.0):
    states = {}
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as raw:
        await raw.subscribe(wire.status_topic("+"), qos=1)
        deadline = time.monotonic() + timeout
        async for message in raw.messages:
            data = wire.decode_json(bytes(message.payload), "status")
            states[data["worker"]] = data["state"]
            if all(states.get(w) == "online" for w in workers) or time.monotonic() > deadline:
                break
    return states


@pytest.mark.slow
def test_two_workers_share_sessions_and_a_killed_workers_sessions_fail_fast(tmp_path):
    broker = Mosquitto(tmp_path).start()
    pipeline = _serve_pipeline(tmp_path)
    workers = {name: _start_worker(broker, pipeline, name, tmp_path) for name in ("wa", "wb")}

    async def scenario():
        states = await _wait_online(broker, workers)
        assert all(states.get(w) == "online" for w in workers), (states, _logs(tmp_path))

        async def device(i):
            async with Client(broker.url, site=f"bot{i}") as client:
                session = await client.session()
                answers = [await session.ask(text=f"hello {i}"), await session.ask(text="again")]
                return session.worker, answers

        shared = await asyncio.gather(*(device(i) for i in range(8)))

        # one device with a session on each worker, mid-turn on wa (audio still streaming in)
        async with Client(broker.url, site="victim") as client:
            sessions = [await client.session() for _ in range(6)]
            on_a = next(s for s in sessions if s.worker == "wa")
            on_b = next(s for s in sessions if s.worker == "wb")
            turn = await on_a.start_turn(rate=16000)
            await turn.send(b"\0\0" * 1600)
            killed = time.monotonic()
            workers["wa"].send_signal(signal.SIGKILL)
            cut = await turn.result(timeout=30)
            took = (cut.ended_at or time.monotonic()) - killed
            survivor = await on_b.ask(text="still there?")
            with pytest.raises(ServiceError):
                await on_a.ask(text="hello?")
            fresh = [await client.session() for _ in range(4)]
            after = [(s.worker, await s.ask(text="new session")) for s in fresh]
        return shared, cut, took, survivor, after

    try:
        shared, cut, took, survivor, after = asyncio.run(scenario())
    finally:
        for process in workers.values():
            process.kill()
            process.wait()
        broker.kill()
    assert {worker for worker, _ in shared} == {"wa", "wb"}  # both workers took sessions
    for worker, answers in shared:
        assert all(a.ok and a.worker == worker for a in answers)  # every turn answered by the session's worker
    assert [e["code"] for e in cut.errors] == ["worker-offline"] and cut.reason == "error"
    assert took < WORKER_DEATH_BOUND_S, f"the killed worker's session got its error after {took:.2f} s"
    print(f"killed worker -> worker-offline at the device: {took:.2f} s")
    assert survivor.ok and survivor.worker == "wb"
    assert all(worker == "wb" and answer.ok and answer.worker == "wb" for worker, answer in after)


def _logs(folder):
    return {p.name: p.read_text()[-2000:] for p in folder.glob("*.log")}


def test_password_file_and_acl_confine_each_device_to_its_site(tmp_path):
    users = {"service": "s3rvice", "kitchen": "k1tchen", "garage": "g4rage"}
    acl = "\n".join([
        "user service", "topic readwrite omnivox/#",
        "", "# every device (user name = site) only in its own site's topics, and may read worker status",
        "pattern write omnivox/%u/+/in/#", "pattern read omnivox/%u/+/out/#", "pattern read omnivox/workers/+/status",
    ]) + "\n"
    broker = Mosquitto(tmp_path, users=users, acl=acl).start()

    async def scenario():
        async with running_service(broker.url, max_steps=16, username="service", password="s3rvice") \
                as (pipeline, service):
            with pytest.raises(ServiceError) as refused:
                async with Client(broker.url, site="kitchen", username="kitchen", password="wrong"):
                    pass
            refused_worker = Pipeline(tiny_service_stages(broker.url, username="service", password="wrong"))
            await asyncio.wait_for(refused_worker.run(), 30)  # ends: retrying cannot fix credentials
            # garage, with its own valid credentials, listens to kitchen's topics and forges kitchen messages
            heard = []
            async with aiomqtt.Client("127.0.0.1", broker.port, username="garage", password="g4rage",
                                      protocol=aiomqtt.ProtocolVersion.V5) as garage:
                await garage.subscribe("omnivox/kitchen/#", qos=1)

                async def listen():
                    async for message in garage.messages:
                        heard.append(str(message.topic))

                listener = asyncio.create_task(listen())
                async with Client(broker.url, site="kitchen", username="kitchen", password="k1tchen") as kitchen:
                    session = await kitchen.session("k1")
                    answer = await session.ask(text="hi")
                    await garage.publish("omnivox/kitchen/intruder/in/session-start",
                                         wire.encode_json("session-start"), qos=1)
                    await garage.publish("omnivox/kitchen/k1/in/text", wire.encode_json("text", text="x"), qos=1)
                    await asyncio.sleep(1.0)
                    forged_turns = len(session.turns) + len(session.errors)
                listener.cancel()
            async with Client(broker.url, site="garage", username="garage", password="g4rage") as own:
                own_answer = await (await own.session()).ask(text="my own site")
            return refused.value, refused_worker.errors, answer, heard, forged_turns, service, own_answer

    try:
        refused, worker_errors, answer, heard, forged_turns, service, own_answer = asyncio.run(scenario())
    finally:
        broker.kill()
    assert refused.code == "connect-failed" and "Not authorized" in refused.problem
    assert "refused worker" in worker_errors[0].message and "password" in worker_errors[0].fix
    assert answer.ok and own_answer.ok
    assert heard == []  # nothing of kitchen's conversation reached garage
    assert forged_turns == 0 and service.turns_ended == 2  # the forged messages never reached the service
    assert "kitchen/intruder" not in service.engine.sessions


def test_tls_with_the_brokers_ca_connects_and_without_it_is_refused(tmp_path):
    broker = Mosquitto(tmp_path, tls=True).start()

    async def scenario():
        async with running_service(broker.url, max_steps=8, ca_file=str(broker.ca_file)):
            async with Client(broker.url, site="secure", ca_file=str(broker.ca_file)) as client:
                answer = await (await client.session()).ask(text="over TLS")
            with pytest.raises(ServiceError) as refused:  # the system CAs do not know the test CA
                async with Client(broker.url, site="secure", connect_timeout=3):
                    pass
            return answer, refused.value

    try:
        answer, refused = asyncio.run(scenario())
    finally:
        broker.kill()
    assert answer.ok
    assert refused.code == "connect-failed"
