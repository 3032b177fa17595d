"""The shipped test helper (Pipecat's run_test idea): feed events into a stage or a pipeline, get back what
came out of its last stage, assert on it.

    out = asyncio.run(run_stage(MyStage(), make_turn(1, [AudioChunk(pcm, rate=16000)])))
    assert_turn_ended(out, 1)
    assert [e.text for e in of_type(out, TextToken)] == ["hi"]

The returned list holds, in arrival order, every data/control event the last stage published plus every
system event (Interruption, Error, ...) published anywhere; Shutdown is left out.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from omnivox.core.contracts.codec import push_frames
from omnivox.core.runtime.bus import Bus
from omnivox.core.runtime.events import DataEvent, Error, Event, Shutdown, SystemEvent, TurnEnd, TurnStart
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage

# on_output(event, bus): called for each output event, may publish (e.g. an Interruption); sync or async.
OutputHook = Callable[[Event, Bus], Any]


async def run_stage(
    stage: Stage, events_in: Iterable[Event], *, on_output: OutputHook | None = None, timeout: float = 10.0
) -> list[Event]:
    """Run one stage on `events_in` until everything is handled; return what it published."""
    return await run_pipeline([stage], events_in, on_output=on_output, timeout=timeout)


async def run_pipeline(
    pipeline: Pipeline | Sequence[Stage],
    events_in: Iterable[Event],
    *,
    on_output: OutputHook | None = None,
    timeout: float = 10.0,
) -> list[Event]:
    """Run a pipeline (or a list of stages chained in order) on `events_in`, fed to its first stage;
    return what its last stage published. Fails with AssertionError if it does not drain in `timeout` s."""
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline(list(pipeline))
    tap = pipeline.bus.subscribe("test-output", senders=[pipeline.sink.name], maxsize=100_000)
    out: list[Event] = []

    async def collect() -> None:
        while True:
            event = await tap.get()
            try:
                if isinstance(event, Shutdown):
                    return
                out.append(event)
                if on_output is not None:
                    result = on_output(event, pipeline.bus)
                    if inspect.isawaitable(result):
                        await result
            finally:
                tap.task_done()

    collector = asyncio.create_task(collect())
    try:
        await asyncio.wait_for(pipeline.run(events_in), timeout)
    except asyncio.TimeoutError:
        collector.cancel()
        raise AssertionError(
            f"pipeline did not drain within {timeout} s; queues: {pipeline.bus.stats()}; got {types_of(out)}"
        ) from None
    await collector
    return out


def make_turn(turn_id: int, events: Iterable[Event], *, session_id: str = "default") -> list[Event]:
    """TurnStart, `events` moved into this turn, TurnEnd."""
    ids = {"session_id": session_id, "turn_id": turn_id}
    return [TurnStart(**ids), *(replace(e, **ids) for e in events), TurnEnd(**ids)]


# ------------------------------------------------------------------------------------------- asserts
def types_of(events: Iterable[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def of_type(events: Iterable[Event], *types: type[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, types)]


def of_turn(events: Iterable[Event], turn_id: int, *, session_id: str = "default") -> list[Event]:
    return [e for e in events if e.turn_id == turn_id and e.session_id == session_id]


def assert_types(events: Sequence[Event], expected: Sequence[type[Event]], *, ignore=(SystemEvent,)) -> None:
    """The events, minus those of `ignore`, are exactly of the `expected` types in that order."""
    got = [type(e) for e in events if not isinstance(e, ignore)]
    assert got == list(expected), f"expected {[t.__name__ for t in expected]}, got {[t.__name__ for t in got]}"


def assert_no_data(events: Iterable[Event], turn_id: int, *, session_id: str = "default") -> None:
    """No data event of the turn came out (what an interruption guarantees)."""
    leaked = of_type(of_turn(events, turn_id, session_id=session_id), DataEvent)
    assert not leaked, f"data events of interrupted turn {turn_id}: {types_of(leaked)}"


def assert_turn_ended(
    events: Iterable[Event], turn_id: int, reason: str = "done", *, session_id: str = "default"
) -> TurnEnd:
    """Exactly one TurnEnd came out for the turn, with `reason`; returns it."""
    ends = of_type(of_turn(events, turn_id, session_id=session_id), TurnEnd)
    assert len(ends) == 1, f"expected one TurnEnd for turn {turn_id}, got {len(ends)}"
    assert ends[0].reason == reason, f"turn {turn_id} ended with {ends[0].reason!r}, expected {reason!r}"
    return ends[0]


def assert_error(events: Iterable[Event], stage: str) -> Error:
    """An Error event names `stage`; returns the first one."""
    errors = [e for e in of_type(events, Error) if e.stage == stage]
    assert errors, f"no Error from stage {stage!r}; errors: {[(e.stage, e.message) for e in of_type(events, Error)]}"
    return errors[0]


class ChunkRecordingCodec:
    """A codec whose stream decoders record the frames each decode call gets, in `chunks` (the CodecStage's
    chunking, to check it or to replay the same chunks); everything they return is the codec's."""

    def __init__(self, codec):
        self.codec, self.grid, self.chunks = codec, codec.grid, []

    def stream_decoder(self) -> _RecordingDecoder:
        return _RecordingDecoder(self.codec.stream_decoder(), self.chunks)


class _RecordingDecoder:
    def __init__(self, inner, chunks: list[int]):
        self.inner, self.chunks = inner, chunks

    def push(self, frame):
        self.chunks.append(1)
        return self.inner.push(frame)

    def push_frames(self, frames):
        self.chunks.append(len(frames))
        return push_frames(self.inner, frames)

    def flush(self):
        return self.inner.flush()
