"""The mel codec's training recipe: residual-VQ codebooks fitted by mini-batch k-means with EMA updates.

    omnivox train recipes/codec_mel.yaml [key=value ...]

`MelCodecRecipe` is a `TrainingRecipe` (training/trainer.py) whose steps are the codec's: the same `run()` loop,
`resume: auto|PATH`, metrics.csv / eval.csv / TensorBoard / loss.png, atomic checkpoints and summary.json.

    setup_model      the codec config (recipe `model:` = MelCodecConfig fields), printed
    setup_data       every training (and eval_data) utterance -> stacked log-mel vectors, once; the training
                     mean is removed (it is part of the codec)
    setup_optimizer  codebooks drawn from the training vectors (seeded); EMA counts and sums
    train_step       a batch of `training.batch_size` vectors (one seeded permutation per epoch): for each
                     stage, nearest code, EMA update of counts and sums (decay `ema_decay`), codes = sums /
                     counts; codes used less than `dead_fraction` x the mean are re-drawn from the batch's
                     residuals. Loss: mean squared residual after each stage (the last one is `loss`)
    evaluate         the same residuals over eval_data with the current codebooks
    save/load        checkpoints/step_NNNNNN = a loadable codec dir (config.json, model.safetensors) + state.pt
    export           OUTPUT_DIR/export (or `export:`): the codec directory `create("codecs", "mel", model=DIR)` loads

Data: a codec manifest (training/corpus.py's `<split>.codec.jsonl`): its `answer_audio` files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import soundfile
import torch

from omnivox.core.errors import CheckpointError, ConfigError, InputError
from omnivox.plugins.mel_codec import MelCodec, MelCodecConfig, nearest, quantize
from omnivox.training.checkpointing import LATEST, STATE_FILE, read_checkpoint, replace_dir, rng_state, set_rng_state
from omnivox.training.schedule import global_batch
from omnivox.training.trainer import LossWindow, StepResult, TrainingRecipe


class CodecAudio:
    """The audio files of a JSONL manifest (`field`, default answer_audio), paths relative to the manifest."""

    def __init__(self, path: str, field: str = "answer_audio"):
        manifest = Path(path)
        if not manifest.is_file():
            raise InputError(f"codec manifest {manifest} does not exist",
                             "build one: omnivox synth-data corpus --corpus (corpus/train.codec.jsonl)")
        self.files: list[Path] = []
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{manifest}:{number} is not JSON ({exc.msg})",
                                 "write one JSON object a line") from None
            if not isinstance(row, dict) or not row.get(field):
                raise InputError(f"{manifest}:{number} has no {field!r}", f"give every line an {field} path")
            audio = manifest.parent / row[field]
            if not audio.is_file():
                raise InputError(f"{manifest}:{number}: {audio} does not exist", "rebuild the corpus or fix the path")
            self.files.append(audio)
        if not self.files:
            raise InputError(f"codec manifest {manifest} lists no audio", "point data.path at a non-empty manifest")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Path:
        return self.files[index]


def codec_vectors(codec: MelCodec, dataset: CodecAudio) -> torch.Tensor:
    """Every utterance's stacked log-mel vectors (mean NOT removed), concatenated: (N, vector_dim)."""
    pieces = []
    for path in dataset.files:
        pcm, rate = soundfile.read(path, dtype="float32")
        pieces.append(codec.vectors(pcm, rate))
    return torch.cat(pieces) + codec.mean


class MelCodecRecipe(TrainingRecipe):
    """Fits the mel codec's residual-VQ codebooks (see the module docstring); `training.batch_size` is in
    vectors. A subclass changes the update by overriding `train_step`, or its constants below."""

    ema_decay = 0.9  # per step: codes follow about the last 10 batches
    dead_fraction = 0.05  # a code whose EMA count is below 5% of the mean is re-drawn

    # ---- setup -------------------------------------------------------------------------------------------
    def setup_model(self) -> None:
        from omnivox.training.recipe import build

        if self.ctx.world > 1:
            raise ConfigError("the mel codec recipe runs in one process (k-means is cheap; no data parallelism)",
                              "run it with omnivox train, not torchrun")
        self.config: MelCodecConfig = build(self.cfg["model"], f"{self.recipe.source}: model")
        if not isinstance(self.config, MelCodecConfig):
            raise ConfigError(f"{self.recipe.source}: model builds a {type(self.config).__name__}",
                              "use model: {_component_: omnivox.plugins.mel_codec.MelCodecConfig, ...}")
        c, grid = self.config, self.config.grid()
        self.say(f"== {self.cfg['name']}: mel codec, {c.n_mels} mel bands x {c.stack} frames per vector, "
                 f"{c.n_stages} stages of {c.codebook_size} codes; {grid.frame_rate:g} frames/s of {grid.n_slots} "
                 f"slots ({grid.frame_rate * grid.n_slots:g} tokens/s)")
        self.names = [f"stage_{k}" for k in range(c.n_stages)]

    def setup_data(self) -> None:
        from omnivox.training.recipe import build

        c = self.config
        front = MelCodec(c, torch.zeros(c.n_stages, c.codebook_size, c.vector_dim), torch.zeros(c.vector_dim))
        self.dataset = build(self.cfg["data"], f"{self.recipe.source}: data", "datasets")
        raw = codec_vectors(front, self.dataset)  # (N, D)
        self.mean = raw.mean(0)
        self.vectors = raw - self.mean
        if len(self.vectors) < c.codebook_size:
            raise InputError(f"{len(self.vectors)} training vectors for {c.codebook_size} codes",
                             "train on more audio or use a smaller model.codebook_size")
        self.say(f"data: {len(self.dataset)} utterances, {len(self.vectors)} vectors "
                 f"({len(self.vectors) * c.stack * c.hop / c.sample_rate:.0f} s)")
        self.eval_set = self.eval_vectors = None
        if self.cfg["eval_data"] is not None:
            self.eval_set = build(self.cfg["eval_data"], f"{self.recipe.source}: eval_data", "datasets")
            self.eval_vectors = codec_vectors(front, self.eval_set) - self.mean
            self.say(f"eval data: {len(self.eval_set)} utterances, {len(self.eval_vectors)} vectors")

    def setup_optimizer(self) -> None:
        """Initial codebooks: stage k's codes are random residuals of random vectors after stages < k."""
        c = self.config
        generator = torch.Generator().manual_seed(self.cfg["seed"])
        sample = self.vectors[torch.randperm(len(self.vectors), generator=generator)[: 4 * c.codebook_size]]
        books, residual = [], sample
        for _ in range(c.n_stages):
            book = residual[torch.randperm(len(residual), generator=generator)[: c.codebook_size]].clone()
            residual = residual - book[nearest(residual, book)]
            books.append(book)
        self.codebooks = torch.stack(books)  # (R, C, D)
        start = self.t["batch_size"] / c.codebook_size  # the expected count of a code in one batch
        self.counts = torch.full((c.n_stages, c.codebook_size), start)  # EMA counts (R, C)
        self.sums = self.codebooks * start  # EMA sums (R, C, D)

    # ---- one step ----------------------------------------------------------------------------------------
    def next_batch(self) -> torch.Tensor:
        return self.vectors[global_batch(len(self.vectors), self.cfg["seed"], self.position, self.t["batch_size"])]

    def train_step(self, batch: torch.Tensor) -> StepResult:
        """One EMA k-means update of every stage on a (B, D) batch."""
        d, c = self.ema_decay, self.config
        generator = torch.Generator().manual_seed(self.cfg["seed"] * 100_003 + self.step)  # resumable re-draws
        residual, terms, self.restarts = batch, [], 0
        for k in range(c.n_stages):
            index = nearest(residual, self.codebooks[k])  # (B,)
            counts = torch.bincount(index, minlength=c.codebook_size).float()
            sums = torch.zeros_like(self.sums[k]).index_add_(0, index, residual)
            self.counts[k] = d * self.counts[k] + (1 - d) * counts
            self.sums[k] = d * self.sums[k] + (1 - d) * sums
            self.codebooks[k] = self.sums[k] / self.counts[k].clamp(min=1e-6)[:, None]
            dead = self.counts[k] < self.dead_fraction * self.counts[k].mean()
            if dead.any():
                pick = torch.randint(len(residual), (int(dead.sum()),), generator=generator)
                self.codebooks[k][dead] = residual[pick]
                self.counts[k][dead] = self.counts[k].mean()
                self.sums[k][dead] = self.codebooks[k][dead] * self.counts[k][dead, None]
                self.restarts += int(dead.sum())
            residual = residual - self.codebooks[k][index]  # the updated code of the assignment made above
            terms.append(residual.pow(2).mean())
        self.step += 1
        self.position += self.t["batch_size"]
        terms = torch.stack(terms)  # (R,)
        return StepResult(float(terms[-1]), terms, torch.full((c.n_stages,), len(batch)), float("nan"))

    def record(self, result: StepResult, bar) -> None:
        """metrics.csv: the residual after each stage, codes re-drawn this step, vectors/s."""
        t = self.t
        self.window.add(result, t["batch_size"])
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", refresh=False)
        if not ((t["log_every"] and self.step % t["log_every"] == 0) or self.step == t["max_steps"]):
            return
        metrics = self.window.metrics()
        metrics.update(restarts=float(self.restarts), vectors_per_s=self.window.throughput()["examples_per_s"])
        self.logger.log(self.step, metrics)
        stages = " ".join(f"{metrics[n]:.4f}" for n in self.names)
        self.say(f"[{self.cfg['name']}] step {self.step}/{t['max_steps']}  loss {metrics['loss']:.4f}  "
                 f"per stage {stages}  re-drawn {self.restarts}  {metrics['vectors_per_s']:.0f} vectors/s")
        self.window = LossWindow(self.names)

    # ---- evaluation --------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        codes = quantize(self.eval_vectors, self.codebooks)  # (N, R)
        residual, metrics = self.eval_vectors, {}
        for k in range(self.config.n_stages):
            residual = residual - self.codebooks[k][codes[:, k]]
            metrics[self.names[k]] = float(residual.pow(2).mean())
        metrics = {"loss": metrics[self.names[-1]], **metrics}
        self.logger.log(self.step, metrics, split="eval")
        self.say(f"[{self.cfg['name']}] eval at step {self.step}: loss {metrics['loss']:.4f} "
                 f"over {len(self.eval_vectors)} vectors")
        self.last_eval = metrics
        return metrics

    # ---- checkpoints -------------------------------------------------------------------------------------
    def codec(self) -> MelCodec:
        return MelCodec(self.config, self.codebooks, self.mean)

    def save_checkpoint(self) -> Path:
        """checkpoints/step_NNNNNN: the codec as it is now + state.pt, written aside and moved in place."""
        root = self.recipe.output_dir / "checkpoints"
        final = root / f"step_{self.step:06d}"
        tmp = root / f".step_{self.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.codec().save(tmp)
        torch.save({"counts": self.counts, "sums": self.sums, "step": self.step, "position": self.position,
                    "rng": rng_state(), "recipe": self.cfg["name"]}, tmp / STATE_FILE)
        (tmp / "recipe.yaml").write_text(self.recipe.to_yaml(), encoding="utf-8")
        replace_dir(tmp, final)
        latest = root / (LATEST + ".tmp")
        latest.write_text(final.name)
        os.replace(latest, root / LATEST)
        if self.t["keep_checkpoints"]:
            for old in sorted(root.glob("step_*"))[: -self.t["keep_checkpoints"]]:
                shutil.rmtree(old, ignore_errors=True)
        self.say(f"checkpoint saved: {final} (step {self.step})")
        self.last_checkpoint = final
        return final

    def load_checkpoint(self, path: Path) -> None:
        saved = MelCodec.load(path)
        if saved.config != self.config:
            raise CheckpointError(f"resume checkpoint {path} has another codec config than the recipe",
                                  "resume with the recipe that wrote it, or start a new output_dir")
        if not torch.allclose(saved.mean, self.mean, atol=1e-4):
            raise CheckpointError(f"resume checkpoint {path} was trained on other data (its mean log-mel differs)",
                                  "resume on the same data.path, or start a new output_dir")
        _, state = read_checkpoint(path)
        self.codebooks = saved.codebooks.clone()
        self.counts, self.sums = state["counts"], state["sums"]
        self.step, self.position = state["step"], state["position"]
        set_rng_state(state["rng"])
        self.say(f"resumed from {path} at step {self.step} (vector {self.position})")

    # ---- export ------------------------------------------------------------------------------------------
    def export(self, final_eval: dict[str, float] | None) -> dict[str, Any]:
        export = self.recipe.export_dir
        tmp = export.with_name(export.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        codec = self.codec()
        codec.save(tmp)
        replace_dir(tmp, export)
        png = self.logger.close()
        grid = codec.grid
        summary = {"name": self.cfg["name"], "steps": self.step, "checkpoint": str(self.last_checkpoint),
                   "export": str(export), "loss_png": str(png) if png else None, "eval": final_eval,
                   "frame_rate": grid.frame_rate, "slots": grid.n_slots, "codebook_size": grid.codebook_size,
                   "tokens_per_s": grid.frame_rate * grid.n_slots}
        (self.recipe.output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        self.say(f"exported {export} (load with: create('codecs', 'mel', model='{export}'); "
                 f"a pipeline: plugin: codecs/mel, params: {{model: {export}}})")
        return summary
