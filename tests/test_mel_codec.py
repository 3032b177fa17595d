"""The mel codec (plugins/mel_codec.py) and its recipe (training/codec_trainer.py), on a tiny synthetic corpus
of harmonic tones: grid, encode/decode shapes, streaming equal to whole decode, round-trip fidelity, checkpoint
files, exact resume (in process and after SIGKILL); the slow test trains on espeak-ng speech and checks the
ASR-yardstick WER ratio on held-out voices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import omnivox
from omnivox.core.errors import CheckpointError, ConfigError, InputError
from omnivox.plugins.mel_codec import MelCodec, MelCodecConfig, mel_filterbank
from omnivox.training.recipe import load_recipe
from omnivox.training.trainer import train

RATE = 16000
TINY = {"_component_": "omnivox.plugins.mel_codec.MelCodecConfig", "n_mels": 20, "stack": 1, "vectors_per_frame": 2,
        "n_stages": 2, "codebook_size": 16, "gl_iterations": 8, "context_frames": 4, "lookahead_frames": 2}


def tone(f0: float, seconds: float, seed: int) -> np.ndarray:
    """A voiced-like sound: harmonics of a gliding f0 under a syllable-rate envelope, plus a little noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    rng = np.random.default_rng(seed)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t))) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.2 * x + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def write_corpus(root: Path, name: str, f0s: list[float], seconds: float = 1.0) -> Path:
    lines = []
    for i, f0 in enumerate(f0s):
        path = root / "audio" / f"{name}{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, tone(f0, seconds, i), RATE, subtype="PCM_16")
        lines.append(json.dumps({"id": f"{name}{i}", "task": "T1A2", "question_text": "x", "answer_text": "x",
                                 "answer_audio": f"audio/{name}{i}.wav"}))
    manifest = root / f"{name}.codec.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_recipe(root: Path, steps: int = 30, **training) -> Path:
    import yaml

    recipe = {"name": "tiny_codec", "seed": 0, "output_dir": str(root / "run"), "model": TINY,
              "data": {"_component_": "omnivox.training.codec_trainer.CodecAudio",
                       "path": str(root / "train.codec.jsonl")},
              "eval_data": {"_component_": "omnivox.training.codec_trainer.CodecAudio",
                            "path": str(root / "eval.codec.jsonl")},
              "logger": {"_component_": "omnivox.training.metric_logging.MetricsLogger", "tensorboard": False,
                         "plot": False},
              "trainer": {"_component_": "omnivox.training.codec_trainer.MelCodecRecipe"}, "progress": False,
              "training": {"max_steps": steps, "batch_size": 256, "log_every": 10, "checkpoint_every": 10,
                           "eval_every": 0, "num_threads": 1, **training}}
    path = root / "codec_tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, single_thread):
    """A tiny codec trained by `MelCodecRecipe` on 12 tones; returns (corpus root, export dir)."""
    root = tmp_path_factory.mktemp("mel")
    write_corpus(root, "train", [90 + 20 * i for i in range(12)])
    write_corpus(root, "eval", [115.0, 235.0])
    summary = train(load_recipe(write_recipe(root)))
    return root, Path(summary["export"])


@pytest.fixture(scope="module")
def codec(trained):
    return omnivox.create("codecs", "mel", model=str(trained[1]))


def log_mel(codec: MelCodec, pcm: np.ndarray | torch.Tensor) -> torch.Tensor:
    return codec.front.log_mel(torch.as_tensor(pcm, dtype=torch.float32))


# ---- grid and shapes ----------------------------------------------------------------------------------
def test_default_grid_is_25_frames_of_8_slots():
    grid = MelCodecConfig().grid()
    assert (grid.frame_rate, grid.n_slots, grid.codebook_size, grid.samples_per_frame) == (25, 8, 1024, 640)
    assert grid.slots[:4] == ((0, 0), (1, 0), (2, 0), (3, 0))  # vector 0's stages, then vector 1's
    assert grid.per_frame == (2, 2, 2, 2)


def test_mel_filterbank_covers_the_band():
    bank = mel_filterbank(16000, 512, 80)
    assert bank.shape == (80, 257) and bool((bank >= 0).all())
    assert bool((bank.sum(1) > 0).all()), "every band has weight"
    peaks = bank.argmax(1)
    assert bool((peaks[1:] >= peaks[:-1]).all()), "band centres rise"


def test_encode_decode_shapes_and_any_input_rate(codec):
    grid = codec.grid
    assert grid.n_slots == 4 and grid.samples_per_frame == 320  # 2 vectors x 1 frame x hop 160
    x = tone(150, 0.73, 0)
    frames = codec.encode(x, RATE)
    assert frames.dtype == torch.int64 and frames.shape == (-(-x.size // 320), 4)
    assert int(frames.min()) >= 0 and int(frames.max()) < 16
    audio = codec.decode(frames)
    assert audio.dtype == torch.float32 and audio.shape == (frames.shape[0] * 320,)
    stereo_44k = np.stack([tone(150, 0.5, 1)] * 2)
    assert codec.encode(stereo_44k, 44100).shape[1] == 4  # resampled and mixed down


def test_round_trip_keeps_the_spectrum(codec):
    """Decoded audio's log-mel is far closer to its own input than to another tone's."""
    x, other = tone(120, 1.0, 3), tone(260, 1.0, 4)
    y = codec.decode(codec.encode(x, RATE))
    own = (log_mel(codec, x) - log_mel(codec, y[: x.size])).pow(2).mean()
    foreign = (log_mel(codec, x) - log_mel(codec, other)).pow(2).mean()
    assert float(own) < 0.3 * float(foreign), (float(own), float(foreign))
    assert codec.encode(y.numpy(), RATE).shape == codec.encode(x, RATE).shape


def test_streaming_equals_whole_decode_and_holds_back_the_lookahead(codec):
    frames = codec.encode(tone(180, 0.8, 5), RATE)
    decoder = codec.stream_decoder()
    pieces = []
    for n, frame in enumerate(frames, 1):
        pieces.append(decoder.push(frame))
        held = codec.config.lookahead_frames * codec.config.hop
        assert sum(p.numel() for p in pieces) == max(0, n * codec.grid.samples_per_frame - held)
    pieces.append(decoder.flush())
    assert torch.equal(torch.cat(pieces), codec.decode(frames))
    with pytest.raises(InputError, match="already flushed"):
        decoder.push(frames[0])


def test_bad_frames_are_refused_with_the_needed_shape(codec):
    with pytest.raises(InputError, match=r"\(n_frames, 4\)"):
        codec.decode(torch.zeros(3, 7, dtype=torch.long))
    with pytest.raises(InputError, match="outside the valid range 0..15"):
        codec.stream_decoder().push(torch.tensor([0, 1, 2, 16]))


# ---- files --------------------------------------------------------------------------------------------
def test_export_loads_by_path_and_round_trips_the_files(trained, codec, tmp_path):
    again = MelCodec.load(codec.save(tmp_path / "copy"))
    assert again.config == codec.config and torch.equal(again.codebooks, codec.codebooks)
    x = tone(200, 0.5, 6)
    assert torch.equal(again.encode(x, RATE), codec.encode(x, RATE))
    summary = json.loads((trained[1].parent / "summary.json").read_text())
    assert summary["tokens_per_s"] == 200 and summary["eval"]["loss"] > 0
    assert (trained[1].parent / "metrics.csv").read_text().startswith("step,loss,stage_0,stage_1")


def test_prepare_encodes_again_with_a_codec_retrained_in_place(trained, codec, tmp_path):
    """`omnivox prepare` caches answer frames per codec: a codec replaced at the same path (a retrained codec
    copied over the old export) must not get the old codec's cached frames."""
    from omnivox.training.prepare import prepare

    root = trained[0]
    place = codec.save(tmp_path / "codec")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "task": "T1A2", "question_text": "x", "answer_text": "x",
                                    "answer_audio": str(root / "audio" / "eval0.wav")}) + "\n")
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "tiny_stage3_finetune.yaml",
                         [f"output_dir={tmp_path / 'run'}", f"prepare.codec={{_component_: mel, model: {place}}}"])

    def frames() -> np.ndarray:
        out = prepare(recipe, manifest, log=lambda _: None, progress=False)
        return np.load(tmp_path / json.loads(out.read_text())["answer_frames"])

    first = frames()
    other = MelCodec(codec.config, codec.codebooks.flip(1), codec.mean)  # the same codes in reverse order
    other.save(place)
    again = frames()
    x, rate = soundfile.read(root / "audio" / "eval0.wav", dtype="float32")
    assert np.array_equal(again, other.encode(x, rate).numpy()) and not np.array_equal(again, first)


def test_bad_codec_directories_say_how_to_get_one(tmp_path):
    with pytest.raises(CheckpointError, match="omnivox train recipes/codec_mel.yaml"):
        omnivox.create("codecs", "mel", model=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"codec": "mel", "n_mel": 80}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="unknown key 'n_mel'"):
        MelCodec.load(tmp_path)
    with pytest.raises(ConfigError, match="context_frames"):
        MelCodecConfig(context_frames=1)


def test_training_lowers_the_residual_and_more_stages_help(trained):
    rows = (trained[1].parent / "metrics.csv").read_text().splitlines()
    header, first, last = rows[0].split(","), rows[1].split(","), rows[-1].split(",")
    loss, stage0, stage1 = (header.index(k) for k in ("loss", "stage_0", "stage_1"))
    assert float(last[loss]) < float(first[loss])
    assert float(last[stage1]) < float(last[stage0])


# ---- resume -------------------------------------------------------------------------------------------
def test_resume_continues_exactly(trained, tmp_path):
    root = trained[0]
    whole = MelCodec.load(trained[1])
    recipe = write_recipe(root)
    overrides = [f"output_dir={tmp_path / 'split'}"]
    train(load_recipe(recipe, overrides + ["training.max_steps=20"]))
    summary = train(load_recipe(recipe, overrides + ["resume=auto"]))
    assert summary["steps"] == 30
    assert torch.equal(MelCodec.load(summary["export"]).codebooks, whole.codebooks)


def test_resume_refuses_other_data(trained, tmp_path):
    root = trained[0]
    recipe = write_recipe(root)
    out = f"output_dir={tmp_path / 'run'}"
    train(load_recipe(recipe, [out, "training.max_steps=10"]))
    with pytest.raises(CheckpointError, match="other data"):
        train(load_recipe(recipe, [out, "resume=auto", f"data.path={root / 'eval.codec.jsonl'}"]))


@pytest.mark.slow
def test_omnivox_train_resumes_after_sigkill(trained, tmp_path):
    """`omnivox train` killed (SIGKILL) after a checkpoint, then `resume=auto`: the same codec as one run."""
    root = trained[0]
    recipe = write_recipe(root, steps=3000, checkpoint_every=25, log_every=100)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "omnivox.cli.main", "train", str(recipe), f"output_dir={run}"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "latest").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read().decode()
    assert not (run / "summary.json").exists(), "killed too late: the run had finished"
    killed_at = (run / "checkpoints" / "latest").read_text()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([*cmd, "resume=auto"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"resumed from {run / 'checkpoints' / killed_at}" in out.stdout
    uninterrupted = train(load_recipe(recipe, [f"output_dir={tmp_path / 'whole'}"]))
    assert torch.equal(MelCodec.load(run / "export").codebooks, MelCodec.load(uninterrupted["export"]).codebooks)


# ---- the real thing -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.weights
def test_espeak_round_trip_keeps_the_yardstick_wer(tmp_path, single_thread):
    """A reduced codec recipe (256 codes, 60 steps) trained on espeak-ng speech; held-out voices and rates
    transcribed as recorded and after the codec: WER at most 1.5x the original's."""
    from omnivox.plugins.fw_transcriber import Transcriber, word_error_rate
    from omnivox.training.corpus import CorpusConfig, build_corpus

    corpus = tmp_path / "corpus"
    build_corpus(corpus, CorpusConfig(sentences=60, qa_pairs=10, sample_rate=16000, seed=3), progress=False)
    repo = Path(__file__).resolve().parents[1]
    summary = train(load_recipe(repo / "recipes" / "codec_mel.yaml", [
        f"output_dir={tmp_path / 'run'}", f"data.path={corpus / 'train.codec.jsonl'}",
        f"eval_data.path={corpus / 'validation.codec.jsonl'}", "model.codebook_size=256", "training.max_steps=60",
        "training.batch_size=4096", "training.eval_every=0", "progress=false"]))
    codec = omnivox.create("codecs", "mel", model=summary["export"])
    lines = [json.loads(line) for line in (corpus / "test.codec.jsonl").read_text().splitlines()]
    asr = Transcriber(threads=2, language="en")
    texts, original, coded = [], [], []
    for line in lines[:16]:
        pcm, rate = soundfile.read(corpus / line["answer_audio"], dtype="float32")
        texts.append(line["answer_text"])
        original.append(asr.transcribe(pcm, rate))
        coded.append(asr.transcribe(codec.decode(codec.encode(pcm, rate)).numpy(), codec.grid.sample_rate))
    wer_original, wer_coded = word_error_rate(texts, original), word_error_rate(texts, coded)
    print(f"WER original {wer_original:.3f}, after the codec {wer_coded:.3f}")
    assert wer_coded <= 1.5 * wer_original, (wer_original, wer_coded, coded)


@pytest.mark.parametrize("name", ["codec_mel.yaml", "demo_codec.yaml"])
def test_codec_recipe_validates_and_names_the_codec_trainer(name):
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name)
    assert recipe["trainer"]["_component_"] == "omnivox.training.codec_trainer.MelCodecRecipe"
    config = MelCodecConfig.from_dict({k: v for k, v in recipe["model"].items() if k != "_component_"})
    assert config.grid().n_slots == 8 and recipe["training"]["max_steps"] <= 300


def test_an_lm_with_the_codecs_stream_count_speaks_through_it(codec):
    """The LM's audio streams follow the codec's grid: a tiny random LM with 4 streams of 16 codes feeds the
    trained tiny codec through the streaming CodecStage; every generated frame is voiced."""
    import asyncio

    from omnivox.core.kernel.checkpoint import OmniModel
    from omnivox.core.kernel.config import OmniConfig
    from omnivox.core.runtime.events import AudioOut, TextIn
    from omnivox.core.runtime.model_stages import CodecStage, LMStage
    from omnivox.core.runtime.testing import make_turn, of_type, run_pipeline
    from omnivox.plugins.random_models import never_emit_audio_specials

    grid = codec.grid
    config = OmniConfig.tiny(audio_streams=grid.n_slots, codebook_size=grid.codebook_size)
    lm = LMStage("text-delay", model=never_emit_audio_specials(OmniModel.random(config, seed=0)), task="T1A2",
                 max_steps=24)
    out = asyncio.run(run_pipeline([lm, CodecStage(codec)], make_turn(0, [TextIn("hi")])))
    frames = lm.results[("default", 0)].frames
    assert frames.shape[1] == grid.n_slots and frames.shape[0] > 0
    assert sum(len(e.audio) // 2 for e in of_type(out, AudioOut)) == frames.shape[0] * grid.samples_per_frame
