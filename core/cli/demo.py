"""The command line's no-checkpoint demo kit: the `tiny-random` model (plugins/random_models.py), a tiny
random Whisper encoder of matching width and the real SNAC 24 kHz architecture with random weights."""

from __future__ import annotations

from omnivox.core.contracts.manager import create

TINY = "tiny-random"  # the `--checkpoint` / `checkpoint:` name of the demo model
NOTICE = "no --checkpoint given: running a tiny RANDOM model (every stage runs; the answer is noise)"


def tiny_model(seed: int = 0):
    return create("models", TINY, seed=seed)


def tiny_encoder(seed: int = 0):
    from omnivox.plugins.random_models import TINY_WHISPER_DIMS

    return create("encoders", "whisper", dims=TINY_WHISPER_DIMS, seed=seed)


def random_snac(seed: int = 0):
    from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG

    return create("codecs", "snac", config=SNAC_24KHZ_CONFIG, seed=seed)
