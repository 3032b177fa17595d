"""Token sampling: greedy, temperature, top-k, top-p, with a seeded generator for reproducible runs.

Order of application as upstream (litgpt `sample`): top-k, then temperature, then top-p. Greedy (argmax)
when `temperature == 0` or `top_k == 1`; upstream Mini-Omni decodes with top_k=1, i.e. greedily."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnivox.core.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None  # keep the k most likely ids (None: all)
    top_p: float = 1.0  # keep the smallest set of ids whose probability reaches top_p
    seed: int | None = None  # None: torch's global RNG

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(
                f"sampling temperature must be >= 0, got {self.temperature}",
                "use 0 for greedy decoding or a positive value such as 0.9",
            )
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(
                f"sampling top_k must be >= 1 or None, got {self.top_k}",
                "use top_k=1 for greedy, a larger k, or None for no cut",
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(
                f"sampling top_p must be in (0, 1], got {self.top_p}",
                "use 1.0 for no nucleus cut, or a value such as 0.9",
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @classmethod
    def upstream(cls) -> SamplingConfig:
        """Mini-Omni's inference.py settings (temperature 0.9, top_k 1: greedy)."""
        return cls(temperature=0.9, top_k=1)

    def generator(self, device: torch.device | str) -> torch.Generator | None:
        """A generator seeded with `seed` on `device` (None without a seed or for greedy decoding)."""
        if self.seed is None or self.greedy:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def sample(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (R, V) -> ids (R,), one draw per row."""
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        values, indices = torch.topk(logits, config.top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)
    logits = logits / config.temperature
    if config.top_p < 1.0:
        logits = _top_p(logits, config.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Masks (R, V) logits outside the nucleus: ids are kept in order of probability until their
    cumulative probability reaches top_p (the most likely id is always kept)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely ids
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
