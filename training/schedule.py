"""What a step sees: the learning-rate schedule and the order of the samples (both resumable from a step)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` x lr at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def global_batch(n: int, seed: int, position: int, size: int, order=None) -> list[int]:
    """Indices of samples position..position+size-1 of the stream: one seeded permutation per epoch, or
    `order(epoch)` (a cached `epoch_order`) where the batches are grouped by length."""
    out, perms = [], {}
    for p in range(position, position + size):
        epoch, i = divmod(p, n)
        if epoch not in perms:
            perms[epoch] = order(epoch) if order else epoch_order(n, seed, epoch)
        out.append(int(perms[epoch][i]))
    return out


def epoch_order(n: int, seed: int, epoch: int, size: int = 1, lengths: Sequence[int] | None = None,
                window: int = 0) -> torch.Tensor:
    """The samples of one epoch in the order they are trained: a seeded permutation. With `window` (> 0) and
    `lengths`, each run of window x size samples of it is sorted by length and cut into batches of `size`, and
    those batches are shuffled (seeded): a batch then holds samples of about one length, so padding to its
    longest costs little (group by length). Every sample still comes once per epoch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    if window <= 0 or lengths is None:
        return perm
    shuffle = torch.Generator().manual_seed(seed * 100_003 + epoch + 7_919)
    run = window * size
    parts = []
    for start in range(0, n, run):
        chunk = sorted(perm[start:start + run].tolist(), key=lambda i: lengths[i], reverse=True)
        batches = [chunk[k:k + size] for k in range(0, len(chunk), size)]
        parts += [batches[b] for b in torch.randperm(len(batches), generator=shuffle).tolist()]
    return torch.tensor([i for batch in parts for i in batch])
