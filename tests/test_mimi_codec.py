"""Mimi codec plugin (transformers MimiModel, tiny random config): 8-slot grid at 12.5 Hz, encode/decode
shapes, streaming decode equal to whole decode, bad input."""

from __future__ import annotations

import pytest
import torch

from omnivox.core.contracts.codec import Codec, StreamDecoder
from omnivox.core.contracts.manager import PluginManager
from omnivox.core.errors import CheckpointError, ConfigError, InputError
from omnivox.plugins.mimi_codec import MimiCodec

# Mimi's real rates (24 kHz, upsampling [8, 6, 5, 4], 12.5 frames/s), tiny widths; a 6-step attention
# window so that streaming runs past the sliding window within a few frames.
TINY = dict(
    hidden_size=32,
    num_filters=4,
    codebook_size=64,
    codebook_dim=16,
    vector_quantization_hidden_dimension=16,
    num_quantizers=8,
    upsample_groups=32,
    num_hidden_layers=2,
    intermediate_size=64,
    num_attention_heads=2,
    num_key_value_heads=2,
    sliding_window=6,
)


@pytest.fixture(scope="module")
def mimi():
    return MimiCodec.load(config=TINY, seed=0)


def test_grid_is_8_codebooks_at_12_5_hz(mimi):
    assert isinstance(mimi, Codec)
    g = mimi.grid
    assert (g.n_codebooks, g.n_slots, g.codebook_size, g.sample_rate, g.frame_rate) == (8, 8, 64, 24000, 12.5)
    assert g.samples_per_frame == 1920 and g.slots == tuple((k, 0) for k in range(8))


def test_encode_decode_shapes(mimi):
    pcm = torch.randn(2, 8000) * 0.1  # stereo 16 kHz, 0.5 s -> 12000 samples at 24 kHz -> 7 frames
    frames = mimi.encode(pcm, 16000)
    assert frames.shape == (7, 8) and frames.dtype == torch.long
    assert 0 <= int(frames.min()) and int(frames.max()) < 64
    audio = mimi.decode(frames)
    assert audio.shape == (7 * 1920,) and audio.dtype == torch.float32


def test_streaming_equals_whole_decode(mimi):
    """Causal decoder: each push returns one frame of final audio; the concatenation equals whole decode
    within 1e-5 (float32; KV-cached vs full attention)."""
    frames = torch.randint(0, 64, (7, 8), generator=torch.Generator().manual_seed(0))
    whole = mimi.decode(frames)
    decoder = mimi.stream_decoder()
    assert isinstance(decoder, StreamDecoder)
    parts = [decoder.push(f) for f in frames]
    assert [p.numel() for p in parts] == [1920] * 7
    assert decoder.flush().numel() == 0
    torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=1e-5)


def test_bad_input(mimi):
    with pytest.raises(InputError, match="empty"):
        mimi.encode(torch.zeros(0), 24000)
    with pytest.raises(InputError, match="NaN/Inf"):
        mimi.encode(torch.tensor([0.1, float("nan")]), 24000)
    with pytest.raises(InputError, match=r"shape \(3, 7\)"):
        mimi.decode(torch.zeros(3, 7, dtype=torch.long))
    with pytest.raises(InputError, match=r"slot 7 \(codebook 7, offset 0\) holds 64, outside the valid range 0\.\.63"):
        mimi.stream_decoder().push(torch.tensor([0, 0, 0, 0, 0, 0, 0, 64]))
    with pytest.raises(ConfigError, match="n_codebooks=9"):
        MimiCodec(mimi.model, n_codebooks=9)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot load Mimi model"):
        MimiCodec.load(str(tmp_path))


def test_registered_as_plugin(mimi, tmp_path):
    mimi.model.save_pretrained(tmp_path)
    codec = PluginManager(load="mimi_codec").create("codecs", "mimi", model=str(tmp_path), n_codebooks=4)
    assert codec.grid.n_slots == 4
    frames = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(codec.decode(frames), MimiCodec(mimi.model, n_codebooks=4).decode(frames))
