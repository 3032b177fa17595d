"""Pipeline: YAML loading through plugins, validation errors, backpressure, metrics, `omnivox run`."""

import argparse
import asyncio
import tracemalloc
import warnings
from pathlib import Path
from typing import Literal

import pytest
import yaml

from omnivox.cli import run as run_command
from omnivox.core.contracts import manager as plugin_module
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.contracts.manager import PluginManager
from omnivox.core.errors import ConfigError, InputError
from omnivox.core.kernel.strategies import BatchParallelStrategy
from omnivox.core.runtime.events import (
    AudioChunk,
    AudioOut,
    CodecFrame,
    Features,
    Metrics,
    Shutdown,
    TextToken,
    TurnEnd,
    TurnStart,
    VoiceStopped,
    same_turn,
)
from omnivox.core.runtime.metrics import format_summary
from omnivox.core.runtime.model_stages import LMStage
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.testing import assert_turn_ended, make_turn, of_type, run_pipeline

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------ a tiny plugin of every kind
SINKS: dict[str, list] = {}


class Tones(Stage):
    """Source: `turns` utterances of `chunks` 20 ms chunks each."""

    def __init__(self, turns: int, chunks: int):
        super().__init__()
        self.turns, self.chunks = turns, chunks

    async def produce(self):
        for turn in range(1, self.turns + 1):
            yield TurnStart(turn_id=turn)
            for _ in range(self.chunks):
                yield AudioChunk(b"\1\0" * 320, rate=16000, turn_id=turn)
            yield VoiceStopped(turn_id=turn)
            yield TurnEnd(turn_id=turn)


class MeanEncoder:
    """A component (not a Stage): PCM -> one feature frame."""

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def encode(self, chunk: AudioChunk):
        samples = chunk.to_float32()
        return [[self.gain * float(samples.mean())]]  # [frames=1, dim=1]


class EncoderStage(Stage):
    """Stage adapter for encoders: collects an utterance's frames, emits Features at VoiceStopped."""

    consumes = (AudioChunk, VoiceStopped)

    def __init__(self, encoder, name, frames_per_second: float = 50.0):
        super().__init__(name)
        self.encoder = encoder
        self.frames_per_second = frames_per_second
        self.pending: dict = {}

    async def process(self, event):
        if isinstance(event, VoiceStopped):
            frames = self.pending.pop(event.turn, [])
            return Features(frames, frames_per_second=self.frames_per_second, **same_turn(event))
        self.pending.setdefault(event.turn, []).extend(self.encoder.encode(event))
        return None


class Echo(Stage):
    """'LM': `steps` decode steps per Features, each a TextToken and a 7-slot CodecFrame."""

    consumes = (Features,)

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    async def process(self, event):
        for step in range(self.steps):
            yield TextToken(step, "w", step=step, **same_turn(event))
            yield CodecFrame(tuple(range(7)), step=step, **same_turn(event))


class Beep(Stage):
    """'Codec': audio from step `delay` on (a text-delay layout)."""

    consumes = (CodecFrame,)

    def __init__(self, delay: int = 2):
        super().__init__()
        self.delay = delay

    async def process(self, event):
        if event.step >= self.delay:
            yield AudioOut(b"\0\0" * 480, rate=24000, step=event.step, **same_turn(event))


class Memory(Stage):
    consumes = (AudioOut,)

    def __init__(self, name: str):
        super().__init__()
        self.store = SINKS.setdefault(name, [])

    async def process(self, event):
        self.store.append(event)
        return None


class Gate(Stage):
    consumes = ()

    def __init__(self, threshold: float = 0.5, mode: Literal["energy", "always"] = "energy"):
        super().__init__()


class TestPlugin:
    @hookimpl
    def register_audio_inputs(self, registry):
        registry.add("tones", Tones)

    @hookimpl
    def register_vad(self, registry):
        registry.add("gate", Gate)

    @hookimpl
    def register_encoders(self, registry):
        registry.add("mean", MeanEncoder)

    @hookimpl
    def register_strategies(self, registry):
        registry.add("echo", Echo)

    @hookimpl
    def register_codecs(self, registry):
        registry.add("beep", Beep)

    @hookimpl
    def register_audio_outputs(self, registry):
        registry.add("memory", Memory)

    @hookimpl
    def register_stage_adapters(self, registry):
        registry.add("encoders", EncoderStage)  # replaces core's EncoderStage in this manager


PIPELINE_YAML = """\
name: test-chat
stages:
  - name: mic
    plugin: audio_inputs/tones
    params: {turns: 2, chunks: 5}
  - name: vad
    plugin: vad/gate
    params: {threshold: 0.6, mode: energy}
  - name: encoder
    plugin: encoders/mean
  - name: lm
    plugin: strategies/echo
    params: {steps: 6}
  - name: codec
    plugin: codecs/beep
    params: {delay: 3}
  - name: speaker
    plugin: audio_outputs/memory
    params: {name: out}
"""


@pytest.fixture
def plugins():
    pm = PluginManager(load="")
    pm.pm.register(TestPlugin(), name="test")
    SINKS.clear()
    return pm


def write(tmp_path, text):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------- loading
def test_yaml_pipeline_runs_every_kind_and_reports_metrics(plugins, tmp_path):
    pipeline = Pipeline.from_yaml(write(tmp_path, PIPELINE_YAML), plugins=plugins)
    assert [s.name for s in pipeline.stages] == ["mic", "vad", "encoder", "lm", "codec", "speaker"]
    assert pipeline.inputs["mic"] == [] and pipeline.inputs["lm"] == ["encoder"]
    assert pipeline.stages[1].overflow == "drop_oldest"  # the vad kind reads live audio
    turns = asyncio.run(pipeline.run())
    assert [(a.turn_id, a.step) for a in SINKS["out"]] == [(t, s) for t in (1, 2) for s in (3, 4, 5)]
    assert [(m.turn_id, m.reason) for m in turns] == [(1, "done"), (2, "done")]
    first = turns[0]
    assert (first.first_text_step, first.first_audio_step, first.text_tokens) == (0, 3, 6)
    assert 0 <= first.first_text_ms <= first.first_audio_ms
    assert first.audio_s == pytest.approx(3 * 480 / 24000)
    assert first.rtf == pytest.approx(first.wall_s / first.audio_s)
    assert set(first.stage_busy_ms) == {"mic", "vad", "encoder", "lm", "codec", "speaker"}
    assert pipeline.errors == []
    summary = pipeline.metrics.summary()
    assert summary == format_summary(turns)
    assert "@step 3" in summary and "lm" in summary


def test_overrides_change_a_stage_parameter(plugins, tmp_path):
    path = write(tmp_path, PIPELINE_YAML)
    turns = asyncio.run(Pipeline.from_yaml(path, plugins=plugins, overrides={"mic.turns": 1}).run())
    assert len(turns) == 1
    with pytest.raises(ConfigError, match="unknown stage 'micro'") as info:
        Pipeline.from_yaml(path, plugins=plugins, overrides={"micro.turns": 1})
    assert "mic, vad, encoder" in info.value.fix


BAD = [
    # (what to replace, replacement, words in the problem, words in the fix)
    (
        "plugin: vad/gate",
        "plugin: vad/gat",
        ["stages[1].plugin", "unknown vad plugin 'gat'", "did you mean 'gate'"],
        ["valid vad: gate"],
    ),
    (
        "plugin: codecs/beep",
        "plugin: codec/beep",
        ["stages[4].plugin", "unknown stage kind 'codec'"],
        ["audio_inputs, vad, encoders, lm, codecs, audio_outputs"],
    ),
    (
        "    plugin: codecs/beep",
        "    plugin: codecs/beep\n    inputs: [llm]",
        ["stages[4].inputs", "unknown stage 'llm'", "did you mean 'lm'"],
        ["mic, vad, encoder, lm, codec, speaker"],
    ),
    (
        "    params: {name: out}\n",
        "",
        ["stages[5].params", "missing parameter 'name'", "audio_outputs/memory"],
        ["name (str)"],
    ),
    (
        "{turns: 2, chunks: 5}",
        "{turns: 2, chunks: many}",
        ["stages[0].params.chunks", "expected int", "'many'"],
        ["turns (int), chunks (int)"],
    ),
    ("mode: energy", "mode: loud", ["stages[1].params.mode", "got str 'loud'"], ["'energy', 'always'"]),
    (
        "threshold: 0.6",
        "threshhold: 0.6",
        ["stages[1].params.threshhold", "did you mean 'threshold'"],
        ["threshold (float) = 0.5"],
    ),
    ("threshold: 0.6", "threshold: high", ["stages[1].params.threshold", "expected float"], ["threshold (float)"]),
    (
        "    params: {steps: 6}",
        "    parms: {steps: 6}",
        ["stages[3].parms", "unknown key", "did you mean 'params'"],
        ["name, plugin, params, inputs, queue_size, overflow"],
    ),
    (
        "    plugin: codecs/beep",
        "    plugin: codecs/beep\n    overflow: drop_newest",
        ["stages[4].overflow", "'drop_newest'"],
        ["block, drop_oldest"],
    ),
    ("  - name: codec\n", "  - name: lm\n", ["stages[4].name", "'lm' is used twice"], ["unique"]),
    ("    plugin: strategies/echo", "    plugin: 7", ["stages[3].plugin", "expected str", "int 7"], ["codecs/snac"]),
    ("stages:", "stagez:", ["unknown key", "did you mean 'stages'"], ["name, description, stages"]),
]


@pytest.mark.parametrize("old, new, problem, fix", BAD, ids=[b[1].strip()[:30] for b in BAD])
def test_yaml_mistakes_name_the_key_and_the_valid_choices(plugins, tmp_path, old, new, problem, fix):
    assert old in PIPELINE_YAML
    path = write(tmp_path, PIPELINE_YAML.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path, plugins=plugins)
    for words in problem:
        assert words in info.value.problem
    for words in fix:
        assert words in info.value.fix


def test_a_component_plugin_gets_its_params_and_the_adapter_the_rest(plugins, tmp_path):
    with_params = "plugin: encoders/mean\n    params: {gain: 2, frames_per_second: 25}"
    text = PIPELINE_YAML.replace("plugin: encoders/mean", with_params)
    pipeline = Pipeline.from_yaml(write(tmp_path, text), plugins=plugins)
    encoder = pipeline.stages[2]
    assert (encoder.encoder.gain, encoder.frames_per_second, encoder.name) == (2, 25.0, "encoder")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(write(tmp_path, text.replace("frames_per_second", "frames_per_sec")), plugins=plugins)
    assert "stages[2].params.frames_per_sec: unknown parameter" in info.value.problem
    assert "frames_per_second (float) = 50.0" in info.value.fix and "gain (float) = 1.0" in info.value.fix


def test_missing_file_bad_yaml_and_component_without_adapter(plugins, tmp_path):
    with pytest.raises(ConfigError, match="pipeline file .*nope.yaml not found"):
        Pipeline.from_yaml(tmp_path / "nope.yaml", plugins=plugins)
    with pytest.raises(ConfigError, match="not valid YAML"):
        Pipeline.from_yaml(write(tmp_path, "stages: [\n"), plugins=plugins)
    plugins.pm.register(MeanVad(), name="mean_vad")
    with pytest.raises(ConfigError, match="vad/mean builds a MeanEncoder, which is not a Stage") as info:
        no_adapter = PIPELINE_YAML.replace("vad/gate\n    params: {threshold: 0.6, mode: energy}", "vad/mean")
        Pipeline.from_yaml(write(tmp_path, no_adapter), plugins=plugins)
    assert "register_stage_adapters hook" in info.value.fix


class MeanVad:
    """Registers a component (not a Stage) under vad, a kind with no stage adapter."""

    @hookimpl
    def register_vad(self, registry):
        registry.add("mean", MeanEncoder)


class LmAdapter:
    @hookimpl
    def register_stage_adapters(self, registry):
        registry.add("lm", EncoderStage)


def test_an_adapter_of_a_kind_without_plugins_is_refused(plugins, tmp_path):
    plugins.pm.register(LmAdapter(), name="lm_adapter")
    with pytest.raises(ConfigError, match="plugin 'lm_adapter' registers a stage adapter for 'lm'") as info:
        Pipeline.from_yaml(write(tmp_path, PIPELINE_YAML), plugins=plugins)
    assert "encoders" in info.value.fix and "lm" not in info.value.fix.split(": ")[1].split(", ")


def test_no_plugin_of_a_kind_says_none_is_registered(tmp_path):
    pm = PluginManager(load="")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(write(tmp_path, PIPELINE_YAML), plugins=pm)
    assert "unknown audio_inputs plugin 'tones'" in info.value.problem
    assert "(none registered)" in info.value.fix


# ------------------------------------------------------------------------------------ the LM stage
LM_PARAMS = {"checkpoint": "tiny-random", "strategy": "batch-parallel", "task": "A1A2", "max_steps": 9}


def _lm_stage(plugin: str, params: dict):
    config = {"stages": [{"name": "lm", "plugin": plugin, "params": params}]}
    (stage,) = Pipeline.from_config(config, plugins=PluginManager(load="strategies")).stages
    return stage


def test_the_lm_stage_takes_its_strategy_by_name_and_the_old_form_still_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = _lm_stage("lm/omni", LM_PARAMS)
    assert isinstance(new, LMStage) and isinstance(new.strategy, BatchParallelStrategy)
    assert _lm_stage("lm/omni", {"checkpoint": "tiny-random"}).strategy is None  # the model's, once it is loaded
    old_params = {k: v for k, v in LM_PARAMS.items() if k != "strategy"}
    deprecated = r"stages\[0\]\.plugin: strategies/batch-parallel is deprecated; write `plugin: lm/omni` with " \
        r"`strategy: batch-parallel`"
    with pytest.warns(FutureWarning, match=deprecated):
        old = _lm_stage("strategies/batch-parallel", old_params)
    assert type(old) is LMStage and type(old.strategy) is BatchParallelStrategy
    same = ("name", "checkpoint", "task", "max_steps", "sampling", "threads", "max_rows", "force_layout", "int8")
    assert [getattr(old, a) for a in same] == [getattr(new, a) for a in same] == \
        ["lm", "tiny-random", "A1A2", 9, new.sampling, new.threads, 16, False, False]


@pytest.mark.parametrize("plugin, params, problem, fix", [
    ("lm/omni", {"strategy": "text-dely"},
     ["stages[0].params.strategy", "unknown strategies plugin 'text-dely'", "did you mean 'text-delay'"],
     ["valid strategies: batch-parallel, parallel, text-delay"]),
    ("lm/omni", {"strategy": "parallel", "tsk": "A1A2"}, ["stages[0].params.tsk", "did you mean 'task'"],
     ["task (str | None) = None"]),
    ("lm/omini", {"strategy": "parallel"}, ["stages[0].plugin", "unknown lm stage 'omini'", "did you mean 'omni'"],
     ["valid lm: omni"]),
    ("llm/omni", {}, ["unknown stage kind 'llm'", "did you mean 'lm'"], ["encoders, lm, codecs"]),
])  # fmt: skip
def test_lm_stage_mistakes_name_the_key_and_the_valid_choices(plugin, params, problem, fix):
    with pytest.raises(ConfigError) as info:
        _lm_stage(plugin, params)
    for words in problem:
        assert words in info.value.problem
    for words in fix:
        assert words in info.value.fix


PIPELINE_FILES = sorted((ROOT / "recipes" / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: p.stem)
def test_shipped_pipelines_use_the_lm_stage(path):
    stages = yaml.safe_load(path.read_text())["stages"]
    (lm,) = [s for s in stages if s["plugin"].startswith(("lm/", "strategies/"))]
    assert lm["plugin"] == "lm/omni" and lm["params"]["strategy"] in ("text-delay", "batch-parallel")


def test_the_chat_demo_pipeline_loads_without_a_deprecation():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipeline = Pipeline.from_yaml(ROOT / "recipes" / "pipelines" / "chat_demo.yaml")
    lm = next(stage for stage in pipeline.stages if stage.name == "lm")
    assert isinstance(lm, LMStage) and lm.strategy.name == "text-delay" and lm.checkpoint == "demo"


# ------------------------------------------------------------------------------- flow control
class Talker(Stage):
    """Generates `prompt.token_id` chunks of 20 ms output audio."""

    consumes = (TextToken,)

    async def process(self, event):
        for step in range(event.token_id):
            yield AudioOut(b"\0\0" * 480, rate=24000, step=step, **same_turn(event))


class SlowSpeaker(Stage):
    consumes = (AudioOut,)

    def __init__(self, name="speaker"):
        super().__init__(name)
        self.played = 0

    async def process(self, event):
        await asyncio.sleep(0.0002)  # slower than the talker
        self.played += 1
        return None


def _run_long_utterance(chunks: int, queue_size: int = 8):
    """Returns (played, bus stats, tracemalloc peak bytes) for one turn of `chunks` output chunks."""
    talker, relay, speaker = Talker("talker"), Stage.from_function(lambda e: e, name="relay"), SlowSpeaker()
    for stage in (talker, relay, speaker):
        stage.queue_size = queue_size
    pipeline = Pipeline([talker, relay, speaker])
    tracemalloc.start()
    try:
        asyncio.run(run_pipeline(pipeline, make_turn(1, [TextToken(chunks, "")]), timeout=60))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return speaker.played, pipeline.bus.stats(), peak


def test_slow_sink_backpressure_keeps_queues_bounded_and_memory_flat():
    played, stats, peak_short = _run_long_utterance(100)
    assert played == 100
    for name, s in stats.items():
        assert s["high_water"] <= s["maxsize"], name
        assert s["dropped"] == 0, name
    assert stats["speaker"]["high_water"] == 8  # the speaker's queue filled: the talker had to wait
    played, stats, peak_long = _run_long_utterance(1000)  # 10x longer utterance (20 s of audio)
    assert played == 1000
    assert stats["speaker"]["high_water"] == 8
    assert peak_long < 1.5 * peak_short, (peak_short, peak_long)


def test_drop_oldest_input_queue_drops_and_counts_but_keeps_turn_markers():
    seen = []

    async def slow_vad(event):
        await asyncio.sleep(0.001)
        seen.append(event)
        return event

    vad = Stage.from_function(slow_vad, consumes=(AudioChunk,), name="vad")
    vad.overflow, vad.queue_size = "drop_oldest", 4
    pipeline = Pipeline([vad])
    chunks = [AudioChunk(b"\0\0" * 160, rate=16000) for _ in range(100)]
    out = asyncio.run(run_pipeline(pipeline, make_turn(1, chunks)))
    stats = pipeline.bus.stats()["vad"]
    assert stats["high_water"] <= 4
    assert stats["dropped"] > 0 and len(seen) + stats["dropped"] == 100
    assert_turn_ended(out, 1)
    assert len(of_type(out, TurnStart)) == 1


# ------------------------------------------------------------------------------------ command
def _cli(argv):
    parser = argparse.ArgumentParser()
    run_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_omnivox_run_runs_a_pipeline_file_and_prints_metrics(plugins, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plugin_module, "_DEFAULT", plugins)
    path = write(tmp_path, PIPELINE_YAML)
    assert _cli(["run", str(path), "--set", "mic.turns=1", "--set", "lm.steps=4"]) == 0
    assert len(SINKS["out"]) == 1  # steps 3..3
    assert "@step 3" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown codecs plugin 'snac'") as info:
        _cli(["run", str(write(tmp_path, PIPELINE_YAML.replace("codecs/beep", "codecs/snac")))])
    assert "valid codecs: beep" in info.value.fix
    with pytest.raises(ConfigError, match="STAGE.PARAM=VALUE"):
        _cli(["run", str(path), "--set", "turns"])


def test_omnivox_run_exits_nonzero_when_a_stage_fails(plugins, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plugin_module, "_DEFAULT", plugins)

    class Broken(Beep):
        async def process(self, event):
            raise RuntimeError("codec exploded")
            yield

    monkeypatch.setitem(plugins.registry("codecs").entries["beep"].__dict__, "factory", Broken)
    assert _cli(["run", str(write(tmp_path, PIPELINE_YAML)), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "stage 'codec' failed: RuntimeError: codec exploded" in err


def test_stop_mid_stream_stops_every_stage_without_cancelling_it():
    class Endless(Stage):
        async def produce(self):
            step = 0
            while True:
                yield AudioOut(b"\0\0" * 480, rate=24000, step=step, turn_id=1)
                step += 1

    speaker = SlowSpeaker()
    speaker.queue_size = 4

    async def main():
        pipeline = Pipeline([Endless("source"), Stage.from_function(lambda e: e, name="relay"), speaker])
        await pipeline.start()
        queue = next(sub for sub in pipeline.bus.subscriptions if sub.name == "speaker")
        while speaker.played < 20 or len(queue) < queue.maxsize:  # the relay now waits for room
            await asyncio.sleep(0)
        stuck = await pipeline.stop(timeout=30)
        return stuck, pipeline.bus.stats()

    stuck, stats = asyncio.run(main())
    assert stuck == []  # the source and relay, blocked on full queues, were released by Shutdown
    assert all(s["high_water"] <= s["maxsize"] for s in stats.values())


def test_each_finished_turn_publishes_a_metrics_event():
    async def main():
        pipeline = Pipeline([Talker("talker"), SlowSpeaker()])
        dashboard = pipeline.bus.subscribe("dashboard", types=(Metrics,), senders=["metrics"])
        got = []

        async def read():
            while True:
                event = await dashboard.get()
                dashboard.task_done()
                if isinstance(event, Shutdown):
                    return
                got.append(event)

        reader = asyncio.create_task(read())
        prompt = [VoiceStopped(), TextToken(4, "")]
        await pipeline.run(make_turn(1, prompt) + make_turn(2, prompt))
        await reader
        return got

    got = asyncio.run(main())
    summary = [(m.turn_id, m.reason, m.first_audio_step, m.text_tokens) for m in got]
    assert summary == [(1, "done", 0, 0), (2, "done", 0, 0)]
    assert got[0].audio_s == pytest.approx(4 * 0.02)
    assert got[0].stage_busy_ms["speaker"] > 0


def test_a_failing_source_is_reported_and_the_pipeline_still_drains():
    class BadFile(Tones):
        async def produce(self):
            async for event in super().produce():
                yield event
            raise InputError("question.wav is not audio", "pass a WAV/FLAC file")

    log = []
    speaker = Stage.from_function(lambda e: log.append(e), consumes=(AudioChunk,), name="speaker")
    pipeline = Pipeline([BadFile(turns=1, chunks=3), speaker])
    turns = asyncio.run(pipeline.run())
    assert [(e.stage, e.message, e.fix) for e in pipeline.errors] == [
        ("bad_file", "question.wav is not audio", "pass a WAV/FLAC file")
    ]
    assert len(log) == 3 and [m.reason for m in turns] == ["done"]


def test_a_transports_service_and_the_playback_state_live_in_their_pipeline():
    """What stages share without the bus is the pipeline's (`pipeline.shared`): an output finds the service of its
    input in the same pipeline only, and each pipeline has its own PlaybackState."""
    from omnivox.core.runtime.playback import shared_playback
    from omnivox.core.runtime.transport import TransportInput, TransportOutput

    class EchoInput(TransportInput):
        transport = "echo"

        async def open_service(self, feed):
            return object()

    class EchoOutput(TransportOutput):
        transport = "echo"

    async def scenario():
        served = Pipeline([EchoInput("svc"), EchoOutput("svc")])
        await served.start()
        try:
            alone = Pipeline([EchoOutput("svc")])  # the same service name, another pipeline: not found
            with pytest.raises(ConfigError, match="no ECHO input named service 'svc'") as error:
                await alone.start()
            assert "audio_inputs/echo" in error.value.fix
            return served, served.stages[0].service, served.stages[1].service
        finally:
            await served.stop()

    served, opened, found = asyncio.run(scenario())
    assert found is opened and opened is not None
    assert served.shared == {} and served.stages[1].shared is served.shared  # the input withdrew its service
    first, second = (Pipeline([Stage.from_function(lambda e: e, name=n) for n in "ab"]) for _ in range(2))
    assert shared_playback(first.stages[0].shared) is shared_playback(first.stages[1].shared)
    assert shared_playback(first.shared) is not shared_playback(second.shared)
