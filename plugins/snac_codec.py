"""SNAC codec plugin (`snac`): hubertsiuzdak/snac_24khz or any SNAC config, with stateful streaming decode.

Token grid: from the config's vq_strides, slots depth-first (core.codec.depth_first_slots): 7 slots for
[4, 2, 1], 15 for [8, 4, 2, 1]. Input audio is mixed to mono and resampled with
scipy.signal.resample_poly (core.audio.convert).

Deterministic decoding (`deterministic=True`): the decoder's NoiseBlocks are bypassed (their noise term
is dropped), so decode is a pure function of the codes and streaming can reproduce it.

Streaming decode. SNAC's decoder is non-causal: each output sample depends on latents on both sides.
Its receptive field per side (24 kHz model, hop 512 samples per latent): the depthwise k7 conv at the
latent rate reaches 3 latents (1536 samples); each DecoderBlock(stride s) is a ConvTranspose(k=2s)
(one input step) then ResidualUnits with k7 convs at dilations 1, 3, 9, i.e. 39 steps of its output
rate: 39 * (64 + 8 + 2 + 1) = 2925 samples; the final k7 conv 3. Together ~4.7k samples, 10 latents
(`right_reach()` = 5120, computed from the layers): 2.3 coarse frames. So exact equality needs 3 frames
of lookahead; with less, the samples just before each frame boundary miss part of their right context.
`lookahead_frames` sets the trade-off; left context is never cut. Default 2 frames (170 ms): ~77 dB from
whole decode. `lookahead_frames=1` is the low-latency choice (85 ms, ~40 dB). Measured by
benchmarks/bench_snac_streaming.py (random weights; min SNR over +-256 samples around every frame
boundary vs whole decode); upstream's independent 4-frame windows: 16 dB.
`first_lookahead_frames` (default 1) starts an utterance sooner: its first audio is returned with that
lookahead, one frame (one LM step) before the steady lookahead would allow, and the lookahead then grows by half
a frame per frame pushed until it is `lookahead_frames`, so every push after the first still returns audio
(half a frame each during the growth). Only the ends of those first returns are less exact: 41-44 dB from whole
decode at the first, 49-52 at the second (24 kHz model; tests/test_snac_codec.py holds them at >= 35).

Rather than re-decoding overlapping windows (cost ~ (context + 1) frames per frame), the decoder runs as
a stream of stateful layers (`_Stream*` below): every conv keeps the last (kernel-1)*dilation inputs,
every transposed conv its last input, every residual unit the skip inputs it still has to add, so each
latent is processed once and the exact part of the output grows incrementally. The part not yet exact
but due under the lookahead is computed speculatively, as if the stream ended there (the layers' zero
padding), in the same kernel calls, without touching the states; flush() emits exactly that
end-of-stream tail, so the total output equals whole-utterance decode. Extra compute per push is that
speculative span: (right reach - lookahead) samples at every layer (0.5 frame at lookahead 2, 1.5 at
1), plus one read of the big first upsampler's weights. The transposed and kernel-1 convs run as
time-major matmuls (F.linear), which read their weights at full speed on the few latents of a push.
Local attention (32/44 kHz models) is not streamable this way: stream_decoder() refuses those configs;
encode/decode work for them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnivox.core.audio import convert
from omnivox.core.contracts.codec import (
    TokenGrid,
    codes_to_frames,
    depth_first_slots,
    frames_to_codes,
    validate_frame,
    validate_frames,
)
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError, InputError

DEFAULT_MODEL = "hubertsiuzdak/snac_24khz"
SNAC_24KHZ_CONFIG = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}


class SnacCodec:
    """A SNAC model behind the codec contract. Build with `SnacCodec.load(...)` or `SnacCodec(model)`; the
    model is changed in place (weight norm folded into plain weights; with `deterministic`, noise bypassed)."""

    def __init__(self, model, *, deterministic: bool = True, lookahead_frames: float = 2.0,
                 first_lookahead_frames: float | None = 1.0):
        from snac.layers import NoiseBlock

        if lookahead_frames < 0:
            raise ConfigError(
                f"lookahead_frames={lookahead_frames} is negative", "use 0 or more (default 2; 1 for low latency)"
            )
        first = lookahead_frames if first_lookahead_frames is None else min(first_lookahead_frames, lookahead_frames)
        if first < 0:
            raise ConfigError(f"first_lookahead_frames={first_lookahead_frames} is negative",
                              "use 0 or more (default 1; equal to lookahead_frames: no faster start)")
        self.model = model.eval()
        self.deterministic = deterministic
        self.lookahead_frames, self.first_lookahead_frames = lookahead_frames, first
        strides = list(model.vq_strides)
        hop = int(math.prod(model.decoder_rates))
        if hop != int(model.hop_length):
            raise ConfigError(
                f"SNAC config: decoder_rates {model.decoder_rates} (x{hop}) do not invert encoder_rates "
                f"{model.encoder_rates} (x{model.hop_length})",
                "use a config whose encoder and decoder rates have the same product",
            )
        self.grid = TokenGrid(
            n_codebooks=len(strides),
            codebook_size=int(model.codebook_size),
            frame_rate=model.sampling_rate / (hop * strides[0]),
            sample_rate=int(model.sampling_rate),
            slots=depth_first_slots(strides),
        )
        for module in model.modules():  # weight norm -> plain weights: same values, computed once
            if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
                torch.nn.utils.parametrize.remove_parametrizations(module, "weight")
            if deterministic and isinstance(module, NoiseBlock):
                module.forward = _identity
        self.stream_layouts: dict = {}  # weights as the stream decoders read them: made here, not at a turn's start
        if not model.attn_window_size:
            _stream_graph(model.decoder.model, self.stream_layouts)

    @classmethod
    def load(cls, model: str | None = None, config: dict | None = None, *, seed: int | None = None, **kw):
        """`config` dict: SNAC(**config) with random weights (seeded by `seed`). Otherwise `model`: a local
        dir with config.json + pytorch_model.bin, or a Hugging Face id (default hubertsiuzdak/snac_24khz)."""
        from snac import SNAC

        if config is not None:
            if model is not None:
                raise ConfigError("snac codec: both `model` and `config` given", "give one of them")
            if seed is not None:
                torch.manual_seed(seed)
            try:
                return cls(SNAC(**config), **kw)
            except TypeError as exc:
                raise ConfigError(f"snac codec config: {exc}", f"use the keys of {sorted(SNAC_24KHZ_CONFIG)}") from None
        model = model or DEFAULT_MODEL
        if os.path.isdir(model):
            cfg_path, weights_path = Path(model, "config.json"), Path(model, "pytorch_model.bin")
        else:
            from huggingface_hub import hf_hub_download

            try:
                cfg_path = Path(hf_hub_download(model, "config.json"))
                weights_path = Path(hf_hub_download(model, "pytorch_model.bin"))
            except Exception as exc:  # offline, unknown repo, ...
                raise CheckpointError(
                    f"cannot fetch SNAC model {model!r} from the Hugging Face hub ({type(exc).__name__})",
                    "pass a local directory holding config.json and pytorch_model.bin",
                ) from None
        for path in (cfg_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"SNAC checkpoint file {path} is missing", "download the full model dir")
        try:
            cfg = json.loads(cfg_path.read_text())
            snac = SNAC(**cfg)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{cfg_path} is not a SNAC config: {exc}", "use the model's config.json") from None
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read {weights_path}: {exc}", "re-download the checkpoint") from None
        _check_state(snac, state, weights_path)
        snac.load_state_dict(state)
        return cls(snac, **kw)

    # ---- contract ---------------------------------------------------------------------------------
    def encode(self, pcm, sample_rate: int) -> Tensor:
        """PCM -> frames (n_frames, n_slots); the audio is zero-padded to whole coarse frames."""
        x = torch.from_numpy(convert(pcm, sample_rate, to_rate=self.grid.sample_rate, mono=True))
        with torch.inference_mode():
            codes = self.model.encode(x[None, None])  # list of (1, T_k)
        return codes_to_frames([c[0] for c in codes], self.grid)

    def decode(self, frames: Tensor) -> Tensor:
        """(n_frames, n_slots) -> float32 (n_frames * samples_per_frame,)."""
        window = self.model.attn_window_size
        with torch.inference_mode():
            z = self.latents(frames)  # (1, latent_dim, n_frames * strides[0])
            pad = -z.shape[-1] % window if window else 0  # local attention needs whole windows (zero-padded)
            audio = self.model.decoder(F.pad(z, (0, pad)))
        return audio[0, 0, : z.shape[-1] * self.model.hop_length].float().contiguous()

    def stream_decoder(self) -> SnacStreamDecoder:
        return SnacStreamDecoder(self)

    def right_reach(self) -> int:
        """Samples of future the decoder's output depends on (its right receptive field), from the layers'
        kernels, dilations and strides: lookahead_frames >= ceil(right_reach / samples_per_frame) is exact."""
        graph, hop = _stream_graph(self.model.decoder.model, self.stream_layouts), int(self.model.hop_length)
        upto = 1000 * hop
        return graph.need(upto) * hop - upto

    def latents(self, frames: Tensor) -> Tensor:
        """(n_frames, n_slots) -> decoder input (1, latent_dim, n_frames * strides[0])."""
        codes = [c[None] for c in frames_to_codes(frames, self.grid)]
        return self.model.quantizer.from_codes(codes)


def _identity(x: Tensor) -> Tensor:
    return x


def _check_state(snac: nn.Module, state: dict, path: Path) -> None:
    """CheckpointError naming the file and the first mismatching tensor (missing, extra, wrong shape).
    Old weight-norm names (`weight_g`/`weight_v`, which torch converts on load) count as the new ones."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict", "use pytorch_model.bin")
    renamed = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
    theirs = {}
    for key, value in state.items():
        for old, new in renamed.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        theirs[key] = value
    own = snac.state_dict()
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    wrong = [
        (k, tuple(theirs[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    if missing or extra or wrong:
        if wrong:
            detail = f"tensor {wrong[0][0]} has shape {wrong[0][1]}, the config needs {wrong[0][2]}"
        else:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(
            f"{path} does not fit the SNAC config beside it ({len(wrong)} shape mismatches, {len(missing)} "
            f"missing, {len(extra)} unexpected tensors): {detail}",
            "use the config.json saved with these weights (is this a checkpoint of another codec config?)",
        )


# ---- streaming layers ---------------------------------------------------------------------------------
# Each node maps (1, C, L) chunks. run(x, n, upto): the first n columns of x are new exact inputs (committed
# to the node's state), the rest continue them speculatively; returns (y, n_out): the outputs computable now,
# of which the first n_out are exact and the rest are those that would follow if the stream ended after x
# (the layers' zero padding), computed only up to absolute output position `upto` (None: to the end). Exact
# and speculative columns go through the same kernel calls in one buffer. need(upto): the absolute input
# position those outputs read up to.


class _StreamPointwise:
    """Tanh, bypassed noise, k=1 convs: no context."""

    def __init__(self, fn):
        self.fn = fn

    def run(self, x: Tensor, n: int, upto: int | None):
        return (self.fn(x) if x.shape[-1] else x), n

    def need(self, upto: int) -> int:
        return upto


def _snake(module: nn.Module):
    """Snake1d, x + sin(alpha x)^2 / (alpha + 1e-9), with in-place steps: bit-identical to snac's snake,
    two buffers fewer per call."""
    alpha = module.alpha.detach()  # (1, C, 1)
    inverse = (alpha + 1e-9).reciprocal()

    def run(x: Tensor) -> Tensor:  # (1, C, n) -> (1, C, n)
        y = torch.mul(alpha, x)
        return y.sin_().pow_(2).mul_(inverse).add_(x)

    return run


class _StreamConv:
    """Stride-1 Conv1d with `padding` zeros each side: keeps the last (kernel-1)*dilation exact inputs."""

    def __init__(self, conv: nn.Conv1d):
        self.weight, self.bias = conv.weight, conv.bias
        self.dilation, self.groups = conv.dilation[0], conv.groups
        self.span = (conv.kernel_size[0] - 1) * self.dilation
        self.right_pad = self.span - conv.padding[0]
        self.state = conv.weight.new_zeros(1, conv.in_channels, conv.padding[0])  # left zero padding
        self.n_out = 0

    def run(self, x: Tensor, n: int, upto: int | None):
        held = self.state.shape[-1]
        n_buf = held + n  # exact inputs in reach
        n_exact = max(0, n_buf - self.span)
        length = held + x.shape[-1] + self.right_pad  # all of x, then the end of the stream if it ended there
        if upto is not None:
            length = min(length, max(n_buf, upto - self.n_out + self.span))
        keep = min(x.shape[-1], length - held)
        pad = x.new_zeros(1, x.shape[1], length - held - keep)
        buf = torch.cat([self.state, x[..., :keep], pad], dim=-1)  # (1, C, length), contiguous
        self.state = buf[..., n_buf - min(self.span, n_buf) : n_buf]
        self.n_out += n_exact
        if buf.shape[-1] <= self.span:
            return x.new_zeros(1, self.weight.shape[0], 0), 0
        y = F.conv1d(buf, self.weight, self.bias, dilation=self.dilation, groups=self.groups)
        return y, n_exact

    def need(self, upto: int) -> int:
        return upto + self.right_pad


class _StreamConvTranspose:
    """ConvTranspose1d with kernel 2*stride (SNAC's upsamplers). Full-output block j (positions [j*s, (j+1)*s))
    = W[..., :s] x_j + W[..., s:] x_(j-1), so after n inputs positions < n*s are exact; the module's output
    is full[pad : pad + n*s]. Computed as two matmuls over exact and speculative inputs together: the big
    first upsampler is weight-bandwidth bound at streaming chunk sizes, so its weights are read once a push."""

    def __init__(self, conv: nn.ConvTranspose1d, layouts: dict):
        self.s = conv.stride[0]
        if conv.kernel_size[0] != 2 * self.s or conv.groups != 1:
            raise ConfigError(
                f"transposed conv (kernel {conv.kernel_size[0]}, stride {self.s}, groups {conv.groups}) "
                "is not SNAC's kernel-2x-stride upsampler",
                "stream only SNAC decoders",
            )
        w = conv.weight.detach()  # (C_in, C_out, 2s)
        if conv not in layouts:  # copies of the weights (~45 ms for the 24 kHz model): once per codec
            layouts[conv] = (w[..., : self.s].permute(1, 2, 0).reshape(-1, w.shape[0]),  # (C_out*s, C_in)
                             w[..., self.s :].permute(1, 2, 0).reshape(-1, w.shape[0]))
        self.w_now, self.w_before = layouts[conv]
        self.bias = None if conv.bias is None else conv.bias.detach()[:, None]  # (C_out, 1)
        self.c_out, self.pad = w.shape[1], conv.padding[0]
        self.prev = w.new_zeros(1, w.shape[0], 1)  # the input before the first: contributes 0
        self.n_in = 0

    def run(self, x: Tensor, n: int, upto: int | None):
        ends = True  # the speculative inputs reach the stream's (assumed) end
        if upto is not None:
            k_need = self.need(upto) - self.n_in - n
            ends = k_need > x.shape[-1] - n  # asked beyond the speculative input: its end is the stream's end
            x = x[..., : n + max(0, k_need)]
        n_seq, prev = x.shape[-1], self.prev
        start = self.n_in * self.s  # full position of the first block computed here
        first = max(start, self.pad)  # full position of the first output returned
        n_exact = max(0, (self.n_in + n) * self.s - first)
        total = self.n_in + n_seq
        if n:
            self.prev = x[..., n - 1 : n]
        self.n_in += n
        if n_seq == 0 and not (ends and total):
            return x.new_zeros(1, self.c_out, 0), 0
        before = torch.cat([prev, x], -1)[0].t()  # (L + 1, C_in): x_(j-1) for block j; the last feeds the tail
        y = F.linear(before if ends else before[:n_seq], self.w_before)  # (blocks, C_out*s)
        y[:n_seq] += F.linear(x[0].t(), self.w_now)
        y = y.view(-1, self.c_out, self.s)
        if self.bias is not None:
            y = y + self.bias
        y = y.permute(1, 0, 2).reshape(1, self.c_out, -1)  # (1, C_out, blocks*s) from full position `start`
        hi = self.pad + total * self.s - start if ends else y.shape[-1]
        return y[..., first - start : max(first - start, hi)], n_exact

    def need(self, upto: int) -> int:
        return (upto - 1 + self.pad) // self.s + 1 if upto > 0 else 0


class _StreamResidual:
    """x + block(x): holds the exact skip inputs until the block's (lagging) output for them is exact."""

    def __init__(self, block: _StreamSequence):
        self.block = block
        self.skip: Tensor | None = None

    def run(self, x: Tensor, n: int, upto: int | None):
        y, n_out = self.block.run(x, n, upto)
        skip = x if self.skip is None else torch.cat([self.skip, x], -1)  # held + new exact + speculative
        n_held = skip.shape[-1] - x.shape[-1] + n
        self.skip = skip[..., n_out:n_held]
        return skip[..., : y.shape[-1]] + y, n_out

    def need(self, upto: int) -> int:
        return self.block.need(upto)


class _StreamSequence:
    def __init__(self, nodes: list):
        self.nodes = nodes

    def run(self, x: Tensor, n: int, upto: int | None):
        uptos = [upto]
        for node in reversed(self.nodes[1:]):
            uptos.append(None if upto is None else node.need(uptos[-1]))
        for node, u in zip(self.nodes, reversed(uptos), strict=True):
            x, n = node.run(x, n, u)
        return x, n

    def need(self, upto: int) -> int:
        for node in reversed(self.nodes):
            upto = node.need(upto)
        return upto


def _pointwise_conv(conv: nn.Conv1d):
    """A kernel-1 conv as a time-major matmul: 3x faster than the conv kernel on the few columns of a push."""
    weight, bias = conv.weight.detach()[:, :, 0].contiguous(), conv.bias  # (C_out, C_in)

    def run(x: Tensor) -> Tensor:  # (1, C_in, n) -> (1, C_out, n)
        return F.linear(x[0].t(), weight, bias).t()[None]

    return run


def _stream_graph(module: nn.Module, layouts: dict):
    """Mirror SNAC's decoder module tree with streaming nodes; `layouts`: the upsamplers' weights as the nodes
    read them, kept by the codec across stream decoders (filled at the first)."""
    from snac.layers import DecoderBlock, NoiseBlock, ResidualUnit, Snake1d

    if isinstance(module, nn.Sequential):
        return _StreamSequence([_stream_graph(m, layouts) for m in module])
    if isinstance(module, DecoderBlock):
        return _stream_graph(module.block, layouts)
    if isinstance(module, ResidualUnit):
        return _StreamResidual(_stream_graph(module.block, layouts))
    if isinstance(module, nn.Conv1d):
        if module.stride[0] != 1:
            raise ConfigError(
                f"decoder conv with stride {module.stride[0]} is not streamable",
                "decode whole with codec.decode(frames)",
            )
        return _StreamPointwise(_pointwise_conv(module)) if module.kernel_size[0] == 1 else _StreamConv(module)
    if isinstance(module, nn.ConvTranspose1d):
        return _StreamConvTranspose(module, layouts)
    if isinstance(module, Snake1d):
        return _StreamPointwise(_snake(module))
    if isinstance(module, (nn.Tanh, NoiseBlock)):
        return _StreamPointwise(module)
    raise ConfigError(
        f"SNAC decoder layer {type(module).__name__} has no streaming form (local attention: 32/44 kHz models)",
        "decode those models whole with codec.decode(frames)",
    )


class SnacStreamDecoder:
    """push(frame) returns the audio up to the lookahead before the newest frame's end (`first_lookahead_frames`
    until audio is first returned, then growing to `lookahead_frames`); flush() the rest. The concatenation equals
    SnacCodec.decode of all frames up to the lookahead's approximation (module docstring)."""

    def __init__(self, codec: SnacCodec):
        if codec.model.attn_window_size:
            raise ConfigError(
                f"streaming decode is not available for SNAC configs with local attention "
                f"(attn_window_size={codec.model.attn_window_size})",
                "use codec.decode(frames) for this model, or the 24 kHz model for streaming",
            )
        self.codec = codec
        self.spf = codec.grid.samples_per_frame
        self.lookahead = round(codec.lookahead_frames * self.spf)  # samples held back once grown
        self.first_lookahead = round(codec.first_lookahead_frames * self.spf)  # ... until audio is first returned
        self.started_at: int | None = None  # frames pushed when audio was first returned
        self.graph = _stream_graph(codec.model.decoder.model, codec.stream_layouts)
        self.n_frames = 0
        self.emitted = 0  # samples returned so far
        self.exact_total = 0  # exact samples the layer stream has produced so far
        self.pending = torch.zeros(0)  # the exact ones not yet returned: positions [exact_total - len, exact_total)
        self.closed = False

    def push(self, frame) -> Tensor:
        return self.push_frames(validate_frame(frame, self.codec.grid))

    def push_frames(self, frames) -> Tensor:
        """(n, n_slots) frames in one pass through the layer stream: fewer re-reads of the weights and less
        speculative work than n pushes (4 frames at once: about half the compute at 1 thread). While the lookahead
        still grows, frame by frame: where the first returns end then depends on the frames alone, not on how
        they were grouped, so the same frames give the same audio."""
        self._check_open()
        frames = validate_frames(frames, self.codec.grid)
        parts = []
        while self._growing() and frames.shape[0] > 1:
            parts.append(self._push(frames[:1]))
            frames = frames[1:]
        parts.append(self._push(frames))
        return torch.cat(parts)

    def _push(self, frames: Tensor) -> Tensor:
        with torch.inference_mode():
            z = self.codec.latents(frames)  # (1, latent_dim, n * strides[0])
            self.n_frames += frames.shape[0]
            due = self.n_frames * self.spf - self._lookahead()  # audio up to here is returned now
            if due > self.emitted and self.started_at is None:
                self.started_at = self.n_frames
            y, n_exact = self.graph.run(z, z.shape[-1], max(due, 0))  # after n_exact: as if it ended here
            y = y[0, 0].float()
            tail = y[n_exact:]
            self._take_exact(y[:n_exact])
            if due <= self.emitted:
                return torch.zeros(0)
            return self._emit(torch.cat([self.pending, tail]), due)

    def _growing(self) -> bool:
        """Is the lookahead still below the steady one (a first lookahead smaller than it, not yet grown)?"""
        return self._lookahead() < self.lookahead

    def _lookahead(self) -> int:
        """Samples held back at this push: the first lookahead until audio was returned, then half a frame more
        per frame pushed since, up to the steady lookahead."""
        if self.started_at is None:
            return self.first_lookahead
        return min(self.lookahead, self.first_lookahead + (self.n_frames - self.started_at) * self.spf // 2)

    def flush(self) -> Tensor:
        """The rest of the utterance (the end-of-stream tail upstream drops). The decoder is then spent."""
        self._check_open()
        self.closed = True
        with torch.inference_mode():
            empty = torch.zeros(1, self.codec.model.latent_dim, 0)
            tail, _ = self.graph.run(empty, 0, None)
        return self._emit(torch.cat([self.pending, tail[0, 0].float()]), self.n_frames * self.spf)

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("this SNAC stream decoder was already flushed", "start a new one: codec.stream_decoder()")

    def _take_exact(self, y: Tensor) -> None:
        """Append newly exact samples to `pending`, keeping only those not yet returned."""
        self.exact_total += y.numel()
        buf, keep = torch.cat([self.pending, y]), max(0, self.exact_total - self.emitted)
        self.pending = buf[buf.numel() - min(keep, buf.numel()) :]

    def _emit(self, available: Tensor, due: int) -> Tensor:
        """Positions [emitted, due) of `available`, which starts where `pending` starts."""
        start = self.exact_total - self.pending.numel()
        out = available[self.emitted - start : due - start].clone()
        self.emitted += out.numel()
        self.pending = self.pending[min(self.pending.numel(), self.emitted - start) :]
        return out


def make_snac_codec(
    model: str | None = None,
    config: dict | None = None,
    deterministic: bool = True,
    lookahead_frames: float = 2.0,
    seed: int | None = None,
    first_lookahead_frames: float | None = 1.0,
) -> SnacCodec:
    """Factory for the registry: see SnacCodec.load."""
    return SnacCodec.load(model, config, seed=seed, deterministic=deterministic, lookahead_frames=lookahead_frames,
                          first_lookahead_frames=first_lookahead_frames)


def loads_snac(value: str) -> bool:
    """A bare `--codec VALUE` is a SNAC model: a directory holding pytorch_model.bin, or (not a directory) a
    Hugging Face id."""
    path = Path(value).expanduser()
    return not path.is_dir() or (path / "pytorch_model.bin").is_file()


def export_snac(params: dict, directory: Path) -> dict | None:
    """A SNAC built from a `config` (seeded random weights: the tiny recipes) exists nowhere else: its weights, the
    very ones the factory builds, go to `directory` (config.json + pytorch_model.bin), loaded from there as `model`.
    None for a `model` (a directory or hub id), which is recorded as it is."""
    if params.get("config") is None:
        return None
    from snac import SNAC

    with torch.random.fork_rng():  # the caller's RNG stays as it was
        if params.get("seed") is not None:
            torch.manual_seed(params["seed"])
        model = SNAC(**params["config"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(params["config"], indent=2), encoding="utf-8")
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    kept = {k: v for k, v in params.items() if k not in ("config", "seed")}
    return {**kept, "model": str(directory)}


@hookimpl
def register_codecs(registry):
    registry.add("snac", make_snac_codec,
                 description="SNAC (default hubertsiuzdak/snac_24khz), stateful streaming decode",
                 loads=loads_snac, exports=export_snac, mini_omni={"params": {"model": DEFAULT_MODEL}, "local": []})
