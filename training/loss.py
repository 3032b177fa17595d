"""Training loss: text cross-entropy plus one cross-entropy per audio stream, over the strategy's loss masks.

Each term is a SUM of token losses divided by the number of its target tokens in the GLOBAL batch (all
ranks), so a data-parallel run computes exactly the loss of one process over the same global batch.
total = text_weight * text + audio_weight * mean(audio streams that have targets in the global batch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from omnivox.training.collate import IGNORE


@dataclass
class TokenLoss:
    sums: torch.Tensor  # (1 + A,) summed CE per term: text, audio_0..audio_{A-1}; part of the graph
    counts: torch.Tensor  # (1 + A,) target tokens per term (this rank)


def token_losses(text_logits: torch.Tensor, audio_logits: torch.Tensor | None, labels: torch.Tensor) -> TokenLoss:
    """text_logits (B, L, Vt), audio_logits (B, A, L, Va), labels (B, A + 1, L) with the text stream last."""
    B, S, L = labels.shape
    text = F.cross_entropy(text_logits.reshape(B * L, -1).float(), labels[:, -1].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    sums = [text]
    if audio_logits is not None:
        A = audio_logits.shape[1]
        per_stream = F.cross_entropy(audio_logits.reshape(B * A * L, -1).float(), labels[:, :-1].reshape(-1),
                                     ignore_index=IGNORE, reduction="none").view(B, A, L)
        sums.extend(per_stream.sum(dim=(0, 2)).unbind())
    counts = (labels != IGNORE).sum(dim=(0, 2))  # (S,) audio streams first
    counts = torch.cat([counts[-1:], counts[:-1]])[: len(sums)]
    return TokenLoss(torch.stack(sums), counts)


def combine(loss: TokenLoss, global_counts: torch.Tensor, text_weight: float,
            audio_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (total (scalar, with graph), terms (1 + A,) detached), both normalised by the global counts."""
    terms = loss.sums / global_counts.clamp(min=1).to(loss.sums.dtype)  # (1 + A,)
    total = text_weight * terms[0] + 0.0 * terms.sum()  # every head stays in the graph (DDP needs it)
    active = global_counts[1:] > 0
    if active.any():
        total = total + audio_weight * terms[1:][active].sum() / active.sum()
    return total, terms.detach()


def mask_streams(labels: torch.Tensor, kept: list[str] | None) -> torch.Tensor:
    """labels (S, L), text stream last -> labels with IGNORE on the streams not in `kept` (text / audio)."""
    if kept is None:
        return labels
    labels = labels.clone()
    if "text" not in kept:
        labels[-1] = IGNORE
    if "audio" not in kept:
        labels[:-1] = IGNORE
    return labels


def term_names(n_terms: int) -> list[str]:
    return ["text"] + [f"audio_{i}" for i in range(n_terms - 1)]
