"""Whisper encoder plugin (openai-whisper): registers encoder `whisper`.

Only Whisper's audio encoder is built and loaded (the text decoder's weights are memory-mapped and never
read). Audio of any rate and channel count is mixed to mono and resampled to 16 kHz, padded/trimmed to a
30 s window, turned into Whisper's own log-mel spectrogram and encoded; the first T frames are kept, with
T = int(duration_ms / 20) + 1 as upstream Mini-Omni's `load_audio` (at most 1500 per window).

Input longer than 30 s (`long_input="split"`, the default) is cut into consecutive 30 s windows, each
encoded on its own (as Whisper itself does for long audio); the frames are concatenated, so T = 1500 per
full window + the formula above for the last partial one. `long_input="error"` refuses it instead.

`trim=True` (opt-in) encodes only the 2T mel frames the kept T frames come from, instead of a whole 30 s
window: the encoder's cost falls with the question's length (a 2 s question: 101 of 1500 positions), but
its attention no longer sees the padding's frames, so the features differ from the padded reference
(upstream's, which the model was trained on). benchmarks/bench_whisper_trim.py prints the time and that
feature error, so a user can choose. The mel spectrogram of a trimmed window is computed over its audio and
TRIM_PAD_S of zeros, not the whole padded window: the same numbers (a frame's STFT sees 200 samples past it;
the normalisation reads the maximum, which zeros never raise), 0.8 ms instead of 13 for a 2 s question. A full
30 s window is encoded exactly as without trim.
whisper and torch are imported on first use, so loading the plugin stays cheap."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omnivox.core import audio
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError, InputError, OmnivoxError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 30 * SAMPLE_RATE  # whisper's N_SAMPLES: one 30 s input window
WINDOW_FRAMES = 1500  # encoder frames per window (3000 mel frames, conv stride 2)
TRIM_PAD_S = 1.0  # zeros after the audio when only the kept mel frames are needed (trim): >> one STFT window


def trimmed_window_samples(kept: int) -> int:
    """The samples a trimmed window's log-mel is computed over: its `kept` frames' audio + TRIM_PAD_S (<= 30 s)."""
    return min(WINDOW_SAMPLES, round((kept / 50 + TRIM_PAD_S) * SAMPLE_RATE))
_AUDIO_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
LONG_INPUT = ("split", "error")


def window_frames(num_samples: int) -> int:
    """Frames kept from one window of `num_samples` 16 kHz samples: upstream's int(ms / 20) + 1."""
    duration_ms = (num_samples / SAMPLE_RATE) * 1000
    return min(int(duration_ms / 20) + 1, WINDOW_FRAMES)


class WhisperEncoder:
    """`AudioEncoder` (core/encoder.py) over a Whisper audio encoder."""

    sample_rate = SAMPLE_RATE
    frame_rate = 50.0

    def __init__(self, encoder: torch.nn.Module, n_mels: int, *, long_input: str = "split", trim: bool = False):
        if long_input not in LONG_INPUT:
            raise ConfigError(f"long_input={long_input!r}", f"use one of: {', '.join(LONG_INPUT)}")
        if not isinstance(trim, bool):
            raise ConfigError(f"trim={trim!r}", "use true (encode only the frames kept) or false (30 s windows)")
        self.encoder = encoder.eval()  # whisper.model.AudioEncoder
        self.n_mels = n_mels
        self.feature_dim = int(encoder.ln_post.normalized_shape[0])
        self.long_input = long_input
        self.trim = trim

    @property
    def device(self) -> torch.device:
        return self.encoder.conv1.weight.device

    def num_frames(self, num_samples: int, sample_rate: int) -> int:
        if num_samples <= 0:
            raise InputError("audio is empty (0 samples)", "pass at least one sample of audio")
        return self._frames_16k(audio.resampled_length(num_samples, sample_rate, SAMPLE_RATE))

    def _frames_16k(self, n: int) -> int:
        full, rest = divmod(n, WINDOW_SAMPLES)
        if self.long_input == "error" and n > WINDOW_SAMPLES:
            raise InputError(
                f"audio is {n / SAMPLE_RATE:.2f} s long; the Whisper encoder takes at most 30 s",
                "cut it into turns of at most 30 s, or use long_input='split' (30 s windows)",
            )
        return full * WINDOW_FRAMES + (window_frames(rest) if rest else 0)

    def encode(self, pcm: Any, sample_rate: int) -> torch.Tensor:
        import torch
        import whisper

        x = audio.convert(pcm, sample_rate, to_rate=SAMPLE_RATE, mono=True, what="audio for whisper")  # (n,)
        frames = self._frames_16k(x.shape[0])
        samples = torch.from_numpy(x)
        kept = [min(WINDOW_FRAMES, frames - k * WINDOW_FRAMES) for k in range(-(-x.shape[0] // WINDOW_SAMPLES))]
        mels = [  # each (n_mels, 3000), or (n_mels, >= 2 n) trimmed
            whisper.log_mel_spectrogram(whisper.pad_or_trim(samples[k * WINDOW_SAMPLES : (k + 1) * WINDOW_SAMPLES],
                                                            self._mel_samples(n)), self.n_mels, device=self.device)
            for k, n in enumerate(kept)
        ]
        dtype = self.encoder.conv1.weight.dtype
        with torch.no_grad():  # not inference_mode: a trained adapter may take these features in autograd
            if self.trim:
                feats = torch.cat([self._encode_prefix(m[None, :, : 2 * n].to(dtype))[0] for m, n in zip(
                    mels, kept, strict=True)])  # (T, feature_dim)
            else:
                feats = self.encoder(torch.stack(mels).to(dtype))  # (windows, 1500, feature_dim)
        return feats.reshape(-1, self.feature_dim)[:frames].float()  # (T, feature_dim)

    def _mel_samples(self, kept: int) -> int:
        """The samples a window's log-mel is computed over: 30 s, or (trim) its `kept` frames' audio + TRIM_PAD_S."""
        return trimmed_window_samples(kept) if self.trim else WINDOW_SAMPLES

    def _encode_prefix(self, mel: torch.Tensor) -> torch.Tensor:
        """whisper's AudioEncoder.forward on (1, n_mels, 2n) mel frames -> (1, n, feature_dim): the same
        layers, positional embeddings 0..n-1 (its forward insists on a whole window)."""
        import torch.nn.functional as F

        enc = self.encoder
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel)))).permute(0, 2, 1)  # (1, n, D)
        x = (x + enc.positional_embedding[: x.shape[1]]).to(x.dtype)
        for block in enc.blocks:
            x = block(x)
        return enc.ln_post(x)


def load_whisper_encoder(
    checkpoint: str | os.PathLike | None = None,
    *,
    dims: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
    long_input: str = "split",
    trim: bool = False,
) -> WhisperEncoder:
    """Build the encoder from `checkpoint` (an openai-whisper .pt file such as Mini-Omni's small.pt, a
    directory holding small.pt, or a model name like "small" that whisper downloads; default "small"),
    or with random weights of `dims` (ModelDimensions fields; only the n_audio_* ones and n_mels matter).
    `trim`: encode only the frames kept (see the module docstring)."""
    import torch

    if dims is not None:
        if checkpoint is not None:
            raise ConfigError("both checkpoint and dims given", "pass a checkpoint OR random dims, not both")
        audio_dims = _audio_dims(dims, "dims")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = _build(audio_dims)
    else:
        path = _checkpoint_file("small" if checkpoint is None else checkpoint)
        audio_dims, state = _read_checkpoint(path)
        encoder = _build(audio_dims)
        try:
            encoder.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(
                f"whisper checkpoint {path} does not fit its own dims: {exc}",
                "re-export the checkpoint with whisper (torch.save({'dims', 'model_state_dict'}))",
            ) from None
    return WhisperEncoder(encoder.to(device), audio_dims["n_mels"], long_input=long_input, trim=trim)


def _audio_dims(dims: Any, where: str, error: type[OmnivoxError] = ConfigError) -> dict[str, int]:
    if not isinstance(dims, dict) or any(k not in dims for k in _AUDIO_DIMS):
        missing = [k for k in _AUDIO_DIMS if not isinstance(dims, dict) or k not in dims]
        raise error(f"whisper {where} lack {', '.join(missing)}", f"give all of {', '.join(_AUDIO_DIMS)}")
    out = {k: int(dims[k]) for k in _AUDIO_DIMS}
    if out["n_audio_ctx"] != WINDOW_FRAMES:
        raise error(f"whisper {where}: n_audio_ctx={out['n_audio_ctx']}", f"use {WINDOW_FRAMES} (30 s of audio)")
    if out["n_mels"] not in (80, 128):
        raise error(f"whisper {where}: n_mels={out['n_mels']}", "use 80 or 128 (whisper's mel banks)")
    return out


def _build(dims: dict[str, int]) -> torch.nn.Module:
    from whisper.model import AudioEncoder

    return AudioEncoder(
        dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"], dims["n_audio_head"], dims["n_audio_layer"]
    )


def _checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    import whisper

    path = Path(checkpoint)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "small.pt").is_file():
            return path / "small.pt"
        raise CheckpointError(f"no small.pt in {path}", "pass the path of the whisper .pt file itself")
    name = str(checkpoint)
    if name not in whisper.available_models():
        raise CheckpointError(
            f"no whisper checkpoint file {name!r}",
            f"pass the path of an openai-whisper .pt file, or a model name: {', '.join(whisper.available_models())}",
        )
    root = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    try:
        return Path(whisper._download(whisper._MODELS[name], str(root), False))
    except (OSError, RuntimeError) as exc:  # offline (URLError is an OSError) or a bad download
        cached = root / os.path.basename(whisper._MODELS[name])
        raise CheckpointError(
            f"cannot download whisper model {name!r}: {exc}",
            f"put {cached.name} (e.g. from the gpt-omni/mini-omni checkpoint) at {cached}, "
            f"or pass checkpoint=/path/to/{cached.name}",
        ) from None


def _read_checkpoint(path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """(audio dims, encoder state dict) of an openai-whisper checkpoint {"dims", "model_state_dict"}."""
    import torch

    fix = "pass an openai-whisper checkpoint: a torch file with 'dims' and 'model_state_dict' (e.g. small.pt)"
    try:
        # memory-map zip checkpoints so the decoder's weights are never read
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"cannot read whisper checkpoint {path}: {exc}", fix) from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an openai-whisper checkpoint", fix)
    prefix = "encoder."
    state = {k[len(prefix) :]: v for k, v in ckpt["model_state_dict"].items() if k.startswith(prefix)}
    return _audio_dims(ckpt["dims"], f"checkpoint {path}", CheckpointError), state


@hookimpl
def register_encoders(registry):
    registry.add(
        "whisper",
        load_whisper_encoder,
        description="openai-whisper audio encoder (small.pt for Mini-Omni), 16 kHz, 50 frames/s",
        mini_omni={"params": {"checkpoint": "small.pt"}, "local": ["checkpoint"]},  # the checkpoint dir's small.pt
    )
