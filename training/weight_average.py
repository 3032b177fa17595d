"""An exponential moving average of the trainable weights (`training.ema_decay`), exported instead of the last
step's weights: the average of the last ~1 / (1 - decay) steps is less tied to the last batches' order than the
final iterate is. The decay ramps up as (1 + step) / (10 + step) until it reaches `decay`, so early steps are not
held back by the starting weights. The average lives in fp32 beside the model and travels in the checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from omnivox.core.errors import CheckpointError


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.average = {name: p.detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, p in self.params.items():
            self.average[name].lerp_(p.detach().float(), 1.0 - decay)

    def averaged(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`model_state` (a full state dict) with the averaged weights in place of the trainable ones."""
        return {name: self.average[name].to(t.dtype) if name in self.average else t for name, t in model_state.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.average)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.average) - set(state)
        if missing:
            raise CheckpointError(f"the checkpoint's weight average lacks trainable weights {sorted(missing)[:3]}",
                                  "resume with the trainable map the run started with, or start a new output_dir")
        self.average = {name: state[name].float().clone() for name in self.average}
