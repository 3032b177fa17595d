"""The `trainable:` map applied to an OmniLM: parameter groups -> requires_grad, checked and reported.

Groups (every OmniLM parameter belongs to exactly one):
    adapter  `adapter.*` (Whisper adapter) and the TTS adapter `post_adapter.*` + `audio_head.*`
    lm       `backbone.*` (shared multi-stream embedding, transformer blocks, final norm)
    heads    `lm_head.*`
    encoder  the Whisper encoder is not part of the LM: its features are cached by `omnivox prepare`,
             so it is always frozen."""

from __future__ import annotations

import torch.nn as nn

from omnivox.core.errors import ConfigError

GROUP_PREFIXES = {
    "adapter": ("adapter.", "post_adapter.", "audio_head."),
    "lm": ("backbone.",),
    "heads": ("lm_head.",),
}


def group_of(name: str) -> str:
    """The trainable group of parameter `name` (an OmniLM state-dict key)."""
    for group, prefixes in GROUP_PREFIXES.items():
        if name.startswith(prefixes):
            return group
    raise ConfigError(f"parameter {name!r} belongs to no trainable group",
                      f"extend omnivox.training.freeze.GROUP_PREFIXES (groups: {', '.join(GROUP_PREFIXES)})")


def apply_trainable(model: nn.Module, trainable: dict[str, str]) -> list[str]:
    """Set requires_grad from the map, assert the result, and return the report lines (one per group)."""
    counts: dict[str, list[int]] = {g: [0, 0] for g in GROUP_PREFIXES}  # group -> [tensors, elements]
    for name, param in model.named_parameters():
        group = group_of(name)
        param.requires_grad_(trainable[group] == "full")
        counts[group][0] += 1
        counts[group][1] += param.numel()
    for name, param in model.named_parameters():  # the map holds exactly
        assert param.requires_grad == (trainable[group_of(name)] == "full"), name
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the trainable map leaves no parameter to train (the model has no "
                          f"{' or '.join(g for g, m in trainable.items() if m == 'full')} parameters)",
                          "set another group to full")
    lines = [f"  encoder  {trainable['encoder']:<6}  (features cached by omnivox prepare)"]
    total = sum(n for _, n in counts.values())
    for group, (tensors, elements) in counts.items():
        lines.append(f"  {group:<8} {trainable[group]:<6}  {elements:>13,} params in {tensors} tensors")
    trained = sum(counts[g][1] for g in counts if trainable[g] == "full")
    lines.append(f"  training {trained:,} of {total:,} parameters ({100 * trained / max(total, 1):.1f}%)")
    return lines
