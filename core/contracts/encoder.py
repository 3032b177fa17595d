"""The audio-encoder contract: PCM in, one feature vector per frame out.

Plugins register factories returning an `AudioEncoder` through `register_encoders` (core/contracts/hookspecs.py);
the built-in one is Whisper (plugins/whisper_encoder.py). This module imports no model library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch


@runtime_checkable
class AudioEncoder(Protocol):
    """Turns audio into frame features the LM adapter consumes.

    `feature_dim`: size of one feature vector (768 for Whisper-small).
    `sample_rate`: the rate the encoder works at (any input rate is resampled to it).
    `frame_rate`: feature frames per second of audio (50 for Whisper)."""

    feature_dim: int
    sample_rate: int
    frame_rate: float

    def num_frames(self, num_samples: int, sample_rate: int) -> int:
        """Frames `encode` returns for `num_samples` samples at `sample_rate` (no model run)."""
        ...

    def encode(self, pcm: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """PCM (samples,) or (channels, samples) at `sample_rate` -> features (T, feature_dim) float32,
        T = num_frames(samples, sample_rate). Empty or non-finite audio raises InputError."""
        ...
