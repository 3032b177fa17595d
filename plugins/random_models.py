"""Built-in random models: `tiny-random`, a tiny OmniLM with Mini-Omni's structure (7 SNAC streams of 4096
codes, adapter width of the tiny random Whisper encoder). Every stage runs for real; the outputs are noise. It
declares its kit (`TINY_COMPONENTS`): the tiny random Whisper encoder and SNAC 24 kHz with random weights.

Its audio heads never choose a special id (their rows are zeroed, so some code always scores higher): a
random model would otherwise end its audio at a random early step, and nothing of the streaming path
would show."""

from __future__ import annotations

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG

TINY = "tiny-random"
TINY_WHISPER_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2}
# the encoder and codec of `tiny-random` (components.json's form): a tiny random Whisper of its adapter's width,
# SNAC 24 kHz (its 7 streams of 4096 codes) with seeded random weights
TINY_COMPONENTS = {"encoder": {"name": "whisper", "params": {"dims": TINY_WHISPER_DIMS, "seed": 0}},
                   "codec": {"name": "snac", "params": {"config": SNAC_24KHZ_CONFIG, "seed": 0}}}


def tiny_model(seed: int = 0, **config_overrides):
    """Random tiny OmniModel (byte-level tokenizer) that keeps speaking until its step budget."""
    from omnivox.core.kernel.checkpoint import OmniModel
    from omnivox.core.kernel.config import OmniConfig

    overrides = {"whisper_adapter_dim": TINY_WHISPER_DIMS["n_audio_state"], **config_overrides}
    return never_emit_audio_specials(OmniModel.random(OmniConfig.tiny(codebook_size=4096, **overrides), seed=seed))


def never_emit_audio_specials(model):
    """Zero the lm_head rows of every audio stream's special ids: some code always scores higher, so a
    random model fills every slot with a code (and never stops on eoa)."""
    zero_audio_special_rows(model.lm.lm_head.weight, model.layout)
    return model


def zero_audio_special_rows(head_weight, layout) -> None:
    """The same on any head laid out like `layout` (vocab rows: text, then each audio stream's block), e.g.
    upstream Mini-Omni's own `lm_head` holding the same weights."""
    import torch

    with torch.no_grad():
        for stream in range(layout.audio_streams):
            first_special = layout.audio_offset(stream) + layout.codebook_size
            head_weight[first_special:layout.audio_offset(stream) + layout.audio_vocab_size] = 0


@hookimpl
def register_models(registry):
    registry.add(TINY, tiny_model, description="tiny random OmniLM (7 x 4096 SNAC streams): every stage runs, "
                 "the answer is noise", components=TINY_COMPONENTS)
