"""`torchrun --nproc_per_node 2` (gloo, CPU) runs a tiny recipe: both ranks end with identical weights, and the
per-step loss matches a single process over the same global batch.

Tolerances (measured on 2 CPU cores, 6 steps, global batch 4): per-step loss relative difference <= 1e-5
(measured ~1e-7: only the order of the gradient sums differs), final weights <= 5e-4 absolute (measured
5e-5: Adam's normalised steps magnify the last-bit gradient differences of nearly-zero gradients)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import RECIPES, make_manifest, overrides

from omnivox.core.kernel.checkpoint import OmniModel

pytestmark = pytest.mark.slow
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-4


def _torchrun() -> list[str]:
    exe = shutil.which("torchrun")
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def _run(args: list[str], nproc: int | None) -> subprocess.CompletedProcess:
    launcher = [*_torchrun(), "--standalone", "--nproc_per_node", str(nproc)] if nproc else [sys.executable]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "omnivox.cli.main", "train", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("mode,tasks", [("ddp", "[A1A2, T1A2, A1T1]"), ("fsdp", "[A1A2]")])
def test_two_ranks_match_one_process(mode, tasks, tmp_path):
    manifest = make_manifest(tmp_path / "data")
    recipe = str(RECIPES / "tiny_stage3_finetune.yaml")
    extra = dict(init_from="null", training__max_steps=6, training__batch_size=4, data__tasks=tasks,
                 training__distributed=mode, training__num_threads=1)
    two = _run([recipe, *overrides(manifest, tmp_path / "two", **extra)], nproc=2)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = _run([recipe, *overrides(manifest, tmp_path / "one", **extra)], nproc=None)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed"] == mode
    if mode == "ddp":  # replicated weights: every rank's digest, gathered at the end, is the export's
        assert summary["replica_digests"] == [summary["export_digest"]] * 2
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert torch.allclose(torch.tensor(b), torch.tensor(a), rtol=LOSS_RTOL, atol=0)
    wa = load_file(str(tmp_path / "one" / "export" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= WEIGHT_ATOL
    OmniModel.from_pretrained(tmp_path / "two" / "export")


def test_fsdp_refuses_an_adapter_it_cannot_reduce(tmp_path):
    manifest = make_manifest(tmp_path / "data")
    run = _run([str(RECIPES / "tiny_stage1_alignment.yaml"), *overrides(
        manifest, tmp_path / "run", init_from="null", training__distributed="fsdp", training__batch_size=4)], nproc=2)
    assert run.returncode != 0
    assert "FSDP cannot train the adapter on data with text-in examples" in run.stdout + run.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()
