"""What an export needs besides the LM weights so that `omnivox chat` can speak with it: the recipe's codec.

A recipe whose `prepare.codec` is a SNAC built from a `config` (random weights, seeded: the tiny recipes)
encoded its answer frames with a codec that exists nowhere else; the export keeps it as EXPORT/codec/
(config.json + pytorch_model.bin, the layout `--codec DIR` reads). A codec named by `model` (a hub id or
a directory) is already loadable by that name and is not copied."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from omnivox.training.recipe import Recipe

CODEC_DIR = "codec"


def export_codec(recipe: Recipe, directory: str | Path) -> Path | None:
    """Write the recipe's seeded SNAC as DIRECTORY/codec; returns that folder, or None when there is nothing to
    keep (no codec, another codec plugin, or a SNAC loaded by name)."""
    section = (recipe["prepare"] or {}).get("codec")
    if section is None or section.get("_component_") != "snac" or section.get("config") is None:
        return None
    from snac import SNAC

    with torch.random.fork_rng():  # the training RNG stays as it was
        if section.get("seed") is not None:
            torch.manual_seed(section["seed"])  # as the snac plugin builds it: the very weights prepare used
        model = SNAC(**section["config"])
    out = Path(directory) / CODEC_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(section["config"], indent=2), encoding="utf-8")
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out
