"""Mimi codec plugin (`mimi`): transformers' MimiModel (kyutai/mimi: 24 kHz, 12.5 frames/s, causal).

Token grid: one slot per codebook per frame (`n_codebooks`, default 8, of the model's 32 quantizers), so a
model built for it has 8 audio streams. Input is mixed to mono and resampled with scipy.signal.resample_poly.

Streaming decode is exact because every part of Mimi's decoder is causal: the 2x transposed-conv
upsampler keeps its last latent, the decoder transformer keeps its KV cache (sliding window), and the
SEANet conv decoder is re-run on a window of the last few transformer steps that covers its left
receptive field (computed from the layers' kernels, dilations and strides), keeping only the new
samples. Each push returns one whole frame of final audio (no lookahead); flush() has nothing left."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from omnivox.core.audio import convert
from omnivox.core.contracts.codec import TokenGrid, codes_to_frames, validate_frame, validate_frames
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError

DEFAULT_MODEL = "kyutai/mimi"


class MimiCodec:
    """A MimiModel behind the codec contract, using its first `n_codebooks` quantizers."""

    def __init__(self, model, n_codebooks: int = 8):
        config = model.config
        low = max(1, config.num_semantic_quantizers)
        if not low <= n_codebooks <= config.num_quantizers:
            raise ConfigError(
                f"mimi: n_codebooks={n_codebooks}, the model has {config.num_quantizers} quantizers",
                f"use {low}..{config.num_quantizers} (8 is Moshi's setting)",
            )
        self.model = model.eval()
        self.n_codebooks = n_codebooks
        self.grid = TokenGrid(
            n_codebooks=n_codebooks,
            codebook_size=int(config.codebook_size),
            frame_rate=float(config.frame_rate),
            sample_rate=int(config.sampling_rate),
            slots=tuple((book, 0) for book in range(n_codebooks)),
        )

    @classmethod
    def load(
        cls, model: str | None = None, config: dict | None = None, *, n_codebooks: int = 8, seed: int | None = None
    ) -> MimiCodec:
        """`config`: MimiConfig fields, random weights (seeded by `seed`). Otherwise `model`: a local dir or
        Hugging Face id for MimiModel.from_pretrained (default kyutai/mimi)."""
        from transformers import MimiConfig, MimiModel

        if config is not None:
            if model is not None:
                raise ConfigError("mimi codec: both `model` and `config` given", "give one of them")
            if seed is not None:
                torch.manual_seed(seed)
            try:
                return cls(MimiModel(MimiConfig(**config)), n_codebooks)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"mimi codec config: {exc}", "use MimiConfig's field names and values") from None
        model = model or DEFAULT_MODEL
        try:
            mimi = MimiModel.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot load Mimi model {model!r}: {str(exc).splitlines()[0]}",
                "pass a local directory saved by MimiModel.save_pretrained (config.json + weights), or go online",
            ) from None
        return cls(mimi, n_codebooks)

    def encode(self, pcm, sample_rate: int) -> Tensor:
        """PCM -> frames (n_frames, n_codebooks); audio is padded to whole frames."""
        x = torch.from_numpy(convert(pcm, sample_rate, to_rate=self.grid.sample_rate, mono=True))
        with torch.inference_mode():
            codes = self.model.encode(x[None, None], num_quantizers=self.n_codebooks).audio_codes  # (1, K, T)
        return codes_to_frames(list(codes[0]), self.grid)

    def decode(self, frames: Tensor) -> Tensor:
        """(n_frames, n_codebooks) -> float32 (n_frames * samples_per_frame,)."""
        frames = validate_frames(frames, self.grid)
        with torch.inference_mode():
            audio = self.model.decode(frames.T[None]).audio_values  # (1, 1, samples)
        return audio[0, 0, : frames.shape[0] * self.grid.samples_per_frame].float().contiguous()

    def stream_decoder(self) -> MimiStreamDecoder:
        return MimiStreamDecoder(self)


def seanet_context(seanet) -> int:
    """Input steps of left context the causal SEANet decoder needs: each stride-1 conv reaches back
    (kernel-1)*dilation steps of its own rate, each transposed conv one input step; summed in input steps."""
    from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiConvTranspose1d, MimiResnetBlock

    reach, upsampling = 0.0, 1
    for layer in seanet.layers:
        convs = list(layer.modules()) if isinstance(layer, MimiResnetBlock) else [layer]
        for conv in convs:
            if isinstance(conv, MimiConv1d):
                if conv.conv.stride[0] != 1:
                    raise ConfigError(
                        "mimi decoder conv with stride > 1 is not streamable", "decode whole with codec.decode"
                    )
                reach += (int(conv.kernel_size) - 1) / upsampling
        if isinstance(layer, MimiConvTranspose1d):
            reach += 1 / upsampling
            upsampling *= layer.conv.stride[0]
    return math.ceil(reach) + 1


class MimiStreamDecoder:
    """Frame in, one frame of final audio out; equals MimiCodec.decode of all frames (float tolerance)."""

    def __init__(self, codec: MimiCodec):
        from transformers import DynamicCache

        config = codec.model.config
        if not config.use_causal_conv:
            raise ConfigError("mimi streaming needs use_causal_conv=True", "decode whole with codec.decode")
        self.codec = codec
        self.decoder = codec.model.decoder  # MimiDecoderModel: upsample, decoder_transformer, decoder_seanet
        self.cache = DynamicCache(config=self.decoder.config)
        self.context = seanet_context(self.decoder.decoder_seanet)
        self.prev: Tensor | None = None  # last latent, for the upsampler's overlap
        self.window: Tensor | None = None  # (1, hidden, <= context + steps) transformer outputs
        self.hop = int(math.prod(config.upsampling_ratios))

    def push(self, frame) -> Tensor:
        frame = validate_frame(frame, self.codec.grid)  # (1, K)
        with torch.inference_mode():
            latent = self.codec.model.quantizer.decode(frame.T[None])  # (1, hidden, 1)
            steps = self._upsample(latent)  # (1, hidden, latent_stride)
            hidden = self.decoder.decoder_transformer(steps.transpose(1, 2), cache=self.cache).last_hidden_state
            new = hidden.transpose(1, 2)
            window = new if self.window is None else torch.cat([self.window, new], -1)
            self.window = window[..., -(self.context + new.shape[-1]) :]
            audio = self.decoder.decoder_seanet(self.window)  # causal: the last samples are final
        return audio[0, 0, -new.shape[-1] * self.hop :].float().contiguous()

    def flush(self) -> Tensor:
        """Mimi is causal: every frame's audio was final when it was pushed."""
        return torch.zeros(0)

    def _upsample(self, latent: Tensor) -> Tensor:
        upsample = self.decoder.upsample
        if upsample is None:
            return latent
        s = upsample.conv.stride[0]
        prev = torch.zeros_like(latent) if self.prev is None else self.prev
        self.prev = latent
        full = upsample.conv(torch.cat([prev, latent], -1))  # (1, hidden, 3s): the new latent's block is [s, 2s)
        return full[..., s : 2 * s]


def make_mimi_codec(
    model: str | None = None, config: dict | None = None, n_codebooks: int = 8, seed: int | None = None
) -> MimiCodec:
    """Factory for the registry: see MimiCodec.load."""
    return MimiCodec.load(model, config, n_codebooks=n_codebooks, seed=seed)


@hookimpl
def register_codecs(registry):
    registry.add("mimi", make_mimi_codec, description="Mimi (transformers MimiModel, kyutai/mimi), 8 codebooks")
