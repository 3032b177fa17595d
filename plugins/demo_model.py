"""The shipped default model `demo` and, for pipeline files, the components a checkpoint was trained with.

- model `demo`: the export in the package's `models/demo/` (trained end to end by `make demo-model`: the
  spoken-question domain of training/demo_domain.py; see docs/demo_model.md), LM weights stored in fp16. It is
  what `omnivox chat`, `listen` and `serve` run when no `--checkpoint` is given (`--checkpoint random`: the
  tiny random model). Its components.json names the encoder and codec it hears and speaks with.
- encoder `recorded` and codec `recorded` (`params: {checkpoint: demo | DIR | random}`): the encoder / codec a
  checkpoint's export recorded, so a pipeline file names the model once (recipes/pipelines/chat_demo.yaml);
  `random` gives the tiny random kit that matches `tiny-random`."""

from __future__ import annotations

from pathlib import Path

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError

DEMO = "demo"
TINY = "tiny-random"
# the package root (the repository root is the package `omnivox`): models/demo ships as package data
DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / DEMO
SHIPPED_FILES = ("model.safetensors", "model_config.yaml", "components.json")


def missing_files(directory: Path | None = None) -> list[Path]:
    """The files of the shipped export that are not installed (empty when `demo` can load)."""
    directory = DEMO_DIR if directory is None else directory
    return [directory / name for name in SHIPPED_FILES if not (directory / name).is_file()]


def load_demo(seed: int = 0):
    """The shipped demo OmniModel (trained weights: `seed` changes nothing), with its recorded components."""
    from omnivox.core.runtime.model_stages import load_model

    missing = missing_files()
    if missing:
        raise CheckpointError(
            f"the shipped demo model is not installed: {missing[0]} is missing",
            "use the tiny random model (--checkpoint random; in a pipeline file checkpoint: random) or a trained "
            "export (--checkpoint DIR); to build the demo: make demo-model, then python -m "
            "omnivox.training.export EXPORT models/demo")
    return load_model(str(DEMO_DIR), seed)


def recorded_spec(role: str, checkpoint: str) -> dict:
    """The spec (see model_stages.components_in) of the `role` ("encoder" | "codec") that `checkpoint` records,
    read without loading the LM's weights when it is a directory or `demo`."""
    from omnivox.core.runtime.model_stages import ALIASES, components_in, load_model

    name = ALIASES.get(str(checkpoint), str(checkpoint))
    if name == DEMO:
        if missing_files():
            load_demo()  # raises, naming the missing file
        specs = components_in(DEMO_DIR)
    elif Path(name).expanduser().is_dir():
        specs = components_in(Path(name).expanduser())
    else:
        specs = getattr(load_model(name), "components", None) or {}
    if role not in specs:
        raise ConfigError(f"checkpoint {checkpoint!r} records no {role}",
                          f"use a {role} plugin with its parameters instead of {role}s/recorded")
    return specs[role]


def recorded_encoder(checkpoint: str = DEMO):
    """The encoder `checkpoint` was trained with (`random`: the tiny random Whisper of `tiny-random`)."""
    from omnivox.core.runtime.model_stages import ALIASES, build_component

    if ALIASES.get(checkpoint, checkpoint) == TINY:
        from omnivox.plugins.random_models import tiny_encoder

        return tiny_encoder()
    return build_component("encoder", recorded_spec("encoder", checkpoint))


def recorded_codec(checkpoint: str = DEMO):
    """The codec `checkpoint` was trained with (`random`: SNAC 24 kHz with seeded random weights)."""
    from omnivox.core.runtime.model_stages import ALIASES, build_component

    if ALIASES.get(checkpoint, checkpoint) == TINY:
        from omnivox.plugins.random_models import random_snac

        return random_snac()
    return build_component("codec", recorded_spec("codec", checkpoint))


@hookimpl
def register_models(registry):
    registry.add(DEMO, load_demo, description="the shipped demo speech model (spoken questions: arithmetic, "
                 "days, months, capitals, greetings), trained by recipes/demo_*.yaml; the default of chat/serve")


@hookimpl
def register_encoders(registry):
    registry.add("recorded", recorded_encoder,
                 description="the encoder a checkpoint was trained with (checkpoint: demo | DIR | random)")


@hookimpl
def register_codecs(registry):
    registry.add("recorded", recorded_codec,
                 description="the codec a checkpoint was trained with (checkpoint: demo | DIR | random)")
