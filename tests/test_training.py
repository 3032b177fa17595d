"""Training runs on a tiny random data set: the trainable map is exact per stage, kill-and-resume gives the
weights of an uninterrupted run, and bad inputs fail with a clear error before any training step."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omnivox.core.errors import CheckpointError, ConfigError, InputError
from omnivox.training.freeze import GROUP_PREFIXES, group_of
from omnivox.training.loss import token_losses
from omnivox.training.recipe import build_model, load_recipe
from omnivox.training.schedule import global_batch
from omnivox.training.trainer import TrainingRecipe, train
from omnivox.training.weights import read_init_state, write_native

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
STAGES = {"tiny_stage1_alignment": ["A1T1", "T1A2"], "tiny_stage2_adaption": ["A1T2"],
          "tiny_stage3_finetune": ["A1A2"]}


def make_manifest(directory: Path, n: int = 4, frames: int = 6, feature_frames: int = 12, feature_dim: int = 32,
                  slots: int = 7, codebook: int = 64, seed: int = 0) -> Path:
    """A prepared manifest of random features/codec frames: every task over n questions."""
    rng = np.random.default_rng(seed)
    (directory / "cache").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        feats = directory / "cache" / f"f{k}.npy"
        np.save(feats, rng.standard_normal((feature_frames + k, feature_dim)).astype(np.float32))
        codes = directory / "cache" / f"c{k}.npy"
        np.save(codes, rng.integers(0, codebook, (frames + k, slots)).astype(np.int32))
        q, a = f"what is {k} plus {k}", f"it is {2 * k}"
        rows += [
            {"id": f"{k}-asr", "task": "A1T1", "question_features": f"cache/f{k}.npy", "answer_text": q},
            {"id": f"{k}-tts", "task": "T1A2", "question_text": a, "answer_text": a,
             "answer_frames": f"cache/c{k}.npy"},
            {"id": f"{k}-qa", "task": "A1T2", "question_features": f"cache/f{k}.npy", "answer_text": a},
            {"id": f"{k}-qa-speech", "task": "A1A2", "question_features": f"cache/f{k}.npy", "answer_text": a,
             "answer_frames": f"cache/c{k}.npy"},
        ]
    path = directory / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def overrides(manifest: Path, out: Path, **extra) -> list[str]:
    base = {"data.path": str(manifest), "output_dir": str(out), "logger.tensorboard": "false",
            "logger.plot": "false", "training.log_every": "1", "training.checkpoint_every": "0"}
    base.update({k.replace("__", "."): str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def random_init(tmp_path_factory) -> Path:
    """A random tiny model (the tiny recipes' shape) saved in the native format, used as init_from."""
    from omnivox.core.kernel.tokenizer import TextTokenizer

    torch.manual_seed(5)
    model = build_model("tiny", {"post_adapter": True, "post_adapter_layers": 1}, init_std=0.3)
    directory = tmp_path_factory.mktemp("init")
    write_native(directory, model.state_dict(), model.config, TextTokenizer.byte_level())
    return directory


@pytest.mark.parametrize("stage", list(STAGES))
def test_trainable_map_is_exact(stage, data, random_init, tmp_path):
    """After one step, exactly the tensors of the groups the stage's recipe marks `full` changed."""
    recipe = load_recipe(RECIPES / f"{stage}.yaml", overrides(
        data, tmp_path, init_from=random_init, training__max_steps=1, training__batch_size=16,
        data__tasks=json.dumps(STAGES[stage])))
    train(recipe)
    before, _ = read_init_state(random_init)
    after = load_file(str(tmp_path / "export" / "model.safetensors"))
    full = {g for g, mode in recipe["trainable"].items() if mode == "full"}
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    expected = {k for k in after if group_of(k) in full}
    assert changed == expected
    want = {"tiny_stage1_alignment": {"adapter"}, "tiny_stage2_adaption": {"lm", "heads"},
            "tiny_stage3_finetune": set(GROUP_PREFIXES)}[stage]
    assert {group_of(k) for k in changed} == want


def _run_cli(args: list[str], stderr=subprocess.STDOUT, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    if threads is not None:  # torch's intra-op threads: float sums differ in their last bits across counts
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "omnivox.cli.main", "train", *args], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env)


@pytest.mark.slow  # a subprocess start plus two short runs
@pytest.mark.usefixtures("single_thread")  # the killed subprocess and this process sum floats alike (1 thread each)
def test_kill_and_resume_gives_identical_weights(data, random_init, tmp_path):
    recipe = str(RECIPES / "tiny_stage3_finetune.yaml")
    common = dict(init_from=random_init, training__max_steps=12, training__batch_size=4,
                  training__checkpoint_every=3, data__tasks="[A1A2, T1A2, A1T1]")
    full_run = load_recipe(recipe, overrides(data, tmp_path / "full", **common))
    train(full_run)

    killed = tmp_path / "killed"
    proc = _run_cli([recipe, *overrides(data, killed, **common)], threads=1)
    for line in proc.stdout:
        if line.startswith("checkpoint saved") and "step 3)" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()  # it died mid-run
    assert (killed / "checkpoints" / "latest").read_text() in {f"step_{s:06d}" for s in (3, 6, 9)}

    train(load_recipe(recipe, overrides(data, killed, resume="auto", **common)))
    a = load_file(str(tmp_path / "full" / "export" / "model.safetensors"))
    b = load_file(str(killed / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the metrics of the resumed run continue those of the killed one, step for step
    def losses(run: Path) -> list[list[str]]:  # step, loss terms, lr, grad norm (throughput differs)
        return [row.split(",")[:-2] for row in (run / "metrics.csv").read_text().splitlines()]

    assert losses(killed) == losses(tmp_path / "full")
    assert [row[0] for row in losses(killed)[1:]] == [f"{s}.0" for s in range(1, 13)]
    state = torch.load(killed / "checkpoints" / "step_000012" / "state.pt", weights_only=False)
    assert state["step"] == 12 and state["position"] == 48


def test_the_export_is_the_weight_average_and_it_resumes(data, random_init, tmp_path):
    """training.ema_decay: the export holds the moving average of the trainable weights over the steps (each step's
    weights, from its checkpoint), and a run resumed from a checkpoint exports the same average."""
    recipe = str(RECIPES / "tiny_stage3_finetune.yaml")
    common = dict(init_from=random_init, training__max_steps=6, training__batch_size=4, training__ema_decay=0.3,
                  training__checkpoint_every=1, training__keep_checkpoints=0, data__tasks="[A1A2, T1A2]")
    train(load_recipe(recipe, overrides(data, tmp_path / "a", **common)))
    exported = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    average, _ = read_init_state(random_init)
    for step in range(1, 7):
        weights = load_file(str(tmp_path / "a" / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))
        decay = min(0.3, (1 + step) / (10 + step))
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in weights}
    trained = [k for k in exported if group_of(k) != "encoder"]
    assert trained and all(torch.allclose(exported[k], average[k], atol=1e-6) for k in trained)
    assert not torch.equal(exported[trained[0]], weights[trained[0]])  # not the last step's weights

    resumed = tmp_path / "b"
    train(load_recipe(recipe, overrides(data, resumed, resume=tmp_path / "a" / "checkpoints" / "step_000003",
                                        **common)))
    again = load_file(str(resumed / "export" / "model.safetensors"))
    assert all(torch.equal(again[k], exported[k]) for k in exported)

    plain = dict(common, training__ema_decay="null")
    train(load_recipe(recipe, overrides(data, tmp_path / "c", **plain)))
    with pytest.raises(CheckpointError, match="holds no weight average, but training.ema_decay is set"):
        train(load_recipe(recipe, overrides(data, tmp_path / "d", resume=tmp_path / "c" / "checkpoints" /
                                            "step_000003", **common)))


def test_a_weight_average_missing_a_trainable_weight_is_refused():
    from omnivox.training.weight_average import WeightAverage

    average = WeightAverage(torch.nn.Linear(2, 2), 0.9)
    with pytest.raises(CheckpointError, match=r"weight average lacks trainable weights \['bias'\]"):
        average.load_state_dict({"weight": torch.zeros(2, 2)})


def _no_step_taken(out: Path) -> bool:
    return not (out / "checkpoints").exists() and not (out / "metrics.csv").exists()


def test_manifest_missing_file_names_file_and_line(data, tmp_path):
    lines = data.read_text().splitlines()
    row = json.loads(lines[2])
    row["question_features"] = "cache/nope.npy"
    lines[2] = json.dumps(row)
    bad = data.parent / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:3: question_features file cache/nope\.npy not found"):
        train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml", overrides(bad, tmp_path, init_from="null")))
    assert _no_step_taken(tmp_path)


def test_unprepared_manifest_says_run_prepare(tmp_path):
    (tmp_path / "q.wav").write_bytes(b"RIFF")
    manifest = tmp_path / "raw.jsonl"
    manifest.write_text(json.dumps({"id": "a", "task": "A1T2", "question_audio": "q.wav", "answer_text": "x"}) + "\n")
    with pytest.raises(InputError, match=r"raw\.jsonl:1: question_features missing") as info:
        train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml", overrides(manifest, tmp_path, init_from="null")))
    assert "omnivox prepare" in info.value.fix


def test_audio_too_long_for_context(data, tmp_path):
    """Features of 12..15 frames + answer do not fit a 24-position context: the first such line is named."""
    with pytest.raises(InputError, match=r"manifest\.jsonl:1: the question audio and answer need \d+ positions "
                                         r"but the model's context is 24"):
        train(load_recipe(RECIPES / "tiny_stage1_alignment.yaml", overrides(
            data, tmp_path, init_from="null", model__overrides="{post_adapter: true, post_adapter_layers: 1, "
                                                                "block_size: 24}")))
    assert _no_step_taken(tmp_path)


def test_init_from_with_other_shapes_fails_before_training(data, tmp_path):
    from omnivox.core.kernel.tokenizer import TextTokenizer

    other = build_model("tiny", {"n_embd": 32, "head_size": 8, "post_adapter": True, "post_adapter_layers": 1})
    write_native(tmp_path / "other", other.state_dict(), other.config, TextTokenizer.byte_level())
    with pytest.raises(CheckpointError, match=r"do not fit the model: .*backbone\.embed_tokens\.weight "
                                              r"\(1216, 32\) != model \(1216, 64\)"):
        train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml",
                          overrides(data, tmp_path / "run", init_from=tmp_path / "other")))
    assert _no_step_taken(tmp_path / "run")


def test_init_from_partial_load_is_reported(data, tmp_path, capsys):
    """A model without the TTS adapter loads into one with it: the missing tensors are listed."""
    from omnivox.core.kernel.tokenizer import TextTokenizer

    plain = build_model("tiny")
    write_native(tmp_path / "plain", plain.state_dict(), plain.config, TextTokenizer.byte_level())
    train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml",
                      overrides(data, tmp_path / "run", init_from=tmp_path / "plain", training__max_steps=1)))
    out = capsys.readouterr().out
    assert f"init_from {tmp_path / 'plain'} (omnivox): loaded {len(plain.state_dict())} of" in out
    assert "kept at initialisation" in out and "post_adapter.layers.0" in out
    after = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    assert torch.equal(after["adapter.gate_proj.weight"], plain.state_dict()["adapter.gate_proj.weight"])


def test_init_from_qwen2_extends_the_vocabulary(tmp_path):
    """A Hugging Face Qwen2 directory (text vocab only) fills the first rows of the multi-stream table."""
    from transformers import Qwen2ForCausalLM

    from omnivox.core.kernel.model import qwen2_config
    from omnivox.training.weights import load_init

    model = build_model("tiny")
    cfg = model.config
    qwen = Qwen2ForCausalLM(qwen2_config(cfg, vocab_size=cfg.text_vocab_size))
    qwen.save_pretrained(tmp_path)
    report = load_init(model, tmp_path)
    assert report[0].startswith(f"init_from {tmp_path} (qwen2): loaded")
    assert any("backbone.embed_tokens.weight rows 0..319 of 1216" in line for line in report)
    assert torch.equal(model.backbone.embed_tokens.weight[:320], qwen.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight[:320], qwen.lm_head.weight)
    assert torch.equal(model.backbone.layers[1].mlp.up_proj.weight, qwen.model.layers[1].mlp.up_proj.weight)


def test_resume_path_without_state_is_refused(data, tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(CheckpointError, match="has no state.pt"):
        train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml",
                          overrides(data, tmp_path / "run", init_from="null", resume=tmp_path / "ckpt")))


def test_bad_tasks_and_batch_size(data, tmp_path):
    with pytest.raises(InputError, match="data.tasks names unknown task 'A2T2'"):
        train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml",
                          overrides(data, tmp_path, init_from="null", data__tasks="[A2T2]")))
    with pytest.raises(ConfigError, match="training.batch_size"):
        load_recipe(RECIPES / "tiny_stage2_adaption.yaml", overrides(data, tmp_path, training__batch_size=0))


def test_each_loss_term_is_logged(data, tmp_path):
    train(load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(
        data, tmp_path, init_from="null", training__max_steps=2, data__tasks="[A1A2]")))
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:10] == ["step", "loss", "text"] + [f"audio_{i}" for i in range(7)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["replica_digests"] == [summary["export_digest"]]


def test_loss_curve_png_at_the_end(data, tmp_path):
    pytest.importorskip("matplotlib")  # the `train` extra
    train(load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(
        data, tmp_path, init_from="null", training__max_steps=3, data__tasks="[A1A2]", logger__plot="true")))
    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "summary.json").read_text())["loss_png"] == str(png)


class TextOnlyRecipe(TrainingRecipe):
    """The extension point: a new objective is a subclass overriding `loss` (here: the text term alone)."""

    def loss(self, out, batch):
        losses = token_losses(out.text_logits, out.audio_logits, batch.labels)
        counts = self.ctx.all_sum(losses.counts)
        terms = losses.sums / counts.clamp(min=1)
        return terms[0] + 0.0 * terms.sum(), terms.detach(), counts


def _metrics(run: Path) -> list[dict[str, float]]:
    with (run / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_a_subclass_with_its_own_loss_runs_through_omnivox_train(data, random_init, tmp_path):
    from omnivox.cli.main import main

    recipe = str(RECIPES / "tiny_stage3_finetune.yaml")
    args = overrides(data, tmp_path / "base", init_from=random_init, training__max_steps=2, data__tasks="[A1A2]")
    assert main(["train", recipe, *args]) == 0
    custom = overrides(data, tmp_path / "custom", init_from=random_init, training__max_steps=2,
                       data__tasks="[A1A2]", trainer___component_="test_training.TextOnlyRecipe")
    assert main(["train", recipe, *custom]) == 0
    base, text_only = _metrics(tmp_path / "base"), _metrics(tmp_path / "custom")
    assert all(row["loss"] != row["text"] for row in base)  # the default loss adds the audio streams
    assert all(row["loss"] == row["text"] for row in text_only)  # the override is what was optimised
    assert text_only[0]["audio_0"] == base[0]["audio_0"]  # same model and batch at step 1
    assert text_only[1]["audio_0"] != base[1]["audio_0"]  # but other updates after it


def test_evaluate_reports_the_held_out_loss_without_changing_training(data, random_init, tmp_path):
    """Full-batch training on the eval set: the training loss at step k+1 is the eval loss after step k."""
    common = dict(init_from=random_init, training__max_steps=3, training__batch_size=4, data__tasks="[A1A2]")
    train(load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(data, tmp_path / "plain", **common)))
    summary = train(load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(
        data, tmp_path / "eval", training__eval_every=1, eval_data=f"{{path: {data}, tasks: [A1A2]}}", **common)))
    plain, trained = _metrics(tmp_path / "plain"), _metrics(tmp_path / "eval")
    drop = ("tokens_per_s", "examples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in plain] == \
           [{k: v for k, v in r.items() if k not in drop} for r in trained]  # evaluation perturbs nothing
    with (tmp_path / "eval" / "eval.csv").open() as f:
        evals = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert [row["step"] for row in evals] == [1.0, 2.0, 3.0]
    for after, next_step in zip(evals[:2], trained[1:], strict=True):
        assert after["loss"] == pytest.approx(next_step["loss"], rel=1e-5)
        assert after["audio_3"] == pytest.approx(next_step["audio_3"], rel=1e-5)
    assert summary["eval"] == pytest.approx({k: v for k, v in evals[-1].items() if k != "step"})


def test_absent_loss_terms_show_as_absent_never_nan(data, tmp_path, capsys):
    """Stage 2 trains text only: its audio terms are `-` on the console and in the CSV files, null in
    summary.json and not in TensorBoard at all; no "nan" anywhere."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = train(load_recipe(RECIPES / "tiny_stage2_adaption.yaml", overrides(
        data, tmp_path, init_from="null", training__max_steps=2, logger__tensorboard="true",
        training__eval_every=2, eval_data=f"{{path: {data}, tasks: [A1T2]}}")))
    console = capsys.readouterr().out
    assert "nan" not in console.lower() and "step 2/2  loss" in console and "  audio -  " in console, console
    for name in ("metrics.csv", "eval.csv"):
        text = (tmp_path / name).read_text()
        assert "nan" not in text.lower(), text
        rows = list(csv.DictReader(text.splitlines()))
        assert rows and all(r["audio_0"] == "-" and r["audio_6"] == "-" and float(r["text"]) > 0 for r in rows)
    assert summary["eval"]["audio_0"] is None and summary["eval"]["text"] > 0
    tags = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    assert "train/text" in tags and "eval/text" in tags and not [t for t in tags if "audio_" in t], tags


def test_a_term_is_averaged_over_the_steps_that_had_targets():
    from omnivox.training.trainer import LossWindow, StepResult

    window = LossWindow(["text", "audio_0"])
    for loss, terms, counts in ((2.0, [1.0, 3.0], [5, 4]), (1.0, [1.0, 0.0], [5, 0])):  # no audio in step 2
        window.add(StepResult(loss, torch.tensor(terms), torch.tensor(counts), 0.0), examples=1)
    assert window.metrics() == {"loss": 1.5, "text": 1.0, "audio_0": 3.0}


@pytest.mark.slow  # two subprocess starts
def test_progress_bar_on_a_terminal_only(data, tmp_path):
    """A step bar on stderr when it is a terminal; none with progress=false; stdout keeps the log lines."""
    import fcntl
    import pty
    import struct
    import termios

    def run(out: Path, *extra: str) -> str:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
        proc = _run_cli([str(RECIPES / "tiny_stage2_adaption.yaml"), *overrides(
            data, out, init_from="null", training__max_steps=3, training__log_every=3), *extra], stderr=follower)
        os.close(follower)
        stderr = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            stderr += chunk
        assert proc.wait(timeout=120) == 0
        assert "step 3/3  loss" in proc.stdout.read()
        os.close(leader)
        return stderr.decode(errors="replace")

    assert "3/3" in run(tmp_path / "bar")
    assert "3/3" not in run(tmp_path / "quiet", "progress=false")


def test_export_keeps_the_seeded_codec_the_frames_came_from(data, tmp_path):
    """`--codec EXPORT/codec` loads the very codec `omnivox prepare` encoded the answers with."""
    from omnivox.core.contracts.manager import create

    recipe = load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(
        data, tmp_path, init_from="null", training__max_steps=1, data__tasks="[A1A2]"))
    train(recipe)
    section = recipe["prepare"]["codec"]
    exported = create("codecs", "snac", model=str(tmp_path / "export" / "codec"))
    original = create("codecs", "snac", config=section["config"], seed=section["seed"])
    frames = torch.from_numpy(np.load(data.parent / "cache" / "c0.npy")).long()
    assert torch.equal(exported.decode(frames), original.decode(frames))


@pytest.mark.parametrize("window", [0, 3])
def test_the_trainer_takes_its_batches_from_the_order(tmp_path, window, random_init):
    """training.group_by_length: one epoch still trains every line once; grouped, a batch holds lines of about
    one length (here: the 4 longest, the next 4, ...); the same position gives the same batch (resume)."""
    data = make_manifest(tmp_path / "data", n=12)
    recipe = load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(
        data, tmp_path / "run", init_from=random_init, training__batch_size=4, training__group_by_length=window,
        data__tasks="[A1A2]"))
    trainer = TrainingRecipe(recipe)
    trainer.setup()
    try:
        lengths = trainer.check_lengths(trainer.dataset)
        batches = []
        for _ in range(3):
            batches.append(global_batch(12, recipe.data["seed"], trainer.position, 4, trainer.order))
            trainer.train_step(trainer.next_batch())
    finally:
        trainer.cleanup()
    assert sorted(i for b in batches for i in b) == list(range(12))  # one epoch: every line once
    by_length = sorted(range(12), key=lambda i: -lengths[i])
    neighbours = {frozenset(by_length[k:k + 4]) for k in range(0, 12, 4)}
    assert ({frozenset(b) for b in batches} == neighbours) == bool(window)  # grouped: the 4 longest, ...


def test_audio_noise_replaces_fed_codes_only_and_draws_the_same_at_a_position(data, random_init, tmp_path):
    """training.audio_noise: a training batch's fed audio codes are replaced by random codes at about that share;
    text, audio specials, padding and labels stay; the same position draws the same noise (resume)."""
    def batch(share):
        recipe = load_recipe(RECIPES / "tiny_stage3_finetune.yaml", overrides(
            data, tmp_path / f"run{share}", init_from=random_init, training__batch_size=8, training__audio_noise=share,
            data__tasks="[A1A2, T1A2]"))
        trainer = TrainingRecipe(recipe)
        trainer.setup()
        try:
            return trainer.next_batch(), trainer.next_batch(), trainer.layout
        finally:
            trainer.cleanup()

    (clean, _, layout), (noisy, again, _) = batch(0.0), batch(0.3)
    assert torch.equal(noisy.input_ids, again.input_ids) and torch.equal(noisy.labels, clean.labels)
    changed = noisy.input_ids != clean.input_ids
    codes = clean.input_ids[:, : layout.audio_streams] < layout.codebook_size
    assert not changed[:, layout.audio_streams:].any()  # the text stream is fed as it is
    assert not changed[:, : layout.audio_streams][~codes].any()  # specials and padding too
    assert 0.2 < changed[:, : layout.audio_streams][codes].float().mean() < 0.4
    assert (noisy.input_ids[:, : layout.audio_streams][codes] < layout.codebook_size).all()
