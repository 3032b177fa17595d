"""Atomic training checkpoints: the full state of a run, written so that a kill at any moment leaves the
previous checkpoint intact, and found again by `resume: auto | PATH`.

    checkpoints/step_NNNNNN/   model.safetensors, model_config.yaml, tokenizer.json (native inference files),
                               state.pt (optimizer, scheduler, step, data position, RNG), recipe.yaml
    checkpoints/latest         the name of the newest complete step directory"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnivox.core.errors import CheckpointError
from omnivox.core.kernel.checkpoint import NATIVE_WEIGHTS
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.tokenizer import TextTokenizer
from omnivox.training.weights import write_native

STATE_FILE = "state.pt"
LATEST = "latest"


def write_checkpoint(root: Path, step: int, model_state: dict[str, torch.Tensor], config: OmniConfig,
                     tokenizer: TextTokenizer, state: dict[str, Any], recipe_yaml: str, keep: int) -> Path:
    """Write checkpoints/step_NNNNNN in a temporary folder, move it in place, point `latest` at it, and keep
    the newest `keep` step folders (0 = all). Returns the step folder."""
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_native(tmp, model_state, config, tokenizer)
    torch.save(state, tmp / STATE_FILE)
    (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    replace_dir(tmp, final)
    latest_tmp = root / (LATEST + ".tmp")
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / LATEST)
    if keep:
        for old in sorted(root.glob("step_*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state, training state) of a step folder written by `write_checkpoint`."""
    from safetensors.torch import load_file

    return load_file(str(path / NATIVE_WEIGHTS)), torch.load(path / STATE_FILE, map_location="cpu",
                                                              weights_only=False)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written `tmp` directory to `final` (the old `final`, if any, goes first)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def find_resume(spec: str | None, output_dir: Path) -> Path | None:
    """`resume: auto` -> the latest checkpoint of output_dir (None if there is none); PATH -> that one."""
    if spec is None:
        return None
    if spec == "auto":
        latest = output_dir / "checkpoints" / LATEST
        if not latest.is_file():
            return None
        path = output_dir / "checkpoints" / latest.read_text().strip()
    else:
        path = Path(spec)
    if not (path / STATE_FILE).is_file() or not (path / NATIVE_WEIGHTS).is_file():
        raise CheckpointError(f"resume checkpoint {path} has no {STATE_FILE} / {NATIVE_WEIGHTS}",
                              "point resume at a checkpoints/step_NNNNNN directory, or use resume: auto")
    return path


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
