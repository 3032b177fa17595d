"""The no-checkpoint demo kit: a tiny random OmniLM with Mini-Omni's structure (7 SNAC streams of 4096
codes), a tiny random Whisper encoder and the real SNAC 24 kHz architecture with random weights. Every
stage runs for real; the outputs are noise until a trained checkpoint is given.

The demo LM's audio heads never choose a special id (their rows are zeroed, so some code always scores
higher): a random model would otherwise end its audio at a random early step, and the demo would show
nothing of the streaming path."""

from __future__ import annotations

TINY = "tiny-random"  # the `checkpoint` value that selects the demo model
TINY_WHISPER_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 2}
NOTICE = "no --checkpoint given: running a tiny RANDOM model (every stage runs; the answer is noise)"


def tiny_model(seed: int = 0, **config_overrides):
    """Random tiny OmniModel (byte-level tokenizer) that keeps speaking until its step budget."""
    from omnivox.core.checkpoint import OmniModel
    from omnivox.core.config import OmniConfig

    overrides = {"whisper_adapter_dim": TINY_WHISPER_DIMS["n_audio_state"], **config_overrides}
    return never_emit_audio_specials(OmniModel.random(OmniConfig.tiny(codebook_size=4096, **overrides), seed=seed))


def never_emit_audio_specials(model):
    """Zero the lm_head rows of every audio stream's special ids: some code always scores higher, so a
    random model fills every slot with a code (and never stops on eoa)."""
    import torch

    layout = model.layout
    with torch.no_grad():
        for stream in range(layout.audio_streams):
            first_special = layout.audio_offset(stream) + layout.codebook_size
            model.lm.lm_head.weight[first_special:layout.audio_offset(stream) + layout.audio_vocab_size] = 0
    return model


def tiny_encoder(seed: int = 0):
    from omnivox.core.plugins import create

    return create("encoders", "whisper", dims=TINY_WHISPER_DIMS, seed=seed)


def random_snac(seed: int = 0):
    from omnivox.core.plugins import create
    from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG

    return create("codecs", "snac", config=SNAC_24KHZ_CONFIG, seed=seed)
