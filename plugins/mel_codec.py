"""Mel codec plugin (`mel`): log-mel frames, residual vector quantisation, Griffin-Lim; no downloaded weights.

    encode: PCM -> 16 kHz -> log-mel frames (STFT n_fft, hop; `n_mels` Slaney bands; ln, floored)
            -> `stack` consecutive frames per vector (minus the training mean) -> residual VQ, `n_stages`
            codebooks of `codebook_size` codes -> `vectors_per_frame` vectors per token frame
    decode: codes -> log-mel -> linear magnitude (non-negative least squares by multiplicative updates)
            -> Griffin-Lim over a sliding window (fast Griffin-Lim, momentum 0.99)

The codebooks are fitted by `omnivox train recipes/codec_mel.yaml` (k-means with EMA updates, see
training/codec_trainer.py); a trained codec is a directory (`config.json` + `model.safetensors`) loaded with
`create("codecs", "mel", model=DIR)`.

Token grid: codebook k (residual stage k) carries `vectors_per_frame` codes per token frame; the slots of one
frame are vector-major (vector 0 stage 0..R-1, vector 1 stage 0..R-1, ...). Defaults: 100 mel frames/s,
2 per vector, 2 vectors per token frame -> 25 frames/s of 8 slots (200 tokens/s, 1024 codes: 2 kbit/s).

Streaming decode IS the decode: `decode(frames)` runs the same stream decoder over all frames, so frame-by-
frame decoding equals whole decoding exactly. Each push runs Griffin-Lim on a window of `context_frames`
mel frames of already returned audio (held fixed), the new frames and the not yet returned ones; it returns
the samples whose frames are all known, minus `lookahead_frames` mel frames (40 ms by default) kept back
so that their phase is still refined by the next push. Phases of frames kept back carry over."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from omnivox.core.audio import convert
from omnivox.core.contracts.codec import TokenGrid, codes_to_frames, frames_to_codes, validate_frame, validate_frames
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError, InputError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CODEC_NAME = "mel"


@dataclass(frozen=True)
class MelCodecConfig:
    """Every setting of the codec (saved as config.json beside the codebooks)."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop: int = 160  # samples per mel frame (100 frames/s at 16 kHz)
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None  # None: sample_rate / 2
    log_floor: float = 1e-4  # log-mel = ln(max(mel magnitude, log_floor))
    stack: int = 2  # mel frames per quantised vector
    vectors_per_frame: int = 2  # vectors per token frame
    n_stages: int = 4  # residual VQ codebooks
    codebook_size: int = 1024
    gl_iterations: int = 16  # Griffin-Lim iterations per push
    context_frames: int = 6  # mel frames of returned audio each Griffin-Lim window starts with
    lookahead_frames: int = 4  # mel frames kept back for the next push

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop", "n_mels", "stack", "vectors_per_frame", "n_stages",
                     "codebook_size", "gl_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"mel codec: {name} = {value!r}", f"give {name} as a positive integer")
        for name in ("context_frames", "lookahead_frames"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"mel codec: {name} = {getattr(self, name)!r}", f"give {name} as an integer >= 0")
        if self.n_fft % 2 or self.hop > self.n_fft:
            raise ConfigError(f"mel codec: n_fft {self.n_fft}, hop {self.hop}", "use an even n_fft >= hop")
        if self.context_frames * self.hop < self.n_fft:
            raise ConfigError(f"mel codec: context_frames {self.context_frames} x hop {self.hop} < n_fft "
                              f"{self.n_fft}", f"use context_frames >= {math.ceil(self.n_fft / self.hop)}")
        if not 0 <= self.fmin < (self.fmax or self.sample_rate / 2) <= self.sample_rate / 2:
            raise ConfigError(f"mel codec: fmin {self.fmin}, fmax {self.fmax}", "use 0 <= fmin < fmax <= rate/2")
        if self.log_floor <= 0:
            raise ConfigError(f"mel codec: log_floor = {self.log_floor}", "give a positive floor")

    @classmethod
    def from_dict(cls, values: dict, where: str = "mel codec config") -> MelCodecConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}", f"valid keys: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def mel_frames_per_frame(self) -> int:
        return self.stack * self.vectors_per_frame

    @property
    def vector_dim(self) -> int:
        return self.stack * self.n_mels

    def grid(self) -> TokenGrid:
        spf = self.hop * self.mel_frames_per_frame
        return TokenGrid(n_codebooks=self.n_stages, codebook_size=self.codebook_size,
                         frame_rate=self.sample_rate / spf, sample_rate=self.sample_rate,
                         slots=tuple((k, j) for j in range(self.vectors_per_frame) for k in range(self.n_stages)))


# ---- front end --------------------------------------------------------------------------------------
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """Slaney-style mel filterbank (triangles on the Slaney mel scale, area-normalised): (n_mels, n_fft//2 + 1)."""
    fmax = fmax or sample_rate / 2

    def hz_to_mel(f: Tensor) -> Tensor:  # linear below 1 kHz, logarithmic above
        return torch.where(f < 1000, f * 3 / 200, 15 + torch.log(f.clamp(min=1e-9) / 1000) * 27 / math.log(6.4))

    def mel_to_hz(m: Tensor) -> Tensor:
        return torch.where(m < 15, m * 200 / 3, 1000 * torch.exp((m - 15) * math.log(6.4) / 27))

    edges = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(fmin))), float(hz_to_mel(torch.tensor(fmax))),
                                     n_mels + 2, dtype=torch.float64))  # (n_mels + 2,)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (n_freq,)
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    bank = torch.clamp(torch.minimum(lower, upper), min=0)  # (n_mels, n_freq)
    return (bank * (2.0 / (edges[2:] - edges[:-2]))[:, None]).float()


class MelFrontEnd:
    """PCM <-> log-mel with the codec's STFT; magnitudes back from mel by non-negative least squares."""

    def __init__(self, config: MelCodecConfig):
        self.config = config
        self.window = torch.hann_window(config.n_fft, periodic=True, dtype=torch.float32)
        self.bank = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
        self.gram = self.bank.T @ self.bank  # (n_freq, n_freq), for the NNLS updates

    def log_mel(self, pcm: Tensor) -> Tensor:
        """(samples,) float32 -> (samples // hop, n_mels): frame m is centred on sample m * hop."""
        c = self.config
        spec = torch.stft(pcm, c.n_fft, c.hop, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)  # (n_freq, samples // hop + 1)
        mel = self.bank @ spec.abs()  # (n_mels, T + 1)
        return torch.log(mel.clamp(min=c.log_floor)).T[: pcm.numel() // c.hop].contiguous()

    def magnitude(self, log_mel: Tensor, iterations: int = 8) -> Tensor:
        """(T, n_mels) log-mel -> (T, n_freq) non-negative linear magnitude whose mel is close to it."""
        mel = torch.exp(log_mel)  # (T, n_mels)
        mag = (mel @ self.bank) / self.bank.sum(0).clamp(min=1e-8)  # (T, n_freq): a smeared start
        target = mel @ self.bank  # (T, n_freq)
        for _ in range(iterations):  # Lee-Seung multiplicative updates for min ||bank mag - mel||
            mag = mag * target / (mag @ self.gram).clamp(min=1e-8)
        return mag


# ---- quantiser --------------------------------------------------------------------------------------
def nearest(vectors: Tensor, codebook: Tensor) -> Tensor:
    """(N, D), (C, D) -> (N,) index of the nearest code (squared Euclidean distance)."""
    distance = (codebook * codebook).sum(1)[None] - 2 * vectors @ codebook.T  # (N, C), minus ||v||^2
    return distance.argmin(1)


def quantize(vectors: Tensor, codebooks: Tensor) -> Tensor:
    """(N, D), (R, C, D) -> (N, R) residual VQ codes."""
    residual, codes = vectors, []
    for codebook in codebooks:
        index = nearest(residual, codebook)
        residual = residual - codebook[index]
        codes.append(index)
    return torch.stack(codes, 1)


def dequantize(codes: Tensor, codebooks: Tensor) -> Tensor:
    """(N, R), (R, C, D) -> (N, D): the sum of each stage's code vector."""
    return sum(codebooks[k][codes[:, k]] for k in range(codebooks.shape[0]))


# ---- the codec --------------------------------------------------------------------------------------
class MelCodec:
    """Log-mel residual-VQ codec behind the codec contract (see the module docstring)."""

    def __init__(self, config: MelCodecConfig, codebooks: Tensor, mean: Tensor):
        if tuple(codebooks.shape) != (config.n_stages, config.codebook_size, config.vector_dim):
            raise CheckpointError(f"mel codec codebooks have shape {tuple(codebooks.shape)}; the config needs "
                                  f"{(config.n_stages, config.codebook_size, config.vector_dim)}",
                                  "load codebooks saved with this config")
        if tuple(mean.shape) != (config.vector_dim,):
            raise CheckpointError(f"mel codec mean has shape {tuple(mean.shape)}, needs ({config.vector_dim},)",
                                  "load a mean saved with this config")
        self.config = config
        self.codebooks = codebooks.float().contiguous()  # (R, C, D)
        self.mean = mean.float()  # (D,)
        self.front = MelFrontEnd(config)
        self.grid = config.grid()

    # -- files --
    @classmethod
    def load(cls, model: str | Path) -> MelCodec:
        """A directory written by `save` (config.json + model.safetensors)."""
        from safetensors.torch import load_file

        path = Path(model)
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"mel codec: {path} has no {CONFIG_FILE} + {WEIGHTS_FILE}",
                                  "train one with `omnivox train recipes/codec_mel.yaml` and pass its export "
                                  "directory (runs/codec_mel/export)")
        try:
            values = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path / CONFIG_FILE} is not JSON: {exc}", "re-export the codec") from None
        if values.pop("codec", None) != CODEC_NAME:
            raise CheckpointError(f"{path / CONFIG_FILE} is not a mel codec config (no \"codec\": \"mel\")",
                                  "pass a directory written by the mel codec recipe")
        config = MelCodecConfig.from_dict(values, str(path / CONFIG_FILE))
        tensors = load_file(str(path / WEIGHTS_FILE))
        if set(tensors) != {"codebooks", "mean"}:
            raise CheckpointError(f"{path / WEIGHTS_FILE} holds {sorted(tensors)}, needs codebooks and mean",
                                  "pass a directory written by the mel codec recipe")
        return cls(config, tensors["codebooks"], tensors["mean"])

    def save(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors into `directory` (created)."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps({"codec": CODEC_NAME, **asdict(self.config)}, indent=2) + "\n",
                                        encoding="utf-8")
        save_file({"codebooks": self.codebooks.contiguous(), "mean": self.mean.contiguous()}, str(path / WEIGHTS_FILE))
        return path

    # -- contract --
    def vectors(self, pcm, sample_rate: int) -> Tensor:
        """PCM -> (n_frames * vectors_per_frame, vector_dim) mean-removed stacked log-mel, zero-padded to whole
        token frames: what the codebooks quantise."""
        c = self.config
        x = torch.from_numpy(convert(pcm, sample_rate, to_rate=c.sample_rate, mono=True, what="audio to encode"))
        spf = self.grid.samples_per_frame
        x = F.pad(x, (0, -x.numel() % spf if x.numel() else spf))  # (n_frames * spf,)
        log_mel = self.front.log_mel(x)  # (n_frames * mel_frames_per_frame, n_mels)
        return log_mel.reshape(-1, c.vector_dim) - self.mean

    def encode(self, pcm, sample_rate: int) -> Tensor:
        """PCM (samples,) or (channels, samples), any rate -> frames (n_frames, n_slots) int64."""
        with torch.inference_mode():
            codes = quantize(self.vectors(pcm, sample_rate), self.codebooks)  # (n_vectors, R)
        return codes_to_frames(list(codes.T), self.grid)

    def log_mel(self, frames: Tensor) -> Tensor:
        """(n_frames, n_slots) -> the decoded log-mel (n_frames * mel_frames_per_frame, n_mels)."""
        codes = torch.stack(frames_to_codes(frames, self.grid), 1)  # (n_frames * vectors_per_frame, R)
        return (dequantize(codes, self.codebooks) + self.mean).reshape(-1, self.config.n_mels)

    def decode(self, frames: Tensor) -> Tensor:
        """(n_frames, n_slots) -> float32 (n_frames * samples_per_frame,): the stream decoder run over all frames."""
        frames = validate_frames(frames, self.grid)
        decoder = self.stream_decoder()
        return torch.cat([decoder.push(frame) for frame in frames] + [decoder.flush()])

    def stream_decoder(self) -> MelStreamDecoder:
        return MelStreamDecoder(self)


class MelStreamDecoder:
    """Windowed Griffin-Lim: push(frame) returns the audio that is final now, flush() the rest. Returned
    samples are never revised: later windows hold them fixed, so the seams are part of the optimisation."""

    def __init__(self, codec: MelCodec):
        c = codec.config
        self.codec, self.config = codec, c
        self.magnitude = torch.zeros(0, c.n_fft // 2 + 1)  # (T, n_freq) of every mel frame so far
        self.phase: dict[int, Tensor] = {}  # mel frame -> (n_freq,) complex unit phase of frames not yet final
        self.audio = torch.zeros(0)  # returned samples, positions [0, emitted)
        self.closed = False
        self.momentum = 0.99

    @property
    def emitted(self) -> int:
        return self.audio.numel()

    def push(self, frame) -> Tensor:
        self._check_open()
        frame = validate_frame(frame, self.codec.grid)
        with torch.inference_mode():
            mag = self.codec.front.magnitude(self.codec.log_mel(frame))  # (mel_frames_per_frame, n_freq)
            self.magnitude = torch.cat([self.magnitude, mag])
            due = (self.magnitude.shape[0] - self.config.lookahead_frames) * self.config.hop
            return self._advance(due)

    def flush(self) -> Tensor:
        """The rest of the utterance; the decoder is then spent."""
        self._check_open()
        self.closed = True
        with torch.inference_mode():
            return self._advance(self.magnitude.shape[0] * self.config.hop)

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("this mel stream decoder was already flushed", "start a new one: codec.stream_decoder()")

    def _advance(self, due: int) -> Tensor:
        """Run Griffin-Lim on the window that reaches the unreturned audio; return samples [emitted, due)."""
        c, start = self.config, self.emitted
        if due <= start:
            return torch.zeros(0)
        half, total = c.n_fft // 2, self.magnitude.shape[0]
        a = max(0, math.ceil((start - half) / c.hop) - c.context_frames)  # first frame of the window
        offset = a * c.hop - half  # absolute position of the window's first sample
        n = total - a  # frames in the window
        length = (n - 1) * c.hop + c.n_fft
        fixed = torch.zeros(start - offset)  # returned audio inside the window (zeros before position 0)
        keep = self.audio[max(0, offset):]
        fixed[fixed.numel() - keep.numel():] = keep
        mag = self.magnitude[a:]  # (n, n_freq)
        phase = torch.stack([self.phase.get(a + i, torch.ones(mag.shape[1], dtype=torch.complex64))
                             for i in range(n)])
        spec = mag * phase
        previous = spec
        envelope = self._envelope(n)
        for _ in range(c.gl_iterations):
            signal = self._synthesise(spec, envelope, length, fixed)  # (length,)
            rebuilt = torch.fft.rfft(signal.unfold(0, c.n_fft, c.hop) * self.codec.front.window)  # (n, n_freq)
            accelerated = rebuilt + self.momentum * (rebuilt - previous)  # fast Griffin-Lim
            previous = rebuilt
            spec = mag * torch.sgn(accelerated).where(accelerated.abs() > 0, torch.ones_like(accelerated))
        signal = self._synthesise(spec, envelope, length, fixed)
        unit = torch.sgn(spec).where(spec.abs() > 0, torch.ones_like(spec))
        next_start = max(0, math.ceil((due - half) / c.hop) - c.context_frames)  # the next window's first frame
        self.phase = {a + i: unit[i] for i in range(max(0, next_start - a), n)}
        out = signal[start - offset: due - offset].clone()
        self.audio = torch.cat([self.audio, out])
        return out

    def _synthesise(self, spec: Tensor, envelope: Tensor, length: int, fixed: Tensor) -> Tensor:
        """Least-squares overlap-add of (n, n_freq) spectra into `length` samples, the first ones held `fixed`."""
        c = self.config
        frames = torch.fft.irfft(spec, n=c.n_fft) * self.codec.front.window  # (n, n_fft)
        signal = F.fold(frames.T[None], (1, length), (1, c.n_fft), stride=(1, c.hop))[0, 0, 0] / envelope
        return torch.cat([fixed, signal[fixed.numel():]])

    def _envelope(self, n: int) -> Tensor:
        c = self.config
        squared = (self.codec.front.window ** 2)[:, None].expand(-1, n)  # (n_fft, n)
        length = (n - 1) * c.hop + c.n_fft
        return F.fold(squared[None], (1, length), (1, c.n_fft), stride=(1, c.hop))[0, 0, 0].clamp(min=1e-3)


def make_mel_codec(model: str) -> MelCodec:
    """Factory for the registry: a trained codec directory (`omnivox train recipes/codec_mel.yaml`'s export)."""
    return MelCodec.load(model)


@hookimpl
def register_codecs(registry):
    registry.add(CODEC_NAME, make_mel_codec,
                 description="log-mel residual VQ + Griffin-Lim, trained on CPU in minutes (model=DIR)")
