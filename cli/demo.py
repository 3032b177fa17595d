"""The command line's model choice, shared by chat, listen and serve: `--checkpoint` (default: the shipped
`demo` model, plugins/demo_model.py; `random`: the tiny random kit) and the `--encoder` / `--codec` overrides
of the components the model's export recorded. The random kit: the `tiny-random` model
(plugins/random_models.py), a tiny random Whisper encoder of matching width, SNAC 24 kHz with random weights."""

from __future__ import annotations

import argparse

from omnivox.core.contracts.manager import create

DEFAULT = "demo"  # the shipped model: what runs without --checkpoint
TINY = "tiny-random"  # the registered tiny random model
RANDOM = ("random", TINY)  # the `--checkpoint` names of the random kit
NOTICE = "--checkpoint random: running a tiny RANDOM model (every stage runs; the answer is noise)"
DEFAULT_NOTICE = ("no --checkpoint given: the shipped demo model (a small demo: spoken arithmetic, days, months, "
                  "capitals, greetings; --checkpoint random for the tiny random model)")


def add_model_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--checkpoint, --encoder, --whisper, --codec."""
    p.add_argument("--checkpoint", metavar="DIR|NAME",
                   help=f"a trained export or Mini-Omni checkpoint dir, or a registered model (default: {DEFAULT}, "
                        "the shipped demo model; random: a tiny random model)")
    p.add_argument("--encoder", metavar="NAME[:MODEL]",
                   help="encoder plugin (and its model), e.g. faster_whisper:tiny.en (default: the one the "
                        "checkpoint recorded; Mini-Omni: whisper CHECKPOINT/small.pt)")
    p.add_argument("--whisper", metavar="PT", help="same as --encoder whisper:PT")
    p.add_argument("--codec", metavar="NAME[:MODEL]|DIR",
                   help="codec plugin (and its model), e.g. mel:DIR, or a SNAC dir / hub id (default: the one the "
                        "checkpoint recorded; Mini-Omni: hubertsiuzdak/snac_24khz)")


def model_kit(checkpoint: str | None, *, encoder: str | None = None, whisper: str | None = None,
              codec: str | None = None, hear: bool = True, speak: bool = True, seed: int = 0, say=print):
    """(model, encoder or None, codec or None, default max_steps) for the command line's options; the encoder
    only when `hear`, the codec only when `speak`. Says which model runs when it is not the one named."""
    from omnivox.core.runtime.model_stages import (
        build_component,
        check_compatible,
        choose_components,
        component_spec,
        load_model,
    )

    if whisper is not None and encoder is None:
        encoder = f"whisper:{whisper}"
    if checkpoint in RANDOM:
        say(NOTICE)
        model = tiny_model(seed)
        chosen = []
        kit = (("encoder", encoder, hear, tiny_encoder), ("codec", codec, speak, random_snac))
        for role, value, needed, make in kit:
            if not needed:
                chosen.append(None)
            else:
                chosen.append(make() if value is None else build_component(role, component_spec(role, value)))
        check_compatible(model, *chosen)
        return model, chosen[0], chosen[1], 96
    if checkpoint in (None, DEFAULT):
        from omnivox.plugins.demo_model import load_demo

        if checkpoint is None:
            say(DEFAULT_NOTICE)
        model = load_demo(seed)  # the built-in plugin's loader: names the missing file when not installed
    else:
        model = load_model(checkpoint, seed)
    heard, spoken = choose_components(model, encoder=encoder, codec=codec, hear=hear, speak=speak)
    return model, heard, spoken, 600


def tiny_model(seed: int = 0):
    return create("models", TINY, seed=seed)


def tiny_encoder(seed: int = 0):
    from omnivox.plugins.random_models import tiny_encoder as build  # the random kit lives with tiny-random

    return build(seed)


def random_snac(seed: int = 0):
    from omnivox.plugins.random_models import random_snac as build

    return build(seed)
