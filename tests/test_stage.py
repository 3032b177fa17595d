"""Stage runtime: one method to override, forwarding, interruption, faults, busy time."""

import asyncio
import time

from omnivox.core.errors import InputError
from omnivox.core.runtime.events import (
    AudioOut,
    DataEvent,
    Features,
    Interruption,
    TextToken,
    TurnEnd,
    VoiceStopped,
    same_turn,
)
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.testing import (
    assert_error,
    assert_no_data,
    assert_turn_ended,
    assert_types,
    make_turn,
    of_turn,
    of_type,
    run_pipeline,
    run_stage,
)


class Spell(Stage):
    """One TextToken per character of the incoming token's text."""

    consumes = (TextToken,)

    async def process(self, event):
        for i, ch in enumerate(event.text):
            yield TextToken(ord(ch), ch, step=i, **same_turn(event))


class FakeLM(Stage):
    """Decodes `prompt.token_id` steps, one TextToken per step; records every step it starts."""

    consumes = (TextToken,)

    def __init__(self, name=None):
        super().__init__(name)
        self.steps: list[tuple[int, int]] = []  # (turn, step)

    async def process(self, event):
        for step in range(event.token_id):
            self.steps.append((event.turn_id, step))
            yield TextToken(step, f"t{step}", step=step, **same_turn(event))


class ToAudio(Stage):
    consumes = (TextToken,)

    async def process(self, event):
        yield AudioOut(b"\0\0" * 240, rate=24000, step=event.step, **same_turn(event))


class Recorder(Stage):
    """A sink: logs every data event it handles."""

    consumes = (DataEvent,)

    def __init__(self, log, name=None, on_event=None):
        super().__init__(name)
        self.log = log
        self.on_event = on_event

    async def process(self, event):
        self.log.append(event)
        if self.on_event is not None:
            self.on_event(event)
        return None


def test_process_transforms_consumed_events_and_forwards_the_rest():
    events = make_turn(1, [TextToken(0, "ab"), Features([[0.0]]), VoiceStopped()])
    out = asyncio.run(run_stage(Spell(), events))
    assert_types(out, [type(e) for e in events[:1]] + [TextToken, TextToken, Features, VoiceStopped, TurnEnd])
    spelled = of_type(out, TextToken)
    assert [(t.text, t.step, t.source, t.turn_id) for t in spelled] == [("a", 0, "spell", 1), ("b", 1, "spell", 1)]
    assert out[3].source == ""  # forwarded unchanged: the producer is kept


def test_from_function_wraps_sync_async_and_empty_results():
    def upper(event):
        return TextToken(event.token_id, event.text.upper(), **same_turn(event))

    async def twice(event):
        return [event, event]

    def drop(event):
        return None

    tokens = [TextToken(1, "x"), TextToken(2, "y")]
    for fn, expected in ((upper, ["X", "Y"]), (twice, ["x", "x", "y", "y"]), (drop, [])):
        stage = Stage.from_function(fn, consumes=(TextToken,))
        out = asyncio.run(run_stage(stage, make_turn(1, tokens)))
        assert [t.text for t in of_type(out, TextToken)] == expected, fn.__name__
        assert_turn_ended(out, 1)


def test_interruption_stops_the_turn_within_one_step_and_the_next_turn_completes():
    log = []
    lm = FakeLM("lm")
    at_interrupt = {}

    async def main():
        reached = asyncio.Event()
        sink = Recorder(log, "sink", lambda e: reached.set() if e.turn_id == 1 and e.step == 2 else None)
        pipeline = Pipeline([lm, ToAudio("codec"), sink])

        async def barge_in():
            await reached.wait()
            at_interrupt["steps"] = sum(1 for turn, _ in lm.steps if turn == 1)
            log.append("INTERRUPT")
            await pipeline.bus.publish(Interruption(turn_id=1))

        interrupter = asyncio.create_task(barge_in())
        events = make_turn(1, [TextToken(100_000, "")]) + make_turn(2, [TextToken(5, "")])
        out = await run_pipeline(pipeline, events, timeout=20)
        await interrupter
        return out

    out = asyncio.run(main())
    cut = log.index("INTERRUPT")
    assert [e for e in log[cut + 1 :] if e.turn_id == 1] == []  # nothing of turn 1 reached the sink after
    steps_turn1 = sum(1 for turn, _ in lm.steps if turn == 1)
    assert steps_turn1 - at_interrupt["steps"] <= 1  # cancelled within one decode step
    assert [e.step for e in log[cut + 1 :]] == [0, 1, 2, 3, 4]  # turn 2 in full
    assert_turn_ended(out, 1, "interrupted")
    assert_turn_ended(out, 2, "done")


def test_threaded_steps_stop_on_the_cancellation_flag():
    class ThreadedLM(Stage):
        consumes = (TextToken,)

        def __init__(self):
            super().__init__()
            self.steps = 0
            self.steps_at_interrupt = None

        async def process(self, event):
            await asyncio.to_thread(self.decode, event)
            return None

        def decode(self, event):  # runs in a worker thread: no await, so it checks the flag per step
            for _ in range(10_000):
                if self.interrupted(event):
                    return
                self.steps += 1
                time.sleep(0.002)

    lm = ThreadedLM()

    async def main():
        pipeline = Pipeline([lm])

        async def barge_in():
            while lm.steps < 5:
                await asyncio.sleep(0.001)
            lm.steps_at_interrupt = lm.steps
            await pipeline.bus.publish(Interruption(turn_id=1))

        interrupter = asyncio.create_task(barge_in())
        out = await run_pipeline(pipeline, make_turn(1, [TextToken(0, "")]), timeout=20)
        await interrupter
        return out

    out = asyncio.run(main())
    assert lm.steps - lm.steps_at_interrupt <= 1
    assert_turn_ended(out, 1, "interrupted")


def test_a_failing_stage_reports_ends_the_turn_and_serves_the_next_one():
    class Flaky(Stage):
        consumes = (TextToken,)
        calls = []

        async def process(self, event):
            self.calls.append(event.turn_id)
            yield TextToken(0, "before", **same_turn(event))
            if event.turn_id == 1:
                raise RuntimeError("decoder blew up")
            yield TextToken(1, "after", **same_turn(event))

    log = []
    flaky = Flaky()
    events = make_turn(1, [TextToken(0, ""), TextToken(0, "")]) + make_turn(2, [TextToken(0, "")])
    out = asyncio.run(run_pipeline([flaky, Recorder(log, "sink")], events))
    err = assert_error(out, "flaky")
    assert err.message == "RuntimeError: decoder blew up" and err.turn_id == 1
    assert_turn_ended(out, 1, "error")  # exactly one TurnEnd: the upstream "done" one is swallowed
    assert_turn_ended(out, 2, "done")
    assert flaky.calls == [1, 2]  # the rest of the failed turn is skipped
    assert [e.text for e in log if e.turn_id == 2] == ["before", "after"]


def test_an_omnivox_error_keeps_its_fix():
    def reject(event):
        raise InputError("prompt is empty", "say something")

    out = asyncio.run(run_stage(Stage.from_function(reject, name="encoder"), make_turn(3, [TextToken(0, "")])))
    err = assert_error(out, "encoder")
    assert (err.message, err.fix) == ("prompt is empty", "say something")
    assert_turn_ended(out, 3, "error")
    assert_no_data(out, 3)


def test_busy_time_counts_work_inside_process_per_turn():
    def work(event):
        time.sleep(0.01)
        return event

    stage = Stage.from_function(work, consumes=(TextToken,), name="work")
    pipeline = Pipeline([stage, Recorder([], "sink")])
    turns = asyncio.run(pipeline.run(make_turn(1, [TextToken(0, "")] * 3) + make_turn(2, [TextToken(0, "")])))
    busy = {m.turn_id: m.stage_busy_ms for m in turns}
    assert busy[1]["work"] >= 30 and 10 <= busy[2]["work"] < busy[1]["work"]
    assert busy[1]["sink"] < busy[1]["work"]
    assert stage.busy_total_s >= 0.04
    assert stage.busy_s == {}  # handed over to the turn's Metrics


def test_run_stage_output_is_per_turn_and_ordered():
    out = asyncio.run(run_stage(Spell(), make_turn(1, [TextToken(0, "hey")]) + make_turn(2, [TextToken(0, "yo")])))
    assert "".join(t.text for t in of_type(of_turn(out, 1), TextToken)) == "hey"
    assert "".join(t.text for t in of_type(of_turn(out, 2), TextToken)) == "yo"


def test_output_streams_the_sink_gets_audio_before_generation_ends():
    lm = FakeLM("lm")
    steps_when_first_heard = []

    def heard(event):
        if not steps_when_first_heard:
            steps_when_first_heard.append(len(lm.steps))

    asyncio.run(run_pipeline([lm, ToAudio("codec"), Recorder([], "speaker", heard)], make_turn(1, [TextToken(50, "")])))
    assert len(lm.steps) == 50
    assert steps_when_first_heard[0] < 50  # heard while the LM was still decoding
