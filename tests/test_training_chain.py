"""The paper's three stages at tiny scale, as a user runs them from the repository root: espeak-ng synthetic
data -> `omnivox prepare` -> stage 1 -> init_from -> stage 2 -> stage 3, with the shipped recipes unchanged.
Each stage's training loss falls by >= 50% from its first logged value, and the stage-3 export loads and
answers training questions through the inference path (same strategy layout) and in `omnivox chat`."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivox.cli.main import main
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.generation import generate
from omnivox.plugins.audio_files import read_audio

pytestmark = pytest.mark.slow
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STAGES = ("tiny_stage1_alignment", "tiny_stage2_adaption", "tiny_stage3_finetune")


def _tree_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return h.hexdigest()


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_tiny_three_stage_chain(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["synth-data", "data/synthetic"]) == 0
    assert main(["synth-data", "again"]) == 0  # deterministic: byte-identical audio and manifest
    assert _tree_digest(Path("data/synthetic")) == _tree_digest(Path("again"))
    stage1 = str(RECIPES / f"{STAGES[0]}.yaml")
    assert main(["prepare", stage1, "data/synthetic/manifest.jsonl"]) == 0
    assert main(["prepare", stage1, "data/synthetic/manifest.jsonl"]) == 0
    assert "encoded 0 answer audio file(s) to codec frames and 0 question" in capsys.readouterr().out  # cached

    drops = {}
    for stage in STAGES:
        assert main(["train", str(RECIPES / f"{stage}.yaml")]) == 0
        losses = _losses(Path("runs") / stage)
        drops[stage] = 1 - losses[-1] / losses[0]
    out = capsys.readouterr().out
    print(json.dumps(drops))  # shown with -s: the measured drop per stage
    assert "init_from runs/tiny_stage1_alignment/export (omnivox): loaded 44 of 44 tensors" in out
    assert "init_from runs/tiny_stage2_adaption/export (omnivox): loaded 44 of 44 tensors" in out
    assert all(drop >= 0.5 for drop in drops.values()), drops

    model = OmniModel.from_pretrained("runs/tiny_stage3_finetune/export")
    rows = [json.loads(line) for line in Path("data/synthetic/manifest.prepared.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["task"] == "A1A2"]
    exact = 0
    for row in rows:
        features = torch.from_numpy(np.load(Path("data/synthetic") / row["question_features"]))
        result = generate(model, task="A1A2", audio_features=features, max_steps=80)
        assert result.stop_reason == "eoa"  # learned to end its speech on the layout's diagonal
        exact += model.tokenizer.decode(result.text_ids) == row["answer_text"]
    assert exact >= len(rows) // 4, f"{exact} of {len(rows)} answers reproduced"

    # `omnivox chat` loads the export, and hears the question through the exported encoder (small.pt)
    assert main(["chat", "--checkpoint", "runs/tiny_stage3_finetune/export", "--input",
                 "data/synthetic/audio/q000.wav", "--task", "A1T2", "--max-steps", "40", "--quiet",
                 "--text-out", "answer.txt"]) == 0
    assert Path("answer.txt").read_text().strip()
    # ... and speaks through the codec the export keeps (the seeded tiny SNAC its frames were encoded with)
    assert main(["chat", "--checkpoint", "runs/tiny_stage3_finetune/export", "--codec",
                 "runs/tiny_stage3_finetune/export/codec", "--input", "data/synthetic/audio/q000.wav",
                 "--max-steps", "80", "--quiet", "--output", "answer.wav"]) == 0
    pcm, rate = read_audio(Path("answer.wav"))
    assert rate == 24000 and pcm.shape[-1] > rate // 4  # (channels, samples): some speech came out
