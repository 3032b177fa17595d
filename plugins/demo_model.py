"""The shipped default model `demo` and, for pipeline files, the components a checkpoint was trained with.

- model `demo`: the export in the package's `models/demo/` (trained end to end by `make demo-model`: the
  spoken-question domain of training/demo_domain.py, then the home-robot assistant of training/demo_robot.py; see
  docs/demo_model.md), LM weights stored in fp16. It is
  what `omnivox chat`, `listen` and `serve` run when no `--checkpoint` is given (`--checkpoint random`: the
  tiny random model). Its components.json names the encoder and codec it hears and speaks with (declared with
  `components=`, read by the speech kit, core/runtime/speech_kit.py).
- encoder `recorded` and codec `recorded` (`params: {checkpoint: demo | DIR | random}`): the encoder / codec a
  checkpoint's export recorded (the speech kit's record), so a pipeline file names the model once
  (recipes/pipelines/chat_demo.yaml); `random` gives the kit `tiny-random` declares."""

from __future__ import annotations

from pathlib import Path

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.runtime.speech_kit import SpeechKit

DEMO = "demo"
# the package root (the repository root is the package `omnivox`): models/demo ships as package data
DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / DEMO
SHIPPED_FILES = ("model.safetensors", "model_config.yaml", "components.json")


def missing_files(directory: Path | None = None) -> list[Path]:
    """The files of the shipped export that are not installed (empty when `demo` can load)."""
    directory = DEMO_DIR if directory is None else directory
    return [directory / name for name in SHIPPED_FILES if not (directory / name).is_file()]


def load_demo(seed: int = 0):
    """The shipped demo OmniModel (trained weights: `seed` changes nothing); its components are declared below."""
    missing = missing_files()
    if missing:
        raise CheckpointError(
            f"the shipped demo model is not installed: {missing[0]} is missing",
            "use the tiny random model (--checkpoint random; in a pipeline file checkpoint: random) or a trained "
            "export (--checkpoint DIR); to build the demo: make demo-model, then python -m "
            "omnivox.training.export EXPORT models/demo")
    return SpeechKit.load_model(str(DEMO_DIR), seed)


def recorded_spec(role: str, checkpoint: str) -> dict:
    """The spec (see core/runtime/speech_kit.py) of the `role` ("encoder" | "codec") that `checkpoint` records,
    read without loading the LM's weights."""
    if checkpoint == DEMO and missing_files():
        load_demo()  # raises, naming the missing file
    specs = SpeechKit.components_of(checkpoint)
    if role not in specs:
        raise ConfigError(f"checkpoint {checkpoint!r} records no {role}",
                          f"use a {role} plugin with its parameters instead of {role}s/recorded")
    return specs[role]


def recorded_encoder(checkpoint: str = DEMO):
    """The encoder `checkpoint` was trained with (`random`: the tiny random Whisper `tiny-random` declares)."""
    return SpeechKit.build("encoder", recorded_spec("encoder", checkpoint))


def recorded_codec(checkpoint: str = DEMO):
    """The codec `checkpoint` was trained with (`random`: the seeded random codec `tiny-random` declares)."""
    return SpeechKit.build("codec", recorded_spec("codec", checkpoint))


@hookimpl
def register_models(registry):
    registry.add(DEMO, load_demo, description="the shipped demo speech model, a small home-robot assistant (spoken "
                 "or typed questions: arithmetic, days, months, capitals, greetings; commands as actions; the "
                 "robot's state from the context; follow-ups), trained by recipes/demo_*.yaml; the default of "
                 "chat/serve",
                 components=DEMO_DIR)


@hookimpl
def register_encoders(registry):
    registry.add("recorded", recorded_encoder,
                 description="the encoder a checkpoint was trained with (checkpoint: demo | DIR | random)")


@hookimpl
def register_codecs(registry):
    registry.add("recorded", recorded_codec,
                 description="the codec a checkpoint was trained with (checkpoint: demo | DIR | random)")
