"""Semantic end of turn: has the speaker finished, or only paused mid-sentence? A small network reads the Whisper
encoder features (faster-whisper tiny.en, trimmed, the features the default model's encoder computes) of the
utterance so far, at a short silence, and gives P(complete). The VAD (plugins/silero_vad.py, `turn_end=`) asks it
after `turn_end_silence_ms` of silence instead of waiting for the full `end_silence_ms`.

    features (T, 384) ──► last `frames` frames ──► Linear + GELU ──► 2 x Conv1d(k=5) + GELU
                      ──► [mean over frames, mean of the last 10] ──► Linear ──► logit of "complete"

Trained by recipes/turn_end.yaml (training/turn_end.py: complete questions against the same questions cut at an
inner pause). An exported detector is a folder: `turn_end.safetensors` + `turn_end.json` (its config). The
default model ships one in models/turn_end."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omnivox.core.errors import CheckpointError, ConfigError

WEIGHTS, CONFIG = "turn_end.safetensors", "turn_end.json"
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "turn_end"


@dataclass(frozen=True)
class TurnEndConfig:
    """The network's shape, and the encoder whose features it reads."""

    feature_dim: int = 384  # tiny.en
    width: int = 64
    frames: int = 100  # features read: the last 2 s (50 frames/s)
    encoder: str = "tiny.en"  # faster-whisper model name or folder; features are trimmed (`trim: true`)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TurnEndConfig:
        known = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) - known:
            raise ConfigError(f"{source}: expected a mapping of {', '.join(sorted(known))}, got {data!r}",
                              "export the detector again with training/turn_end.py")
        return cls(**data)


class TurnEndNet(nn.Module):
    """(B, T, feature_dim) features, the utterance's last `frames` (left-padded with zeros) -> (B,) logits."""

    def __init__(self, config: TurnEndConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.project = nn.Sequential(nn.LayerNorm(config.feature_dim), nn.Linear(config.feature_dim, w), nn.GELU())
        self.convs = nn.Sequential(nn.Conv1d(w, w, 5, padding=2), nn.GELU(), nn.Conv1d(w, w, 5, padding=2), nn.GELU())
        self.out = nn.Linear(2 * w, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.project(features).transpose(1, 2)  # (B, w, T)
        x = self.convs(x)  # (B, w, T)
        pooled = torch.cat([x.mean(dim=-1), x[..., -10:].mean(dim=-1)], dim=-1)  # (B, 2w)
        return self.out(pooled).squeeze(-1)  # (B,)


def last_frames(features: torch.Tensor, frames: int) -> torch.Tensor:
    """(T, F) -> (frames, F): the last `frames` rows, zero rows in front when the utterance is shorter."""
    features = features[-frames:]
    if features.shape[0] < frames:
        features = torch.cat([features.new_zeros(frames - features.shape[0], features.shape[1]), features])
    return features


def utterance_features(encoder, pcm: np.ndarray, frames: int) -> torch.Tensor:
    """(frames, F) what the network reads: the encoder's (trimmed) features of the audio's last frames / 50 + 1
    seconds, the last `frames` of them (zero rows in front of a shorter utterance)."""
    keep = int((frames / 50 + 1.0) * 16000)
    return last_frames(encoder.encode(np.asarray(pcm, dtype=np.float32)[-keep:], 16000), frames)


def save_detector(net: TurnEndNet, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(asdict(net.config), indent=1) + "\n")
    return folder


def load_net(folder: str | Path) -> TurnEndNet:
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (WEIGHTS, CONFIG) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not an end-of-turn detector: {', '.join(missing)} missing",
                              "pass the export folder of recipes/turn_end.yaml, or 'default' for the shipped one")
    config = TurnEndConfig.from_dict(json.loads((folder / CONFIG).read_text()), str(folder / CONFIG))
    net = TurnEndNet(config)
    try:
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    except RuntimeError as err:
        raise CheckpointError(f"{folder / WEIGHTS} does not match {CONFIG}: {err}",
                              "export the detector again") from None
    return net.eval()


class TurnEndDetector:
    """P(the speaker has finished) for 16 kHz mono audio of an utterance so far (its trailing silence included)."""

    def __init__(self, folder: str | Path | None = None, *, threads: int = 1, encoder=None):
        self.folder = SHIPPED if folder in (None, "default") else Path(folder)
        self.net = load_net(self.folder)
        if encoder is None:
            from omnivox.plugins.fw_encoder import load_fw_encoder

            encoder = load_fw_encoder(self.net.config.encoder, threads=threads, trim=True)
        self.encoder = encoder
        self.probability(np.zeros(16000, np.float32))  # the first run costs ~50 ms more: not on a user's question

    def probability(self, pcm: np.ndarray) -> float:
        """P(complete) for 16 kHz mono `pcm`, the utterance so far with its trailing silence."""
        with torch.no_grad():
            feats = utterance_features(self.encoder, pcm, self.net.config.frames)  # (frames, F)
            return float(torch.sigmoid(self.net(feats[None]))[0])
