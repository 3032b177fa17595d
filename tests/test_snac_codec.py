"""SNAC codec plugin: grid from the config, encode/decode shapes, seamless streaming decode on the real
24 kHz architecture (random weights, deterministic), checkpoints, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnivox.core.contracts.codec import Codec, StreamDecoder, push_frames
from omnivox.core.contracts.manager import PluginManager
from omnivox.core.errors import CheckpointError, ConfigError, InputError
from omnivox.plugins import snac_codec
from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG, SnacCodec

# Tiny configs: hop 4 (rates [2, 2]); 3 codebooks like the 24 kHz model, and 4 like the 32/44 kHz ones.
TINY = dict(
    sampling_rate=8000,
    encoder_dim=4,
    encoder_rates=[2, 2],
    decoder_dim=16,
    decoder_rates=[2, 2],
    attn_window_size=None,
    codebook_size=32,
    codebook_dim=4,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)
TINY4 = dict(TINY, vq_strides=[8, 4, 2, 1])


@pytest.fixture(scope="module")
def tiny():
    return SnacCodec.load(config=TINY, seed=0)


@pytest.fixture(scope="module")
def real():
    """The real 24 kHz architecture with random weights; lookahead 2 frames (the default)."""
    return SnacCodec.load(config=SNAC_24KHZ_CONFIG, seed=0)


def stream(codec, frames) -> list[torch.Tensor]:
    decoder = codec.stream_decoder()
    return [decoder.push(f) for f in frames] + [decoder.flush()]


def boundary_snr(ref, est, b, region=256) -> float:
    r, e = ref[b - region : b + region], est[b - region : b + region]
    return 10 * torch.log10(r.pow(2).sum() / (r - e).pow(2).sum().clamp_min(1e-30)).item()


def test_grid_follows_the_config(real, tiny):
    assert isinstance(real, Codec)
    g = real.grid
    assert (g.n_codebooks, g.codebook_size, g.n_slots, g.sample_rate, g.samples_per_frame) == (3, 4096, 7, 24000, 2048)
    assert g.frame_rate == pytest.approx(11.71875)
    assert tiny.grid.samples_per_frame == 16 and tiny.grid.frame_rate == 500
    two = SnacCodec.load(config=dict(TINY, vq_strides=[2, 1]), seed=0).grid
    assert (two.n_slots, two.slots, two.samples_per_frame) == (3, ((0, 0), (1, 0), (1, 1)), 8)


@pytest.mark.slow  # ~8 s of CPU: the real 24 kHz decoder, 6 frames, four ways
def test_streaming_is_seamless_on_the_real_architecture(real):
    """Default lookahead (2 frames): every boundary region at least 60 dB from whole decode (measured ~77 dB)
    and the same length (tail flushed). Lookahead 1 frame, the low-latency choice: at least 35 dB (measured
    ~40 dB), still far above upstream's independent windows. 3 frames covers the receptive field: exact."""
    n, spf = 6, real.grid.samples_per_frame
    frames = torch.randint(0, 4096, (n, 7), generator=torch.Generator().manual_seed(3))
    whole = real.decode(frames)
    assert whole.shape == (n * spf,) and whole.dtype == torch.float32

    steady = SnacCodec(real.model, first_lookahead_frames=None)  # same weights, lookahead 2 from the start
    assert steady.lookahead_frames == steady.first_lookahead_frames == 2
    parts = stream(steady, frames)
    # push k returns audio up to two frames before the newest frame's end; flush the last two frames
    assert [p.numel() for p in parts] == [0, 0] + [spf] * (n - 2) + [2 * spf]
    ours = torch.cat(parts)
    assert ours.shape == whole.shape
    snrs = [boundary_snr(whole, ours, t * spf) for t in range(1, n)]
    assert min(snrs) >= 60, snrs

    # the default starts with 1 frame: first audio a push sooner, then half a frame a push until 2 frames
    assert (real.lookahead_frames, real.first_lookahead_frames) == (2, 1)
    parts = stream(real, frames)
    assert [p.numel() for p in parts] == [0, spf, spf // 2, spf // 2, spf, spf, 2 * spf]
    started = torch.cat(parts)
    first_ends = [boundary_snr(whole, started, at) for at in (spf, 3 * spf // 2)]
    assert min(first_ends) >= 35, first_ends
    later = [boundary_snr(whole, started, t * spf) for t in range(2, n)]
    assert min(later) >= 60, later

    low_latency = SnacCodec(real.model, lookahead_frames=1)  # same weights
    parts = stream(low_latency, frames)
    assert [p.numel() for p in parts] == [0] + [spf] * (n - 1) + [spf]
    snrs_1 = [boundary_snr(whole, torch.cat(parts), t * spf) for t in range(1, n)]
    assert 35 <= min(snrs_1) < min(snrs), (snrs_1, snrs)

    decoder = steady.stream_decoder()  # several frames per call (CodecStage's chunks): same length, same quality
    chunked = torch.cat([decoder.push_frames(frames[0:1]), decoder.push_frames(frames[1:4]),
                         decoder.push_frames(frames[4:6]), decoder.flush()])
    assert chunked.shape == whole.shape
    assert min(boundary_snr(whole, chunked, t * spf) for t in range(1, n)) >= 60

    upstream = torch.cat([real.decode(frames[0:4]), real.decode(frames[4:6])])  # 4-frame windows, no context
    assert boundary_snr(whole, upstream, 4 * spf) < min(snrs_1) - 10

    assert real.right_reach() == 5120  # 10 latents: depthwise conv 3 + residual units 39*(64+8+2+1) samples
    exact = SnacCodec(real.model, lookahead_frames=3, first_lookahead_frames=None)  # lookahead >= 5120 samples
    torch.testing.assert_close(torch.cat(stream(exact, frames)), whole, atol=1e-5, rtol=0)


def test_streaming_equals_whole_decode_for_any_length(tiny):
    """With the lookahead its receptive field asks for, streaming equals whole decode for every length
    (tail flushed); one frame less is not exact."""
    spf = tiny.grid.samples_per_frame
    frames_needed = -(-tiny.right_reach() // spf)
    exact = SnacCodec(tiny.model, lookahead_frames=frames_needed, first_lookahead_frames=None)
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, frames_needed, frames_needed + 1, 2 * frames_needed + 3):
        frames = torch.randint(0, 32, (n, 7), generator=gen)
        torch.testing.assert_close(torch.cat(stream(exact, frames)), tiny.decode(frames), atol=1e-6, rtol=0)
    for chunks in ([3, 1, 4, 2, 3], [1] * 13, [13]):  # several frames per call: the same audio
        many, decoder = torch.randint(0, 32, (13, 7), generator=gen), exact.stream_decoder()
        parts, at = [], 0
        for k in chunks:
            parts.append(push_frames(decoder, many[at:at + k]))
            at += k
        torch.testing.assert_close(torch.cat([*parts, decoder.flush()]), tiny.decode(many), atol=1e-6, rtol=0)
    short = SnacCodec(tiny.model, lookahead_frames=frames_needed - 1, first_lookahead_frames=None)
    assert not torch.allclose(torch.cat(stream(short, frames)), tiny.decode(frames), atol=1e-6, rtol=0)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 900), rate=st.sampled_from([8000, 16000, 22050, 44100]), channels=st.integers(1, 2))
def test_encode_decode_round_trip_shapes(tiny, n, rate, channels):
    pcm = torch.from_numpy(np.random.default_rng(n).uniform(-0.5, 0.5, (channels, n)).astype(np.float32))
    frames = tiny.encode(pcm if channels > 1 else pcm[0], rate)
    resampled = -(-n * 8000 // rate)  # ceil: resample_poly's output length
    n_frames = -(-resampled // 16)
    assert frames.shape == (n_frames, 7) and frames.dtype == torch.long
    assert 0 <= int(frames.min()) and int(frames.max()) < 32
    audio = tiny.decode(frames)
    assert audio.shape == (n_frames * 16,) and torch.isfinite(audio).all()


def test_four_codebooks_encode_to_15_depth_first_slots():
    codec = SnacCodec.load(config=TINY4, seed=0)
    assert codec.grid.n_slots == 15 and codec.grid.samples_per_frame == 32
    pcm = torch.randn(100) * 0.3
    codes = codec.model.encode(torch.nn.functional.pad(pcm, (0, 28))[None, None])
    frames = codec.encode(pcm, 8000)
    books = [b for b, _ in codec.grid.slots]
    assert books == [0, 1, 2, 3, 3, 2, 3, 3, 1, 2, 3, 3, 2, 3, 3]
    for t in range(frames.shape[0]):
        assert frames[t, 3] == codes[3][0, 8 * t] and frames[t, 14] == codes[3][0, 8 * t + 7]
        assert frames[t, 8] == codes[1][0, 2 * t + 1] and frames[t, 12] == codes[2][0, 4 * t + 3]


def test_deterministic_decoding_bypasses_noise(tiny):
    frames = torch.randint(0, 32, (4, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(tiny.decode(frames), tiny.decode(frames))
    noisy = SnacCodec.load(config=TINY, seed=0, deterministic=False)
    assert not torch.equal(noisy.decode(frames), noisy.decode(frames))


def test_bad_audio_and_frames(tiny):
    with pytest.raises(InputError, match="empty"):
        tiny.encode(torch.zeros(0), 8000)
    with pytest.raises(InputError, match="NaN/Inf"):
        tiny.encode(torch.tensor([0.0, float("nan"), 0.1]), 8000)
    with pytest.raises(InputError, match="NaN/Inf"):
        tiny.encode(torch.tensor([0.0, float("inf")]), 8000)
    with pytest.raises(InputError, match=r"shape \(2, 8\)"):
        tiny.decode(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(InputError, match=r"slot 2 \(codebook 2, offset 0\) holds 32, outside the valid range 0\.\.31"):
        tiny.decode(torch.tensor([[0, 0, 32, 0, 0, 0, 0]]))
    decoder = tiny.stream_decoder()
    assert isinstance(decoder, StreamDecoder)
    with pytest.raises(InputError, match="holds 4100"):
        decoder.push(torch.tensor([0, 0, 0, 0, 4100, 0, 0]))
    with pytest.raises(InputError, match="push one frame"):
        decoder.push(torch.zeros(2, 7, dtype=torch.long))
    decoder.push(torch.zeros(7, dtype=torch.long))
    assert decoder.flush().numel() == 16  # the frame held back by the lookahead
    with pytest.raises(InputError, match="already flushed"):
        decoder.push(torch.zeros(7, dtype=torch.long))


def test_local_dir_checkpoint_loads_and_mismatch_is_named(tmp_path):
    from snac import SNAC

    torch.manual_seed(5)
    model = SNAC(**TINY)
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text(json.dumps(TINY))
    old_names = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): v
        for k, v in model.state_dict().items()
    }
    torch.save(old_names, good / "pytorch_model.bin")  # pre-parametrization weight-norm names, as older saves
    frames = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(2))
    loaded = SnacCodec.load(str(good))
    torch.testing.assert_close(loaded.decode(frames), SnacCodec(model).decode(frames))

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(dict(TINY, codebook_size=64)))
    (other / "pytorch_model.bin").write_bytes((good / "pytorch_model.bin").read_bytes())
    mismatch = r"other/pytorch_model.bin does not fit.*codebook.weight has shape \(32, 4\)"
    with pytest.raises(CheckpointError, match=mismatch):
        SnacCodec.load(str(other))
    (other / "pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        SnacCodec.load(str(other))


def test_bad_configs():
    with pytest.raises(ConfigError, match="snac codec config"):
        SnacCodec.load(config=dict(TINY, vq_stride=[4, 2, 1]))
    with pytest.raises(ConfigError, match="encoder_rates"):
        SnacCodec.load(config=dict(TINY, decoder_rates=[2, 4]))
    attn = SnacCodec.load(config=dict(TINY, attn_window_size=8, decoder_dim=64, encoder_dim=8), seed=0)
    frames = torch.randint(0, 32, (3, 7))
    assert attn.decode(frames).shape == (48,)  # whole decode pads to the attention window
    with pytest.raises(ConfigError, match="attn_window_size=8"):
        attn.stream_decoder()
    with pytest.raises(ConfigError, match="first_lookahead_frames=-1 is negative"):
        SnacCodec.load(config=TINY, first_lookahead_frames=-1)


def test_first_audio_comes_a_push_sooner_and_the_same_however_frames_are_grouped(tiny):
    """The default first lookahead (1 frame) returns audio at the 2nd push, the steady 2 frames at the 3rd. While the
    lookahead grows, frames pushed several at a time are decoded one by one: the same frames, the same audio (the
    codec stage groups frames by timing)."""
    spf = tiny.grid.samples_per_frame
    frames = torch.randint(0, 32, (7, 7), generator=torch.Generator().manual_seed(4))
    steady = SnacCodec(tiny.model, first_lookahead_frames=None)
    assert [p.numel() for p in stream(steady, frames)][:3] == [0, 0, spf]
    one_by_one = stream(tiny, frames)
    assert [p.numel() for p in one_by_one][:5] == [0, spf, spf // 2, spf // 2, spf]
    assert not torch.allclose(torch.cat(one_by_one), torch.cat(stream(steady, frames)), atol=1e-6, rtol=0)
    for chunks in ([3, 1, 1, 1, 1], [4, 1, 1, 1], [2, 2, 1, 1, 1]):  # the growth ends at the 4th frame
        decoder, parts, at = tiny.stream_decoder(), [], 0
        for k in chunks:
            parts.append(push_frames(decoder, frames[at:at + k]))
            at += k
        torch.testing.assert_close(torch.cat([*parts, decoder.flush()]), torch.cat(one_by_one), atol=1e-6, rtol=0)


def test_stream_decoders_reuse_the_weight_layouts_made_at_load(tiny):
    """A turn's stream decoder copies no weights: the upsamplers' layouts are made once, when the codec is built
    (for the 24 kHz model that copy took ~45 ms, on the event loop, at every turn's first frame)."""
    def upsamplers(node):
        if isinstance(node, snac_codec._StreamConvTranspose):
            return [node]
        inner = getattr(node, "nodes", None) or ([node.block] if hasattr(node, "block") else [])
        return [u for child in inner for u in upsamplers(child)]

    made = {id(t) for pair in tiny.stream_layouts.values() for t in pair}
    assert len(made) == 2 * len(TINY["decoder_rates"])  # (now, before) per upsampler, at load
    for decoder in (tiny.stream_decoder(), tiny.stream_decoder()):
        nodes = upsamplers(decoder.graph)
        assert len(nodes) == len(TINY["decoder_rates"])
        assert {id(t) for u in nodes for t in (u.w_now, u.w_before)} == made


def test_registered_as_plugin():
    manager = PluginManager(load="snac_codec")
    codec = manager.create("codecs", "snac", config=TINY, seed=0, lookahead_frames=2)
    assert isinstance(codec, SnacCodec) and (codec.lookahead_frames, codec.first_lookahead_frames) == (2, 1)
    steady = manager.create("codecs", "snac", config=TINY, seed=0, first_lookahead_frames=None)
    assert steady.first_lookahead_frames == 2
