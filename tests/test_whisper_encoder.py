"""Whisper encoder plugin: same features as `whisper.Whisper.embed_audio` on the same weights, upstream's
frame count, any rate/channels in, explicit handling of audio over 30 s, clear errors."""

from __future__ import annotations

import dataclasses
import urllib.error

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions

from omnivox.core.contracts.encoder import AudioEncoder
from omnivox.core.contracts.manager import PluginManager
from omnivox.core.errors import CheckpointError, ConfigError, InputError, PluginError
from omnivox.plugins.whisper_encoder import load_whisper_encoder

TINY = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
    n_vocab=64, n_text_ctx=8, n_text_state=32, n_text_head=2, n_text_layer=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random tiny openai-whisper model and its checkpoint file in whisper's own format."""
    torch.manual_seed(0)
    model = whisper.Whisper(TINY).eval()
    path = tmp_path_factory.mktemp("whisper") / "tiny.pt"
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def encoder(tiny_whisper):
    return PluginManager(load="whisper_encoder").create("encoders", "whisper", checkpoint=str(tiny_whisper[1]))


def speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A chirp with noise and an envelope: (samples,) float32."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (x + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def upstream_features(model, pcm16k: np.ndarray) -> torch.Tensor:
    """Upstream Mini-Omni: `load_audio` then `embed_audio(mel)[0][:leng]` (inference.py)."""
    duration_ms = (len(pcm16k) / 16000) * 1000
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(pcm16k))
    with torch.no_grad():
        return model.embed_audio(mel.unsqueeze(0))[0][: int(duration_ms / 20) + 1]


def test_features_equal_embed_audio(tiny_whisper, encoder):
    model, _ = tiny_whisper
    pcm = speechlike(2.39)
    features = encoder.encode(pcm, 16000)
    expected = upstream_features(model, pcm)
    assert features.dtype == torch.float32 and features.shape == (120, TINY.n_audio_state)  # int(119.5) + 1
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_contract_attributes(encoder):
    assert isinstance(encoder, AudioEncoder)
    assert (encoder.feature_dim, encoder.sample_rate, encoder.frame_rate) == (32, 16000, 50.0)


def test_only_the_encoder_is_loaded(tiny_whisper, encoder):
    model, _ = tiny_whisper
    ours = sum(p.numel() for p in encoder.encoder.parameters())
    assert ours == sum(p.numel() for p in model.encoder.parameters())
    assert ours < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("seconds, frames", [(0.3, 16), (0.319, 16), (1.0, 51), (7.5, 376), (29.9, 1496)])
def test_frame_count_matches_upstream(encoder, seconds, frames):
    n = round(seconds * 16000)
    assert int((n / 16000) * 1000 / 20) + 1 == frames  # upstream's load_audio formula
    assert encoder.num_frames(n, 16000) == frames
    assert encoder.encode(speechlike(seconds), 16000).shape == (frames, 32)
    # the same duration at 44.1 kHz stereo gives the same count
    stereo = np.stack([speechlike(seconds, 44100), speechlike(seconds, 44100, seed=1)])
    assert encoder.num_frames(stereo.shape[1], 44100) == frames
    assert encoder.encode(stereo, 44100).shape == (frames, 32)


def test_exactly_30_s_gives_one_full_window(encoder):
    assert encoder.num_frames(480000, 16000) == 1500  # upstream's slice [:1501] of 1500 frames


def test_channels_are_mixed_to_mono(encoder):
    left, right = speechlike(1.0, seed=1), speechlike(1.0, seed=2)
    mixed = encoder.encode(np.stack([left, right]), 16000)
    torch.testing.assert_close(mixed, encoder.encode((left + right) / 2, 16000), rtol=0, atol=0)


def test_other_rates_are_resampled(encoder):
    at16k = encoder.encode(speechlike(1.5, 16000), 16000)
    at48k = encoder.encode(speechlike(1.5, 48000), 48000)
    assert at48k.shape == at16k.shape
    cos = torch.nn.functional.cosine_similarity(at48k, at16k, dim=-1)
    assert cos.min() > 0.98


def test_int16_and_tensor_input(encoder):
    pcm = speechlike(0.8)
    as_int16 = np.round(pcm * 32767).astype(np.int16)
    torch.testing.assert_close(encoder.encode(as_int16, 16000), encoder.encode(pcm, 16000), rtol=0, atol=2e-3)
    torch.testing.assert_close(encoder.encode(torch.from_numpy(pcm), 16000), encoder.encode(pcm, 16000))


def test_long_input_is_split_into_30_s_windows(tiny_whisper, encoder):
    model, _ = tiny_whisper
    pcm = speechlike(65.0)
    assert encoder.num_frames(len(pcm), 16000) == 1500 + 1500 + 251
    features = encoder.encode(pcm, 16000)
    assert features.shape == (3251, 32)
    torch.testing.assert_close(features[1500:3000], upstream_features(model, pcm[480000:960000]), rtol=0, atol=1e-6)
    torch.testing.assert_close(features[3000:], upstream_features(model, pcm[960000:]), rtol=0, atol=1e-6)


def test_long_input_error_mode(tiny_whisper):
    strict = load_whisper_encoder(tiny_whisper[1], long_input="error")
    with pytest.raises(InputError, match=r"30\.50 s long.*at most 30 s"):
        strict.encode(speechlike(30.5), 16000)
    assert strict.num_frames(480000, 16000) == 1500
    with pytest.raises(ConfigError, match="long_input='cut'"):
        load_whisper_encoder(tiny_whisper[1], long_input="cut")


@pytest.mark.parametrize(
    "pcm, match",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 0), np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2] * 100, np.float32), "100 NaN/Inf"),
        (np.array([0.1, np.inf, -np.inf] * 100, np.float32), "200 NaN/Inf"),
        (np.zeros((16000, 2), np.float32), r"looks like \(samples, channels\)"),
        (np.array(["a", "b"]), "dtype"),
    ],
)
def test_bad_audio(encoder, pcm, match):
    with pytest.raises(InputError, match=match):
        encoder.encode(pcm, 16000)


def test_empty_frame_count_is_an_error(encoder):
    with pytest.raises(InputError, match="empty"):
        encoder.num_frames(0, 16000)


def test_random_dims_are_seeded():
    dims = {k: v for k, v in dataclasses.asdict(TINY).items() if not k.startswith("n_text")}
    pcm = speechlike(0.5)
    a = load_whisper_encoder(dims=dims, seed=3).encode(pcm, 16000)
    b = load_whisper_encoder(dims=dims, seed=3).encode(pcm, 16000)
    c = load_whisper_encoder(dims=dims, seed=4).encode(pcm, 16000)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    before = torch.random.get_rng_state()  # the caller's RNG is left alone
    load_whisper_encoder(dims=dims, seed=5)
    assert torch.equal(before, torch.random.get_rng_state())


def test_bad_dims():
    with pytest.raises(ConfigError, match="lack n_audio_layer"):
        load_whisper_encoder(dims={"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 8, "n_audio_head": 2})
    with pytest.raises(ConfigError, match="n_audio_ctx=100"):
        load_whisper_encoder(dims={**dataclasses.asdict(TINY), "n_audio_ctx": 100})
    with pytest.raises(ConfigError, match="n_mels=40"):
        load_whisper_encoder(dims={**dataclasses.asdict(TINY), "n_mels": 40})
    with pytest.raises(ConfigError, match="not both"):
        load_whisper_encoder("small", dims=dataclasses.asdict(TINY))


def test_checkpoint_directory_with_small_pt(tiny_whisper, tmp_path):
    (tmp_path / "small.pt").write_bytes(tiny_whisper[1].read_bytes())
    assert load_whisper_encoder(tmp_path).feature_dim == 32
    with pytest.raises(CheckpointError, match="no small.pt in"):
        load_whisper_encoder(tmp_path / "..")


def test_corrupt_and_foreign_checkpoints(tmp_path):
    junk = tmp_path / "small.pt"
    junk.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(CheckpointError, match=f"cannot read whisper checkpoint {junk}"):
        load_whisper_encoder(junk)
    foreign = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="is not an openai-whisper checkpoint"):
        load_whisper_encoder(foreign)
    mismatched = tmp_path / "mismatched.pt"
    state = {"encoder.conv1.weight": torch.zeros(3)}
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": state}, mismatched)
    with pytest.raises(CheckpointError, match="does not fit its own dims"):
        load_whisper_encoder(mismatched)


def test_unknown_checkpoint_name_lists_models():
    with pytest.raises(CheckpointError, match="no whisper checkpoint file 'smal'") as err:
        load_whisper_encoder("smal")
    assert "small" in err.value.fix and "large-v3" in err.value.fix


def test_offline_download_says_where_to_put_small_pt(monkeypatch, tmp_path):
    def offline(url, root, in_memory):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(whisper, "_download", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="cannot download whisper model 'small'") as err:
        load_whisper_encoder()
    assert str(tmp_path / "whisper" / "small.pt") in err.value.fix


def test_unknown_encoder_name_lists_valid_ones():
    with pytest.raises(PluginError, match="unknown encoder 'whispr'; valid choices: whisper"):
        PluginManager(load="whisper_encoder").create("encoders", "whispr")


def test_half_precision_checkpoint_like_small_pt(tiny_whisper, tmp_path):
    """Released whisper checkpoints store float16 weights: we load them as `whisper.load_model` does."""
    model, _ = tiny_whisper
    path = tmp_path / "half.pt"
    half = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": half}, path)
    reference = whisper.load_model(str(path), device="cpu").eval()
    pcm = speechlike(3.3)
    ours = load_whisper_encoder(path).encode(pcm, 16000)
    torch.testing.assert_close(ours, upstream_features(reference, pcm), rtol=0, atol=1e-6)
    assert not torch.allclose(ours, upstream_features(model, pcm), atol=1e-6)  # the rounding did matter


def test_bad_sample_rate(encoder):
    with pytest.raises(InputError, match="bad sample rate 0"):
        encoder.num_frames(100, 0)
    with pytest.raises(InputError, match="bad sample rate 16000.0"):
        encoder.encode(speechlike(0.1), 16000.0)


def test_features_can_feed_a_trained_adapter(encoder):
    adapter = torch.nn.Linear(32, 4)
    adapter(encoder.encode(speechlike(0.2), 16000)).sum().backward()
    assert adapter.weight.grad is not None


@pytest.fixture(scope="module")
def trimmed(tiny_whisper):
    return PluginManager(load="whisper_encoder").create("encoders", "whisper", checkpoint=str(tiny_whisper[1]),
                                                        trim=True)


def test_trimmed_encoding_is_whispers_encoder_on_the_kept_mel_frames(tiny_whisper, encoder, trimmed):
    """trim=True: T frames of the same width, computed by whisper's own encoder over only the 2T mel frames
    they come from (positional embeddings 0..T-1); the default stays the padded reference."""
    model, _ = tiny_whisper
    pcm = speechlike(2.39)
    features = trimmed.encode(pcm, 16000)
    T = int(2390 / 20) + 1
    assert features.shape == (T, TINY.n_audio_state) == encoder.encode(pcm, 16000).shape
    short = whisper.model.AudioEncoder(TINY.n_mels, T, TINY.n_audio_state, TINY.n_audio_head, TINY.n_audio_layer)
    state = model.encoder.state_dict()
    state["positional_embedding"] = state["positional_embedding"][:T]
    short.load_state_dict(state)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(pcm)))[:, : 2 * T]
    with torch.no_grad():
        torch.testing.assert_close(features, short.eval()(mel[None])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.encode(pcm, 16000), upstream_features(model, pcm), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(features, encoder.encode(pcm, 16000), atol=1e-3)  # the padding is not attended


def test_trimmed_full_windows_equal_the_padded_ones(encoder, trimmed):
    """A whole 30 s window has nothing to trim; over 30 s only the last window is shortened."""
    pcm = speechlike(31.0)
    padded, trim = encoder.encode(pcm, 16000), trimmed.encode(pcm, 16000)
    assert trim.shape == padded.shape == (1500 + 51, TINY.n_audio_state)
    torch.testing.assert_close(trim[:1500], padded[:1500], atol=1e-5, rtol=1e-5)


def test_trim_must_be_a_bool(tiny_whisper):
    with pytest.raises(ConfigError, match="trim='yes'"):
        load_whisper_encoder(tiny_whisper[1], trim="yes")
