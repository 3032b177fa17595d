"""Turn taking on an MQTT device (plugins/mqtt/device_turns.py), against a REAL mosquitto and the tiny service: a
device that streams its microphone all the time gets one turn per question, asked as soon as its end is decided,
each answered; a question with a pause inside stays one turn; asked on a guess, a question is taken back when the
speaker goes on and asked again whole."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import numpy as np
import pytest
from mqtt_support import Mosquitto, running_service

from omnivox.core import audio
from omnivox.mqtt import Client, DeviceTurns
from omnivox.plugins.audio_files import read_audio

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("mosquitto") is None,
                                reason="needs espeak-ng and mosquitto")
RATE = 16000


def spoken(text: str, folder) -> np.ndarray:
    path = folder / "q.wav"
    subprocess.run(["espeak-ng", "-m", "-w", str(path), text], check=True)
    pcm, rate = read_audio(path)
    return audio.resample(audio.to_mono(pcm), rate, RATE)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield server
    server.kill()


def test_a_streaming_device_gets_one_turn_per_question_asked_at_the_decision(broker, tmp_path):
    silence = np.zeros(int(1.2 * RATE), np.float32)
    first = spoken('<speak>what is the capital of <break time="700ms"/> france</speak>', tmp_path)
    second = spoken("what day comes after monday", tmp_path)
    stream = np.concatenate([silence[:RATE // 2], first, silence, second, silence])

    async def scenario():
        async with running_service(broker.url), Client(broker.url, site="robot") as client:
            turns = await DeviceTurns.start(await client.session())  # SileroVAD with the shipped detector
            asked, step = [], RATE // 50  # 20 ms blocks stamped with their audio time
            for start in range(0, len(stream), step):
                asked += await turns.push(stream[start:start + step], at=(start + step) / RATE)
            answers = [await turn.result(30) for turn in asked]
            return asked, answers, turns.speech_end

    asked, answers, speech_end = asyncio.run(scenario())
    assert [turn.id for turn in asked] == [0, 1]  # the inner pause did not cut the first question
    assert all(answer.ok and answer.audio for answer in answers), [(a.reason, a.errors) for a in answers]
    first_end = (RATE // 2 + len(first)) / RATE
    assert abs(speech_end[0] - first_end) < 0.3 and speech_end[1] > first_end + 1.0


class ScriptedDetector:
    """P(complete) from a list, one per ask."""

    def __init__(self, answers):
        self.answers = list(answers)

    def probability(self, pcm):
        return self.answers.pop(0)


def test_a_guess_is_asked_at_once_taken_back_when_the_speaker_goes_on_and_returned_only_when_it_stands(
        broker, tmp_path):
    """speculate: the inner pause looks complete (0.7) -> asked as turn 0; the speaker goes on -> turn 0 is
    withdrawn (its answer stops: turn-end interrupted) and the whole utterance is asked again as turn 1; its end
    looks complete (0.7) -> turn 1 asked at the first ask, and returned by push only once the detector is sure
    (0.99999 at the second ask); the second question is sure at once (turn 2)."""
    from omnivox.plugins.silero_vad import SileroVAD

    silence = np.zeros(int(1.2 * RATE), np.float32)
    first = spoken('<speak>what is the capital of <break time="700ms"/> france</speak>', tmp_path)
    second = spoken("what day comes after monday", tmp_path)
    stream = np.concatenate([silence[:RATE // 2], first, silence, second, silence])
    vad = SileroVAD(turn_end=ScriptedDetector([0.7, 0.2, 0.7, 0.99999, 0.99999]), speculate=0.6)

    async def scenario():
        async with running_service(broker.url), Client(broker.url, site="robot") as client:
            session = await client.session()
            turns = await DeviceTurns.start(session, vad)
            asked, returned_at, guess, step = [], {}, None, RATE // 50
            for start in range(0, len(stream), step):
                for turn in await turns.push(stream[start:start + step], at=(start + step) / RATE):
                    asked.append(turn)
                    returned_at[turn.id] = (start + step) / RATE
                guess = guess or session.turns.get(0)
            answers = [await turn.result(30) for turn in asked]
            return asked, answers, turns, returned_at, await guess.result(30)

    asked, answers, turns, returned_at, withdrawn = asyncio.run(scenario())
    assert [turn.id for turn in asked] == [1, 2] and turns.withdrawn == 1
    assert all(answer.ok and answer.audio for answer in answers), [(a.reason, a.errors) for a in answers]
    assert 0.15 <= returned_at[1] - turns.speech_end[1] <= 0.25  # returned at the sure ask (160 ms), not the guess
    assert withdrawn.reason == "interrupted"  # the guess's answer was stopped


def test_a_guess_at_zero_is_answered_while_the_device_detector_decides(broker, tmp_path):
    """speculate=0: audio-stop goes out at the pause's first ask, before the detector answers; the detector here
    answers only once the worker's first reply to that turn has arrived (it would wait in vain otherwise), and
    its 'complete' ends the turn: one question, answered, asked once."""
    from omnivox.plugins.silero_vad import SileroVAD

    question = spoken("what day comes after monday", tmp_path)
    stream = np.concatenate([np.zeros(RATE // 2, np.float32), question, np.zeros(RATE, np.float32)])
    holder: dict = {}

    class WaitsForTheAnswer:
        seen_reply = None

        def probability(self, pcm):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not holder["session"].turns[0].answer.replies:
                time.sleep(0.01)
            self.seen_reply = bool(holder["session"].turns[0].answer.replies)
            return 0.99999

    detector = WaitsForTheAnswer()

    async def scenario():
        async with running_service(broker.url), Client(broker.url, site="robot") as client:
            holder["session"] = await client.session()
            turns = await DeviceTurns.start(holder["session"], SileroVAD(turn_end=detector, speculate=0))
            asked, step = [], RATE // 50
            for start in range(0, len(stream), step):
                asked += await turns.push(stream[start:start + step], at=(start + step) / RATE)
            return asked, [await turn.result(30) for turn in asked], turns

    asked, answers, turns = asyncio.run(scenario())
    assert detector.seen_reply is True  # the worker answered the guess while the detector was deciding
    assert [turn.id for turn in asked] == [0] and turns.guesses == 1 and turns.withdrawn == 0
    assert answers[0].ok and answers[0].audio, (answers[0].reason, answers[0].errors)
