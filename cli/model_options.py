"""The command line's model options, shared by chat, listen and serve: `--checkpoint` (default: the shipped `demo`
model; `random`: the tiny random kit) and the `--encoder` / `--codec` overrides of the components the model's
export recorded, turned into a speech kit (core/runtime/speech_kit.py); `--stream-input` makes its encoder a
streaming one (core/chunked_encoder.py)."""

from __future__ import annotations

import argparse

from omnivox.core.chunked_encoder import ChunkedEncoder, chunked
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.speech_kit import DEFAULT_MODEL, SpeechKit


def add_model_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--checkpoint, --encoder, --whisper, --stream-input, --codec."""
    p.add_argument("--checkpoint", metavar="DIR|NAME",
                   help=f"a trained export or Mini-Omni checkpoint dir, or a registered model (default: "
                        f"{DEFAULT_MODEL}, the shipped demo model; random: a tiny random model)")
    p.add_argument("--encoder", metavar="NAME[:MODEL]",
                   help="encoder plugin (and its model), e.g. faster_whisper:tiny.en (default: the one the "
                        "checkpoint recorded; Mini-Omni: whisper CHECKPOINT/small.pt)")
    p.add_argument("--whisper", metavar="PT", help="same as --encoder whisper:PT")
    p.add_argument("--stream-input", metavar="CHUNK_MS[:CONTEXT_MS]",
                   help="encode the question in chunks while it is spoken and prefill them: features of CHUNK_MS "
                        "chunks, each with CONTEXT_MS of audio before it (default 2 chunks); a model not trained on "
                        "these features hears them less well than whole ones (docs/streaming_input.md)")
    p.add_argument("--codec", metavar="NAME[:MODEL]|DIR",
                   help="codec plugin (and its model), e.g. mel:DIR, or a SNAC dir / hub id (default: the one the "
                        "checkpoint recorded; Mini-Omni: hubertsiuzdak/snac_24khz)")


def load_kit(args: argparse.Namespace, *, checkpoint: str | None = None, hear: bool = True, speak: bool = True,
             say=print) -> SpeechKit:
    """The speech kit of the parsed options (args.checkpoint, or `checkpoint` when given: serve's --config may name
    it; args.encoder, args.whisper, args.codec, args.seed where the command has --seed); the encoder only when
    `hear`, the codec only when `speak`. Says which model runs when it is not the one named."""
    encoder = args.encoder
    if args.whisper is not None and encoder is None:
        encoder = f"whisper:{args.whisper}"
    kit = SpeechKit.load(args.checkpoint if checkpoint is None else checkpoint, encoder=encoder, codec=args.codec,
                         hear=hear, speak=speak, seed=getattr(args, "seed", None) or 0, say=say)
    if getattr(args, "stream_input", None) and kit.encoder is not None:
        asked = chunked(kit.encoder, args.stream_input)
        if isinstance(kit.encoder, ChunkedEncoder):  # trained on chunked features: it hears only those
            if kit.encoder.setting != asked.setting:
                raise ConfigError(f"--stream-input {args.stream_input}: the model was trained on chunked features "
                                  f"({kit.encoder.setting}, recorded with its encoder) and hears only those",
                                  "drop --stream-input: the model streams its input already")
        else:
            kit.encoder = asked
    return kit
