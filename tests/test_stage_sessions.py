"""Per-session concurrency of the Stage base: sessions overlap, each stays in order, and one session's
error or interruption leaves the others alone. Also: a model shared by concurrent LM turns."""

import asyncio
import time

from omnivox.core.runtime.events import Interruption, TextIn, TextToken, TurnEnd, TurnStart, same_turn
from omnivox.core.runtime.model_stages import LMStage
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.testing import assert_error, assert_turn_ended, make_turn, of_turn, of_type, run_pipeline


class SlowSteps(Stage):
    """`token_id` steps of 10 ms each (await), one TextToken per step; records when each session is busy."""

    consumes = (TextToken,)

    def __init__(self, fail_session=None, name="slow"):
        super().__init__(name)
        self.fail_session = fail_session
        self.active: set[str] = set()
        self.max_active = 0
        self.steps: list[tuple[str, int, int]] = []  # (session, turn, step)

    async def process(self, event):
        self.active.add(event.session_id)
        self.max_active = max(self.max_active, len(self.active))
        try:
            for step in range(event.token_id):
                if event.session_id == self.fail_session and step == 2:
                    raise ValueError("boom")
                self.steps.append((event.session_id, event.turn_id, step))
                await asyncio.sleep(0.01)
                yield TextToken(step, f"{event.session_id}:{step}", step=step, **same_turn(event))
        finally:
            self.active.discard(event.session_id)


def _sessions(n, steps, turns=1):
    events = []
    for turn in range(turns):
        for i in range(n):
            events += make_turn(turn, [TextToken(steps, "")], session_id=f"s{i}")
    return events


def test_sessions_overlap_and_each_stays_in_order():
    stage = SlowSteps()
    start = time.perf_counter()
    out = asyncio.run(run_pipeline([stage], _sessions(4, 10, turns=2), timeout=20))
    elapsed = time.perf_counter() - start
    assert stage.max_active == 4  # all four sessions were inside process() at once
    assert elapsed < 0.8 * 4 * 2 * 10 * 0.01  # not the sum of every turn's sleeping: they overlapped
    for i in range(4):
        session = f"s{i}"
        mine = [e for e in out if e.session_id == session and not isinstance(e, Interruption)]
        texts = [e.text for e in of_type(mine, TextToken)]
        assert texts == [f"{session}:{k}" for k in range(10)] * 2  # nothing crossed, in order
        ends = [e.turn_id for e in of_type(mine, TurnEnd)]
        assert ends == [0, 1]  # turn 0 ended before turn 1 started: one turn at a time per session
        assert_turn_ended(out, 0, session_id=session)


def test_one_sessions_error_ends_only_its_turn():
    stage = SlowSteps(fail_session="s1")
    out = asyncio.run(run_pipeline([stage], _sessions(3, 6), timeout=20))
    error = assert_error(out, "slow")
    assert error.session_id == "s1" and "boom" in error.message
    assert_turn_ended(out, 0, "error", session_id="s1")
    for session in ("s0", "s2"):
        assert len(of_type(of_turn(out, 0, session_id=session), TextToken)) == 6
        assert_turn_ended(out, 0, session_id=session)


def test_interrupting_one_session_does_not_touch_a_concurrent_one():
    stage = SlowSteps()

    async def barge_in(event, bus):
        if isinstance(event, TextToken) and event.session_id == "a" and event.step == 2:
            await bus.publish(Interruption(session_id="a", turn_id=0))

    events = make_turn(0, [TextToken(40, "")], session_id="a") + \
        make_turn(0, [TextToken(20, "")], session_id="b")
    out = asyncio.run(run_pipeline([stage], events, on_output=barge_in, timeout=20))
    steps_a = [s for s in stage.steps if s[0] == "a"]
    assert len(steps_a) <= 4  # cancelled within one step of the interruption
    assert_turn_ended(out, 0, "interrupted", session_id="a")
    assert [e.step for e in of_type(of_turn(out, 0, session_id="b"), TextToken)] == list(range(20))
    assert_turn_ended(out, 0, session_id="b")


def test_idle_session_workers_are_reaped(monkeypatch):
    from omnivox.core.runtime import stage as stage_module

    monkeypatch.setattr(stage_module, "WORKER_IDLE_S", 0.05)
    stage = SlowSteps()

    async def main():
        pipeline = Pipeline([stage])
        await pipeline.start()
        for event in _sessions(5, 2):
            await pipeline.feed(event)
        await pipeline.drain()
        busy = len(stage._workers)
        await asyncio.sleep(0.3)
        idle = len(stage._workers)
        await pipeline.stop()
        return busy, idle

    busy, idle = asyncio.run(main())
    assert busy == 5 and idle == 0


class OverlapLM(LMStage):
    """An LMStage noting how many turns were generating at once."""

    max_generating = 0

    async def process(self, event):
        async for out in super().process(event):
            self.max_generating = max(self.max_generating, len(self.generating))
            yield out


def test_concurrent_lm_turns_share_one_model_and_match_sequential_ones():
    """Two sessions decode at once on one model object (separate caches): the same tokens as alone."""
    from omnivox.core.runtime.speech_kit import RANDOM_MODEL, SpeechKit

    model = SpeechKit.load_model(RANDOM_MODEL, seed=3)

    def turn(session, text):
        ids = {"session_id": session, "turn_id": 0}
        return [TurnStart(**ids), TextIn(text, **ids), TurnEnd(**ids)]

    def tokens(out, session):
        return [e.token_id for e in of_type(of_turn(out, 0, session_id=session), TextToken)]

    alone = {s: asyncio.run(run_pipeline([LMStage("text-delay", model=model, task="T1T2", max_steps=24)],
                                         turn(s, text)))
             for s, text in (("x", "hello"), ("y", "what time is it"))}
    lm = OverlapLM("text-delay", model=model, task="T1T2", max_steps=24)
    both = asyncio.run(run_pipeline([lm], turn("x", "hello") + turn("y", "what time is it"), timeout=60))
    for session in ("x", "y"):
        assert tokens(both, session) == tokens(alone[session], session) and tokens(both, session)
        assert_turn_ended(both, 0, session_id=session)
    assert lm.max_generating == 2  # both turns were generating at the same time
