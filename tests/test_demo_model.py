"""The shipped default model `demo` and its plumbing: an export records the encoder and codec it was trained with
(training/export.py), `omnivox chat` hears and speaks through them (the speech kit, core/runtime/speech_kit.py),
`--checkpoint random` is the tiny random model; with the shipped weights (plugins/demo_model.py, models/demo/):
the main job on held-out spoken questions, checked by the ASR yardstick, and the answer streams.

Tests that need the shipped model skip, naming the missing file, until it is in the package."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnivox.core.errors import CheckpointError, ConfigError, PluginError
from omnivox.core.runtime.speech_kit import (
    COMPONENTS_FILE,
    DEFAULT_NOTICE,
    RANDOM_MODEL,
    SpeechKit,
    components_in,
    model_name,
)
from omnivox.plugins.random_models import TINY_WHISPER_DIMS
from omnivox.training.export import export_codec, ship

TINY_SNAC = {"sampling_rate": 24000, "encoder_dim": 8, "encoder_rates": [2, 4, 8, 8], "decoder_dim": 32,
             "decoder_rates": [8, 8, 4, 2], "attn_window_size": None, "codebook_size": 4096, "codebook_dim": 4,
             "vq_strides": [4, 2, 1], "noise": True, "depthwise": True}


def _cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "omnivox.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def tiny_export(tmp_path):
    """A native export of the tiny random model whose components.json names a tiny whisper and a tiny SNAC."""
    directory = tmp_path / "export"
    SpeechKit.load_model(RANDOM_MODEL).save_pretrained(directory)
    record = {"encoder": {"name": "whisper", "params": {"dims": TINY_WHISPER_DIMS, "seed": 0}},
              "codec": {"name": "snac", "params": {"config": TINY_SNAC, "seed": 0}}}
    (directory / COMPONENTS_FILE).write_text(json.dumps(record))
    return directory


# ---- the record an export writes ----------------------------------------------------------------------------
def test_export_records_the_encoder_settings_and_copies_a_local_trained_codec(tmp_path):
    trained = tmp_path / "codec_run" / "export"  # what `omnivox train recipes/codec_mel.yaml` leaves
    trained.mkdir(parents=True)
    (trained / "config.json").write_text("{}")
    (trained / "model.safetensors").write_bytes(b"codebooks")
    recipe = {"prepare": {"encoder": {"_component_": "faster_whisper", "trim": True, "threads": 2},
                          "codec": {"_component_": "mel", "model": str(trained)}}}
    export = tmp_path / "export"
    assert export_codec(recipe, export) == export / "codec"
    assert (export / "codec" / "model.safetensors").read_bytes() == b"codebooks"  # a copy: the run may go
    record = json.loads((export / COMPONENTS_FILE).read_text())
    assert record["encoder"] == {"name": "faster_whisper", "params": {"trim": True}, "local": []}  # no threads
    assert record["codec"] == {"name": "mel", "params": {"model": "codec"}, "local": ["model"]}
    specs = components_in(export)
    assert specs["codec"]["params"] == {"model": str(export / "codec")}
    assert specs["encoder"]["params"] == {"trim": True}


def test_export_records_seeded_snac_and_exported_whisper_and_names_a_hub_codec(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "small.pt").write_bytes(b"")  # what training/prepare.py's export_encoder writes
    recipe = {"prepare": {"encoder": {"_component_": "whisper", "dims": TINY_WHISPER_DIMS, "seed": 0, "trim": True},
                          "codec": {"_component_": "snac", "config": TINY_SNAC, "seed": 0}}}
    assert export_codec(recipe, export) == export / "codec"
    assert (export / "codec" / "pytorch_model.bin").is_file()
    record = json.loads((export / COMPONENTS_FILE).read_text())
    assert record["encoder"] == {"name": "whisper", "params": {"trim": True, "checkpoint": "small.pt"},
                                 "local": ["checkpoint"]}
    assert record["codec"] == {"name": "snac", "params": {"model": "codec"}, "local": ["model"]}
    hub = {"prepare": {"codec": {"_component_": "snac", "model": "hubertsiuzdak/snac_24khz"}}}
    assert export_codec(hub, tmp_path / "other") is None
    assert json.loads((tmp_path / "other" / COMPONENTS_FILE).read_text())["codec"] == {
        "name": "snac", "params": {"model": "hubertsiuzdak/snac_24khz"}, "local": []}


# ---- choosing the components ----------------------------------------------------------------------------------
def test_the_recorded_components_are_used_unless_overridden(tiny_export):
    kit = SpeechKit.load(str(tiny_export))
    assert kit.encoder.feature_dim == TINY_WHISPER_DIMS["n_audio_state"] and kit.codec.grid.n_slots == 7
    assert kit.max_steps == 600 and kit.components["codec"]["name"] == "snac"
    assert SpeechKit.load(str(tiny_export), hear=False).encoder is None  # text in: no encoder is built
    with pytest.raises(ConfigError, match="64") as error:  # real whisper small would be 768 wide: never loaded
        SpeechKit.load(str(tiny_export), encoder="faster_whisper", speak=False)
    assert "--encoder" in error.value.fix


def test_missing_or_unavailable_components_are_named_with_the_fix(tiny_export):
    record = {"encoder": {"name": "whisper", "params": {"checkpoint": "small.pt"}, "local": ["checkpoint"]},
              "codec": {"name": "nosuch", "params": {}}}
    (tiny_export / COMPONENTS_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as error:
        SpeechKit.load(str(tiny_export), speak=False)
    assert str(tiny_export / "small.pt") in error.value.problem and "--encoder" in error.value.fix
    with pytest.raises(PluginError) as error:
        SpeechKit.load(str(tiny_export), hear=False)
    assert "'nosuch'" in error.value.problem and str(tiny_export / COMPONENTS_FILE) in error.value.problem
    assert "--codec" in error.value.fix
    with pytest.raises(ConfigError, match="no codec plugin loads") as error:  # no SNAC model: name its plugin
        SpeechKit.load(str(tiny_export), codec=str(tiny_export), hear=False)
    assert f"--codec NAME:{tiny_export}" in error.value.fix


def test_a_checkpoint_without_a_record_gets_mini_omnis_components(tiny_export):
    (tiny_export / COMPONENTS_FILE).unlink()
    specs = components_in(tiny_export)
    assert specs["encoder"]["name"] == "whisper" and specs["encoder"]["params"] == {
        "checkpoint": str(tiny_export / "small.pt")}
    assert specs["codec"]["params"] == {"model": "hubertsiuzdak/snac_24khz"}


def test_ship_stores_fp16_weights_and_the_kit_widens_them(tiny_export, tmp_path):
    from safetensors.torch import load_file

    size = ship(tiny_export, tmp_path / "shipped")
    stored = load_file(str(tmp_path / "shipped" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert size < (tiny_export / "model.safetensors").stat().st_size
    kit = SpeechKit.load(str(tmp_path / "shipped"), hear=False, speak=False)
    assert {p.dtype for p in kit.model.lm.parameters()} == {torch.float32}
    assert (tmp_path / "shipped" / COMPONENTS_FILE).is_file() and kit.components["codec"]["name"] == "snac"


def test_random_is_the_tiny_random_model():
    assert SpeechKit.load_model("random").source.startswith("random") and model_name("random") == RANDOM_MODEL


def test_without_checkpoint_chat_runs_the_shipped_demo_or_names_its_missing_file(tmp_path):
    from omnivox.plugins.demo_model import missing_files

    run = _cli("chat", "--text", "what is two plus three", "--task", "T1T2", "--max-steps", "40", cwd=tmp_path)
    assert DEFAULT_NOTICE in run.stderr
    missing = missing_files()
    if missing:
        assert run.returncode == 2 and str(missing[0]) in run.stderr and "--checkpoint random" in run.stderr
    else:
        assert run.returncode == 0, run.stderr


def test_demo_is_a_registered_model_and_pipelines_can_name_its_components():
    from omnivox.core.contracts.manager import get_plugin_manager

    manager = get_plugin_manager()
    assert "demo" in manager.registry("models").entries
    assert "recorded" in manager.registry("encoders").entries and "recorded" in manager.registry("codecs").entries
    assert manager.create("codecs", "recorded", checkpoint="random").grid.n_slots == 7


# ---- the shipped model ----------------------------------------------------------------------------------------
def _shipped():
    from omnivox.plugins.demo_model import missing_files

    missing = missing_files()
    if missing:
        pytest.skip(f"the shipped demo model is not in the package: {missing[0]} is missing")


def _speak(path: Path, text: str, voice: str = "en-us", rate: int = 150) -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True)
    return path


def _chat_in_process(question: Path, output: Path, *options: str, printer_out: list | None = None):
    """The main job's pipeline (`omnivox chat --input Q --output A`, default checkpoint) run here: (text, wav);
    `options` replace `--input Q` when they hold `--text`; `printer_out` receives the transcript printer."""
    from omnivox.cli.chat import build_pipeline
    from omnivox.cli.main import build_parser

    source = list(options) if "--text" in options else ["--input", str(question), *options]
    args = build_parser().parse_args(["chat", *source, "--output", str(output), "--quiet"])
    pipeline, printer, _ = build_pipeline(args, say=lambda line: None)
    asyncio.run(pipeline.run())
    assert not pipeline.errors, pipeline.errors
    if printer_out is not None:
        printer_out.append(printer)
    return next(iter(printer.texts.values()), ""), output


@pytest.mark.slow
@pytest.mark.weights
def test_make_demo_question_is_answered_and_the_yardstick_hears_the_answer(tmp_path):
    """`make demo`: espeak-ng asks the README's question, `omnivox chat` (no checkpoint) answers it."""
    _shipped()
    from omnivox.plugins.fw_transcriber import Transcriber
    from omnivox.training.demo_domain import score_answer

    question = _speak(tmp_path / "question.wav", "What is the capital of France?")
    run = _cli("chat", "--input", str(question), "--output", "answer.wav", "--text-out", "answer.txt", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    expected = "the capital of france is paris"
    text = (tmp_path / "answer.txt").read_text()
    heard = Transcriber().transcribe_file(tmp_path / "answer.wav")
    assert score_answer("capital", expected, text), text
    assert score_answer("capital", expected, heard), heard


@pytest.mark.slow
@pytest.mark.weights
def test_held_out_spoken_questions_get_right_answers_in_text_and_in_speech(tmp_path):
    """Held-out questions (test split: unseen phrasings or numbers, held-out voices and rates) through the main
    job, the first of each of the 10 intents: a broken encoder, LM or codec answers none of them."""
    _shipped()
    from omnivox.plugins.fw_transcriber import Transcriber
    from omnivox.training.demo_domain import INTENTS, DemoConfig, questions, score_answer

    config = DemoConfig()
    held_out = {}
    for q in questions(config):
        if q.split == "test":
            held_out.setdefault(q.intent, q)
    asr = Transcriber()
    text_ok, spoken_ok, seen = 0, 0, []
    for i, q in enumerate(held_out.values()):
        voice, rate = config.test_voices[i % len(config.test_voices)], config.test_rates[i % len(config.test_rates)]
        text, wav = _chat_in_process(_speak(tmp_path / f"q{i}.wav", q.text, voice, rate), tmp_path / f"a{i}.wav")
        heard = asr.transcribe_file(wav) if wav.is_file() else ""  # no answer audio: nothing to hear
        text_ok += score_answer(q.intent, q.answer, text)
        spoken_ok += score_answer(q.intent, q.answer, heard)
        seen.append((q.text, q.answer, text, heard))
    assert set(held_out) == set(INTENTS)
    # measured 8/10 and 7/10 (text-delay, 2026-12-05); chat's A1A2 text and speech miss the sums (docs/demo_model.md)
    assert text_ok >= 7 and spoken_ok >= 5, seen


@pytest.mark.slow
@pytest.mark.weights
def test_typed_questions_are_answered_and_a_spoken_command_becomes_its_action(tmp_path):
    """Issue 23: a typed question gets the spoken question's answer (T1T2 and T1A2, not the text read aloud); a
    held-out voice's command gives the action, which stays out of the text (the README's robot quick start checks a
    conversation over MQTT). The room/switch pair is a trained one: held-out pairs (the kitchen) are the robot
    benchmark's (docs/demo_model.md: 71% of spoken light actions exact there; "turn on the kitchen light" -> garage)."""
    _shipped()
    from omnivox.plugins.fw_transcriber import Transcriber
    from omnivox.training.demo_domain import score_answer

    expected = "the capital of france is paris"
    text, _ = _chat_in_process(None, tmp_path / "t.wav", "--text", "what is the capital of france", "--task", "T1T2")
    assert score_answer("capital", expected, text), text
    text, wav = _chat_in_process(None, tmp_path / "a.wav", "--text", "what is the capital of france")  # T1A2
    assert score_answer("capital", expected, text), text
    assert score_answer("capital", expected, Transcriber().transcribe_file(wav))
    printers = []
    command = _speak(tmp_path / "c.wav", "turn on the bedroom light", "en-gb-x-rp", 150)
    text, _ = _chat_in_process(command, tmp_path / "c_answer.wav", printer_out=printers)
    assert list(printers[0].actions.values()) == [[("light", {"room": "bedroom", "on": True})]], text
    assert "<act>" not in text and "bedroom" in text


@pytest.mark.slow
@pytest.mark.weights
def test_the_demo_answer_streams_first_audio_before_the_lm_finishes(tmp_path):
    _shipped()
    from omnivox.core.runtime.events import AudioOut
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.pipeline import Pipeline
    from omnivox.core.runtime.stage import Stage
    from omnivox.plugins.audio_files import FileAudioInput

    class FirstAudio(Stage):
        consumes = (AudioOut,)

        def __init__(self, lm):
            super().__init__("sink")
            self.lm, self.while_generating, self.chunks = lm, None, 0

        async def process(self, event):
            if self.while_generating is None:
                self.while_generating = event.turn in self.lm.generating
            self.chunks += 1
            return
            yield

    kit = SpeechKit.load(None, say=lambda line: None)
    model, encoder, codec = kit.model, kit.encoder, kit.codec
    question = _speak(tmp_path / "q.wav", "what is the capital of germany", "en-gb-x-rp", 150)
    lm = LMStage("text-delay", model=model, task="A1A2", max_steps=kit.max_steps)
    sink = FirstAudio(lm)
    turns = asyncio.run(Pipeline([FileAudioInput(str(question)), EncoderStage(encoder), lm, CodecStage(codec),
                                  sink]).run())
    assert sink.while_generating is True and sink.chunks > 1
    result = next(iter(lm.results.values()))
    assert turns[0].first_audio_step < result.steps  # the first audio came from an early LM step


def test_shipped_export_is_small_and_self_contained():
    from omnivox.plugins.demo_model import DEMO_DIR, missing_files

    missing = missing_files()
    if missing:
        pytest.skip(f"the shipped demo model is not in the package: {missing[0]} is missing")
    size = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, f"{DEMO_DIR}: {size / 2**20:.1f} MiB (the issue allows 25 MB)"
    for role, spec in components_in(DEMO_DIR).items():
        for key in spec["local"]:
            assert Path(spec["params"][key]).exists(), f"{role}: {spec['params'][key]}"

