"""`omnivox prepare`: encode a manifest's audio once, with the recipe's codec and encoder plugins.

Answer audio -> codec frames (N, slots) int16/int32 .npy; question audio -> encoder features (T, F) float32
.npy. Files are cached under MANIFEST_DIR/cache/<component hash>/ by the audio file's content hash, so a
rerun only encodes new audio; the component hash covers the files a component's settings name (a codec
retrained in place gets a new cache). The output manifest is the input one plus `answer_frames` /
`question_features` fields (paths relative to its folder); training reads it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from omnivox.core.errors import ConfigError
from omnivox.core.progress import bar
from omnivox.training.data import read_manifest
from omnivox.training.recipe import Recipe, build


def _hash_file(path: Path) -> str:
    """A file's content hash, read in blocks (a component's setting may name a checkpoint of gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()[:24]


def _tag(section: dict[str, Any]) -> str:
    """The cache folder's name for a component `section`: its settings, plus the content of every local file or
    folder a setting names, so a codec retrained at the same path gets a new folder instead of the old codes."""
    digest = hashlib.sha256(json.dumps(section, sort_keys=True).encode())
    for key, value in sorted(section.items()):
        path = Path(value) if isinstance(value, str) and key != "_component_" else None
        if path is not None and path.exists():
            files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
            for f in files:
                digest.update(f"{key}/{f.relative_to(path) if path.is_dir() else f.name}:{_hash_file(f)}".encode())
    return digest.hexdigest()[:12]


def prepare(recipe: Recipe, manifest: str | Path, out: str | Path | None = None, log=print,
            progress: bool = True) -> Path:
    """Encode what `manifest` needs; write the prepared manifest (default MANIFEST.prepared.jsonl).
    `progress`: a bar (manifest rows) on stderr when it is a terminal."""
    from omnivox.plugins.audio_files import read_audio

    manifest = Path(manifest)
    out = Path(out) if out else manifest.with_name(manifest.stem + ".prepared.jsonl")
    sections = recipe["prepare"] or {}
    examples = read_manifest(manifest, require_prepared=False)
    need_codec = any(e.audio_out and e.answer_frames is None for e in examples)
    need_encoder = any(e.audio_in and e.question_features is None for e in examples)
    for part, needed in (("codec", need_codec), ("encoder", need_encoder)):
        if needed and part not in sections:
            raise ConfigError(f"{recipe.source}: the manifest needs a {part} but the recipe has no prepare.{part}",
                              f"add prepare: {{{part}: {{_component_: ..., ...}}}} to the recipe")
    codec = build(sections["codec"], "prepare.codec", "codecs") if need_codec else None
    encoder = build(sections["encoder"], "prepare.encoder", "encoders") if need_encoder else None
    dirs = {part: manifest.parent / "cache" / f"{part}-{_tag(sections[part])}" for part in sections}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    def cached(part: str, audio: Path, compute) -> str:
        file = dirs[part].resolve() / f"{_hash_file(audio)}.npy"
        if not file.is_file():
            pcm, rate = read_audio(audio)
            tmp = file.with_suffix(".tmp.npy")
            np.save(tmp, compute(pcm, rate))
            tmp.replace(file)
            counts[part] += 1
        return str(file)

    counts = {"codec": 0, "encoder": 0}
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_id = {e.id: e for e in examples}
    for row in bar(rows, desc="prepare", unit="example", enabled=progress, leave=False):
        for field in ("question_audio", "answer_audio", "question_features", "answer_frames"):
            if isinstance(row.get(field), str):  # absolute for now; relative to the output below
                row[field] = str((manifest.parent / row[field]).resolve())
        example = by_id[row["id"]]
        if example.audio_out and example.answer_frames is None:
            row["answer_frames"] = cached("codec", example.answer_audio,
                                          lambda pcm, rate: codec.encode(pcm, rate).numpy().astype(np.int32))
        if example.audio_in and example.question_features is None:
            row["question_features"] = cached("encoder", example.question_audio,
                                              lambda pcm, rate: encoder.encode(pcm, rate).numpy().astype(np.float32))
        for field in ("question_audio", "answer_audio", "question_features", "answer_frames"):
            if isinstance(row.get(field), str):
                row[field] = os.path.relpath(row[field], out.parent.resolve())
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    log(f"prepared {out}: {len(rows)} examples, encoded {counts['codec']} answer audio file(s) to codec frames "
        f"and {counts['encoder']} question audio file(s) to features (the rest came from the cache)")
    return out


def export_encoder(recipe: Recipe, directory: str | Path) -> Path | None:
    """Save the recipe's Whisper encoder next to an exported model as `small.pt` (openai-whisper format,
    encoder weights only), where `omnivox chat --checkpoint DIR` looks for it, so the export hears audio with
    the very features it was trained on. Returns None when the recipe has no Whisper encoder."""
    import torch

    section = (recipe["prepare"] or {}).get("encoder")
    if section is None:
        return None
    encoder = build(section, "prepare.encoder", "encoders")
    module = getattr(encoder, "encoder", None)
    if module is None or not hasattr(module, "blocks"):
        return None  # not a Whisper encoder: nothing chat could load
    dims = {"n_mels": encoder.n_mels, "n_audio_ctx": int(module.positional_embedding.shape[0]),
            "n_audio_state": encoder.feature_dim, "n_audio_head": module.blocks[0].attn.n_head,
            "n_audio_layer": len(module.blocks)}
    path = Path(directory) / "small.pt"
    state = {f"encoder.{k}": v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"dims": dims, "model_state_dict": state}, path)
    return path
