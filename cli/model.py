"""`omnivox convert` and `omnivox download`: get Mini-Omni checkpoints into omnivox's native format.
Both show progress bars on stderr when it is a terminal."""

from __future__ import annotations

import argparse

MODELS = {"mini-omni": "gpt-omni/mini-omni"}


def register(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="convert an upstream checkpoint to omnivox's native format",
                             description="Convert an upstream Mini-Omni directory (lit_model.pth + "
                                         "model_config.yaml) to model.safetensors + model_config.yaml.")
    convert.add_argument("family", choices=sorted(MODELS), help="upstream checkpoint family")
    convert.add_argument("src", help="upstream checkpoint directory")
    convert.add_argument("dst", help="destination directory (created)")
    convert.set_defaults(func=_convert)

    download = sub.add_parser("download", help="download a checkpoint from the Hugging Face hub (online)")
    download.add_argument("family", choices=sorted(MODELS), help="which model")
    download.add_argument("dir", nargs="?", default="checkpoints/mini-omni", help="target directory")
    download.set_defaults(func=_download)


def _convert(args: argparse.Namespace) -> int:
    from omnivox.core.kernel.checkpoint import convert_upstream

    dst = convert_upstream(args.src, args.dst, progress=True)
    print(f"converted {args.src} -> {dst}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from omnivox.core.kernel.checkpoint import download

    path = download(MODELS[args.family], args.dir, progress=True)
    print(f"downloaded {MODELS[args.family]} to {path}")
    return 0
