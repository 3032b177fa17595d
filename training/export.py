"""What an export needs besides the LM weights so that `omnivox chat` can hear and speak with it: the record of
the encoder and codec it was trained with (EXPORT/components.json, read by core/runtime/speech_kit.py), and
copies of those that exist nowhere else.

- A codec whose weights exist nowhere else (one built from a `config` with seeded random weights: the tiny
  recipes) is written into EXPORT/codec/ by its plugin (the `exports` its registry entry declares).
- A codec or encoder whose `model` / `checkpoint` is a local path (a trained `mel` codec directory, a
  CTranslate2 Whisper directory) is copied in (EXPORT/codec/, EXPORT/encoder/), so the export is self-contained.
- A Whisper encoder saved by training/prepare.py's `export_encoder` as EXPORT/small.pt is recorded as that file.
- A component named by a hub id or a shipped name (`tiny.en`) is recorded by that name, not copied.

`ship(EXPORT, DEST)` (or `python -m omnivox.training.export EXPORT DEST`) copies an export with its LM weights in
fp16: the form the package ships (`models/demo/`, loaded as the model `demo`)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from omnivox.core.contracts.manager import get_plugin_manager
from omnivox.core.runtime.speech_kit import COMPONENTS_FILE
from omnivox.training.recipe import Recipe, component_params

CODEC_DIR = "codec"
ENCODER_DIR = "encoder"
WHISPER_FILE = "small.pt"  # what training/prepare.py's export_encoder writes
MODEL_KEYS = ("model", "checkpoint")  # factory parameters that name weights
RUNTIME_KEYS = ("threads", "device")  # how to run a component, not what it computes: never recorded


def export_codec(recipe: Recipe, directory: str | Path) -> Path | None:
    """Record the recipe's encoder and codec in DIRECTORY/components.json, copying what exists only here (see the
    module docstring); returns the codec folder copied into DIRECTORY, or None when none was."""
    directory = Path(directory)
    prepare = recipe["prepare"] or {}
    record, codec_dir = {}, None
    encoder = prepare.get("encoder")
    if encoder is not None and "." not in str(encoder.get("_component_")):
        record["encoder"] = _encoder_record(encoder, directory)
    codec = prepare.get("codec")
    if codec is not None and "." not in str(codec.get("_component_")):
        record["codec"], codec_dir = _codec_record(codec, directory)
    if record:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / COMPONENTS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return codec_dir


def _encoder_record(section: dict, directory: Path) -> dict:
    name, params = section["_component_"], _kept(section)
    if name == "whisper" and (directory / WHISPER_FILE).is_file():  # the very weights prepare used
        params = {k: v for k, v in params.items() if k not in ("dims", "seed", *MODEL_KEYS)}
        return {"name": name, "params": {**params, "checkpoint": WHISPER_FILE}, "local": ["checkpoint"]}
    return {"name": name, **_copy_local(params, directory / ENCODER_DIR)}


def _codec_record(section: dict, directory: Path) -> tuple[dict, Path | None]:
    name, params, target = section["_component_"], _kept(section), directory / CODEC_DIR
    entry = get_plugin_manager().registry("codecs").entries.get(name)
    saved = entry.exports(params, target) if entry is not None and entry.exports is not None else None
    if saved is not None:  # the codec's plugin wrote its weights into the export
        local = [key for key in MODEL_KEYS if saved.get(key) == str(target)]
        return {"name": name, "params": {**saved, **{key: target.name for key in local}}, "local": local}, target
    record = _copy_local(params, target)
    return {"name": name, **record}, target if record["local"] else None


def _kept(section: dict) -> dict:
    return {k: v for k, v in component_params(section).items() if k not in RUNTIME_KEYS}


def _copy_local(params: dict, target: Path) -> dict:
    """{"params", "local"}: a `model`/`checkpoint` that is a local file or directory is copied to `target`
    (a file keeps its name inside it) and recorded relative to the export."""
    params, local = dict(params), []
    for key in MODEL_KEYS:
        value = params.get(key)
        if not isinstance(value, str) or not Path(value).expanduser().exists():
            continue
        source = Path(value).expanduser()
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            params[key] = target.name
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / source.name)
            params[key] = f"{target.name}/{source.name}"
        local.append(key)
        break  # one weights parameter per component
    return {"params": params, "local": local}


def ship(export: str | Path, dest: str | Path, dtype: str = "float16") -> int:
    """Copy the export directory EXPORT to DEST (replaced) with its LM weights stored as `dtype` (the speech kit's
    load_model widens them back to fp32); returns DEST's size in bytes."""
    from safetensors.torch import load_file, save_file

    from omnivox.core.kernel.checkpoint import CONFIG_FILE, NATIVE_WEIGHTS

    export, dest = Path(export), Path(dest)
    for needed in (NATIVE_WEIGHTS, CONFIG_FILE):
        if not (export / needed).is_file():
            from omnivox.core.errors import CheckpointError

            raise CheckpointError(f"{export / needed} not found: not an omnivox export",
                                  "pass the export/ folder an `omnivox train` run wrote")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    state = load_file(str(export / NATIVE_WEIGHTS))
    cast = getattr(torch, dtype)
    save_file({k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}, str(tmp / NATIVE_WEIGHTS))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy an export with fp16 LM weights (the shipped form).")
    parser.add_argument("export", help="the export/ folder of an `omnivox train` run")
    parser.add_argument("dest", help="where the copy goes (replaced), e.g. models/demo")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    args = parser.parse_args(argv)
    size = ship(args.export, args.dest, args.dtype)
    print(f"{args.dest}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
