"""The training recipe object: a class whose methods are the named steps of a run and whose `run()` is the
short loop that calls them (the structure of torchtune's recipes). One launcher for a single process and for
torchrun (DDP or FSDP).

    run():  setup()                       process group, seeds, model (+ init_from), trainable map, data,
                                          optimizer, scheduler, resume (load_checkpoint), logger
            while step < max_steps:
                train_step(next_batch())  forward, loss(), backward, clip, optimizer and scheduler step
                evaluate()                every training.eval_every steps (and at the end) when eval_data is set
                save_checkpoint()         every training.checkpoint_every steps (and at the end); atomic
            export()                      native inference files (+ encoder, codec), loss curve, summary.json

A new stage is a recipe YAML; a new objective or update rule is a subclass that overrides `loss` or
`train_step`, named in the recipe (`trainer: {_component_: mypackage.MyRecipe}`) and run by `omnivox train`.

Run layout under `output_dir`: checkpoints/step_NNNNNN/ (see checkpointing.py), checkpoints/latest,
metrics.csv, eval.csv, tensorboard/, loss.png, summary.json; the export (default output_dir/export) holds
what `omnivox chat --checkpoint` loads."""

from __future__ import annotations

import functools
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from omnivox.core import progress
from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.kernel.conversation_format import ConversationFormat
from omnivox.core.kernel.model import OmniLM, OmniOutput
from omnivox.training.checkpointing import (
    find_resume,
    read_checkpoint,
    replace_dir,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from omnivox.training.collate import Batch, build_sequence, collate, corrupt_audio
from omnivox.training.distributed import digest, full_state, set_full_state, setup_distributed, unwrap, wrap
from omnivox.training.freeze import apply_trainable
from omnivox.training.loss import combine, mask_streams, term_names, token_losses
from omnivox.training.recipe import Recipe, build
from omnivox.training.schedule import epoch_order, global_batch
from omnivox.training.weight_average import WeightAverage
from omnivox.training.weights import load_init, resolve_tokenizer, write_native


@dataclass
class StepResult:
    """What one training step reports, summed over all ranks."""

    loss: float  # the optimised total
    terms: torch.Tensor  # (1 + A,) text, audio_0..audio_{A-1}, each normalised by its global token count
    counts: torch.Tensor  # (1 + A,) target tokens per term in the global batch
    grad_norm: float


class TrainingRecipe:
    """Runs one recipe (a validated `Recipe`) to training.max_steps; `run()` returns the summary."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.cfg = recipe.data
        self.t = recipe.data["training"]
        self.step = 0  # optimizer steps taken
        self.position = 0  # samples of the (epoch-permuted) data stream consumed, over all ranks

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.setup()
        t = self.t
        last_saved = self.step if self.resumed_from is not None else None
        evaluated_at = None
        self.window = LossWindow(self.names)
        with self.progress_bar() as bar:
            while self.step < t["max_steps"]:
                result = self.train_step(self.next_batch())
                self.record(result, bar)
                if self.eval_set is not None and t["eval_every"] and self.step % t["eval_every"] == 0:
                    self.evaluate()
                    evaluated_at = self.step
                if t["checkpoint_every"] and self.step % t["checkpoint_every"] == 0:
                    self.save_checkpoint()
                    last_saved = self.step
        if last_saved != self.step:
            self.save_checkpoint()
        final_eval = self.evaluate() if self.eval_set is not None and evaluated_at != self.step else self.last_eval
        summary = self.export(final_eval)
        self.cleanup()
        return summary

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Everything before the first step; every input is checked here, so a bad one fails before training."""
        r, t = self.cfg, self.t
        self.ctx = setup_distributed(t["device"], t["num_threads"])
        if t["batch_size"] % self.ctx.world:
            raise ConfigError(f"training.batch_size {t['batch_size']} is not divisible by {self.ctx.world} "
                              "processes", f"use a multiple of {self.ctx.world} (it is the global batch)")
        torch.manual_seed(r["seed"])
        random.seed(r["seed"])
        np.random.seed(r["seed"])
        self.resumed_from = find_resume(r["resume"], self.recipe.output_dir)
        self.setup_model()
        self.setup_data()
        self.setup_optimizer()
        if self.resumed_from is not None:
            self.load_checkpoint(self.resumed_from)
        elif r["resume"] == "auto":
            self.say(f"resume: auto found no checkpoint in {self.recipe.output_dir / 'checkpoints'}; "
                     "starting at step 0")
        if self.step >= t["max_steps"]:
            self.say(f"already at step {self.step} >= training.max_steps {t['max_steps']}; nothing to train")
        if self.ctx.main:
            self.recipe.output_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.barrier()
        self.logger = build(r["logger"], f"{self.recipe.source}: logger", output_dir=self.recipe.output_dir,
                            resume_step=self.step, enabled=self.ctx.main)
        self.last_checkpoint = self.resumed_from
        self.last_eval: dict[str, float | None] | None = None

    def setup_model(self) -> None:
        """The model, its tokenizer, init_from weights (reported) and the trainable map (printed, asserted)."""
        r = self.cfg
        self.model: OmniLM = build(r["model"], f"{self.recipe.source}: model")
        self.config, self.layout = self.model.config, self.model.layout
        self.tokenizer = resolve_tokenizer(r["tokenizer"], r["init_from"], self.config)
        self.say(f"== {r['name']}: {self.ctx.world} process(es) on {self.ctx.device}, strategy {r['strategy']}")
        if r["init_from"] and self.resumed_from is None:
            for line in load_init(self.model, r["init_from"]):
                self.say(line)
        elif r["init_from"]:
            load_init(self.model, r["init_from"])  # still checked, so a bad init_from fails the same way on resume
            self.say(f"init_from {r['init_from']}: checked, weights come from the resumed checkpoint")
        self.say("trainable:")
        for line in apply_trainable(self.model, r["trainable"]):
            self.say(line)
        self.names = term_names(1 + self.layout.audio_streams)

    def setup_data(self) -> None:
        """The decoding strategy whose layout builds the targets, the training set (and eval_data), every
        example laid out once so that a bad line is named before any step."""
        from omnivox.core.contracts.manager import create

        r = self.cfg
        self.strategy = create("strategies", r["strategy"])
        self.format = ConversationFormat.of(self.model)  # how conversation lines are laid out (data.py)
        self.dataset = build(r["data"], f"{self.recipe.source}: data", "datasets")
        lengths = self.check_lengths(self.dataset)
        self.say(f"data: {len(self.dataset)} examples, {min(lengths)}..{max(lengths)} positions "
                 f"(context {self.config.block_size})")
        n, seed, size, window = len(self.dataset), r["seed"], self.t["batch_size"], self.t["group_by_length"]
        self.order = functools.lru_cache(maxsize=2)(
            lambda epoch: epoch_order(n, seed, epoch, size, lengths, window))
        self.eval_set = None
        if r["eval_data"] is not None:
            self.eval_set = build(r["eval_data"], f"{self.recipe.source}: eval_data", "datasets")
            lengths = self.check_lengths(self.eval_set)
            self.say(f"eval data: {len(self.eval_set)} examples, {min(lengths)}..{max(lengths)} positions")

    def check_lengths(self, dataset) -> list[int]:
        return [build_sequence(ex, self.tokenizer, self.strategy, self.layout, self.config.block_size,
                               self.config.whisper_adapter_dim, load_features=False, format=self.format).length
                for ex in dataset]

    def setup_optimizer(self) -> None:
        """Device placement, DDP/FSDP wrapping, the optimizer over the trainable parameters, the scheduler."""
        r, t, ctx = self.cfg, self.t, self.ctx
        self.model.to(ctx.device)
        self.fsdp = t["distributed"] == "fsdp" and ctx.world > 1
        # a batch without audio input leaves a trainable adapter unused: then DDP must look for unused parameters
        find_unused = r["trainable"]["adapter"] == "full" and any(not ex.audio_in for ex in self.dataset)
        if self.fsdp and find_unused:
            raise ConfigError("FSDP cannot train the adapter on data with text-in examples (a rank whose batch has "
                              "no audio input leaves the adapter out of its backward, and the shards' reductions "
                              "no longer match)", "use training.distributed: ddp, or freeze the adapter, or train "
                              "on audio-in tasks only")
        self.wrapped = wrap(self.model, t["distributed"], ctx, find_unused)
        self.params = [p for p in self.wrapped.parameters() if p.requires_grad]
        source = self.recipe.source
        self.optimizer = build(r["optimizer"], f"{source}: optimizer", params=self.params)
        self.scheduler = build(r["scheduler"], f"{source}: scheduler", optimizer=self.optimizer,
                               total_steps=t["max_steps"])
        if t["ema_decay"] is not None and self.fsdp:
            raise ConfigError("training.ema_decay is not supported with FSDP (each rank holds a shard)",
                              "use training.distributed: ddp, or ema_decay: null")
        self.average = WeightAverage(unwrap(self.wrapped), t["ema_decay"]) if t["ema_decay"] is not None else None

    # ---- one step ----------------------------------------------------------------------------------------
    def next_batch(self) -> Batch:
        """This rank's share of the next global batch (samples position..position+batch_size-1)."""
        indices = global_batch(len(self.dataset), self.cfg["seed"], self.position, self.t["batch_size"], self.order)
        return self.make_batch(self.dataset, indices[self.ctx.rank::self.ctx.world], noisy=True)

    def make_batch(self, dataset, indices: list[int], noisy: bool = False) -> Batch:
        """The batch of `indices`; `noisy` (training batches): with training.audio_noise, its fed audio codes
        corrupted (collate.corrupt_audio), drawn from the seed, position and rank, so a resumed run draws the same."""
        sequences = [build_sequence(dataset[i], self.tokenizer, self.strategy, self.layout, self.config.block_size,
                                    self.config.whisper_adapter_dim, format=self.format) for i in indices]
        for i, seq in zip(indices, sequences, strict=True):
            seq.labels = mask_streams(seq.labels, self.cfg["loss"]["task_streams"].get(dataset[i].task))
        batch = collate(sequences, self.layout)
        if noisy and self.t["audio_noise"]:
            seed = (self.cfg["seed"] * 1_000_003 + self.position) * 64 + self.ctx.rank
            corrupt_audio(batch, self.layout, self.t["audio_noise"], torch.Generator().manual_seed(seed))
        return batch.to(self.ctx.device)

    def train_step(self, batch: Batch) -> StepResult:
        """Forward, loss, backward, gradient clip, optimizer and scheduler step."""
        self.wrapped.train()
        out = self.model_forward(batch)
        total, terms, counts = self.loss(out, batch)
        (total * self.ctx.world).backward()  # DDP averages gradients over ranks: undo it (global normalisation)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.t["grad_clip"] or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.average is not None:
            self.average.update(self.step)
        self.position += self.t["batch_size"]
        reduced = self.ctx.all_sum(torch.cat([total.detach().view(1), terms]))  # (2 + A,)
        return StepResult(float(reduced[0]), reduced[1:], counts, float(grad_norm))

    def model_forward(self, batch: Batch) -> OmniOutput:
        """The (wrapped) model over a batch; `audio_spans` only when a row's audio is not one span at position 1
        (conversation lines), so single-turn batches run exactly as before."""
        spans = batch.spans
        if spans is None:
            return self.wrapped(batch.input_ids, batch.features, batch.audio_lengths)
        return self.wrapped(batch.input_ids, batch.features, batch.audio_lengths, audio_spans=spans)

    def loss(self, out: OmniOutput, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (total: scalar with graph, terms: (1 + A,) detached, counts: (1 + A,) global target tokens).
        Each term is normalised by its token count over ALL ranks, so N ranks optimise one process's loss."""
        losses = token_losses(out.text_logits, out.audio_logits, batch.labels)
        counts = self.ctx.all_sum(losses.counts)
        total, terms = combine(losses, counts, self.cfg["loss"]["text_weight"], self.cfg["loss"]["audio_weight"])
        return total, terms, counts

    def record(self, result: StepResult, bar) -> None:
        """Average the steps of a log window; every log_every steps (and at the last) log and print them."""
        t = self.t
        self.window.add(result, self.t["batch_size"])
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.3f}", refresh=False)
        if not ((t["log_every"] and self.step % t["log_every"] == 0) or self.step == t["max_steps"]):
            return
        metrics = self.window.metrics()
        metrics.update(lr=self.scheduler.get_last_lr()[0], grad_norm=result.grad_norm, **self.window.throughput())
        self.logger.log(self.step, metrics)
        audio = [metrics[n] for n in self.names[1:] if metrics[n] is not None]
        self.say(f"[{self.cfg['name']}] step {self.step}/{t['max_steps']}  loss {metrics['loss']:.4f}  "
                 f"text {_shown(metrics['text'])}  audio {_shown(sum(audio) / len(audio) if audio else None)}  "
                 f"lr {metrics['lr']:.2e}  "
                 f"|g| {metrics['grad_norm']:.2f}  {metrics['tokens_per_s']:.0f} tok/s  "
                 f"{metrics['examples_per_s']:.1f} ex/s")
        self.window = LossWindow(self.names)

    # ---- evaluation --------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float | None]:
        """Loss per term over the whole eval_data set, without gradients (each rank takes its share of every
        global batch; None: a term without targets); logged to eval.csv and returned."""
        self.wrapped.eval()
        sums = torch.zeros(len(self.names), dtype=torch.float64)
        counts = torch.zeros(len(self.names), dtype=torch.int64)
        n, size, ctx = len(self.eval_set), self.t["batch_size"], self.ctx
        with torch.no_grad():
            for start in range(0, n, size):
                share = list(range(start, min(start + size, n)))[ctx.rank::ctx.world]
                weight = 1 if share else 0  # every rank runs every forward (FSDP gathers shards collectively)
                batch = self.make_batch(self.eval_set, share or [start])
                out = self.model_forward(batch)
                losses = token_losses(out.text_logits, out.audio_logits, batch.labels)
                sums += weight * losses.sums.detach().double().cpu()
                counts += weight * losses.counts.cpu()
        sums, counts = ctx.all_sum(sums.to(ctx.device)).cpu(), ctx.all_sum(counts.to(ctx.device)).cpu()
        terms = sums / counts.clamp(min=1)
        metrics = {"loss": self.eval_total(terms, counts)}
        metrics.update({name: float(terms[i]) if counts[i] else None for i, name in enumerate(self.names)})
        self.logger.log(self.step, metrics, split="eval")
        self.say(f"[{self.cfg['name']}] eval at step {self.step}: loss {metrics['loss']:.4f} "
                 f"over {len(self.eval_set)} examples")
        self.last_eval = metrics
        return metrics

    def eval_total(self, terms: torch.Tensor, counts: torch.Tensor) -> float:
        """The weighted total of the evaluation terms, as `combine` weighs the training ones."""
        loss = self.cfg["loss"]
        active = counts[1:] > 0
        audio = float(terms[1:][active].mean()) if active.any() else 0.0
        return loss["text_weight"] * float(terms[0]) + loss["audio_weight"] * audio

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Full state at the current step (weights, optimizer, scheduler, data position, RNG), atomically."""
        model_state, optim_state = full_state(self.wrapped, self.optimizer, self.fsdp)
        root = self.recipe.output_dir / "checkpoints"
        final = root / f"step_{self.step:06d}"
        if self.ctx.main:
            state = {"optimizer": optim_state, "scheduler": self.scheduler.state_dict(), "step": self.step,
                     "position": self.position, "rng": rng_state(), "world_size": self.ctx.world,
                     "recipe": self.cfg["name"]}
            if self.average is not None:
                state["weight_average"] = self.average.state_dict()
            write_checkpoint(root, self.step, model_state, self.config, self.tokenizer, state, self.recipe.to_yaml(),
                             self.t["keep_checkpoints"])
            self.say(f"checkpoint saved: {final} (step {self.step})")
        self.ctx.barrier()
        self.last_checkpoint = final
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Resume: weights, optimizer, scheduler, step, data position and RNG from a saved checkpoint."""
        model_state, state = read_checkpoint(path)
        set_full_state(self.wrapped, self.optimizer, model_state, state["optimizer"], self.fsdp)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.position = state["step"], state["position"]
        set_rng_state(state["rng"])
        if self.average is not None:
            if "weight_average" not in state:
                raise CheckpointError(f"{path} holds no weight average, but training.ema_decay is set",
                                      "resume with the ema_decay the run started with, or start a new output_dir")
            self.average.load_state_dict(state["weight_average"])
        self.say(f"resumed from {path} at step {self.step} (sample {self.position})")

    # ---- export ------------------------------------------------------------------------------------------
    def export(self, final_eval: dict[str, float | None] | None) -> dict[str, Any]:
        """The final weights in the native inference format (+ the encoder chat needs), the loss curve and
        summary.json; checks that data-parallel replicas hold identical weights."""
        model_state, _ = full_state(self.wrapped, self.optimizer, self.fsdp)  # complete on rank 0 (FSDP)
        if self.average is not None:
            model_state = self.average.averaged(model_state)
        replicas = [digest(unwrap(self.wrapped).state_dict())] if not self.fsdp else []  # FSDP: no replicas
        if self.ctx.world > 1 and not self.fsdp:
            gathered: list[Any] = [None] * self.ctx.world
            dist.all_gather_object(gathered, replicas[0])
            replicas = gathered
        if not self.ctx.main:
            return {}
        from omnivox.training.export import export_codec
        from omnivox.training.prepare import export_encoder

        export = self.recipe.export_dir
        tmp = export.with_name(export.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_native(tmp, model_state, self.config, self.tokenizer)
        export_encoder(self.recipe, tmp)
        codec = export_codec(self.recipe, tmp)
        replace_dir(tmp, export)
        png = self.logger.close()
        summary = {"name": self.cfg["name"], "steps": self.step, "world_size": self.ctx.world,
                   "ema_decay": self.t["ema_decay"],
                   "distributed": self.t["distributed"], "checkpoint": str(self.last_checkpoint),
                   "export": str(export), "loss_png": str(png) if png else None, "eval": final_eval,
                   "replica_digests": replicas, "export_digest": digest(model_state)}
        (self.recipe.output_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        codec_arg = f" --codec {export / codec.name}" if codec else ""
        self.say(f"exported {export} (load with: omnivox chat --checkpoint {export}{codec_arg})")
        if len(set(replicas)) > 1:
            raise CheckpointError(f"replicas diverged: weight digests per rank {replicas}",
                                  "report this: data-parallel ranks must hold identical weights")
        return summary

    def cleanup(self) -> None:
        self.ctx.barrier()
        if self.ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    # ---- output ------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A line on stdout from rank 0 (above the progress bar, when there is one)."""
        if self.ctx.main:
            progress.write(text)

    def progress_bar(self):
        """Steps on stderr, rank 0 only; off when stderr is not a terminal or with `progress=false`."""
        return progress.bar(total=self.t["max_steps"], initial=self.step, desc=self.cfg["name"], unit="step",
                            enabled=self.ctx.main and self.cfg["progress"])


def _shown(value: float | None) -> str:
    """A loss term for the console: 3 decimals, or `-` when absent (the stage has no targets for it)."""
    return "-" if value is None else f"{value:.3f}"


class LossWindow:
    """Loss terms and throughput summed over the steps of one log window."""

    def __init__(self, names: list[str]):
        self.names = names
        self.sums: dict[str, float] = {}
        self.present: dict[str, int] = {}  # steps in which each term had targets
        self.steps = self.tokens = self.examples = 0
        self.t0 = time.perf_counter()

    def add(self, result: StepResult, examples: int) -> None:
        self.sums["loss"] = self.sums.get("loss", 0.0) + result.loss
        for name, value, count in zip(self.names, result.terms.tolist(), result.counts.tolist(), strict=True):
            if count:
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.present[name] = self.present.get(name, 0) + 1
        self.steps += 1
        self.tokens += int(result.counts.sum())
        self.examples += examples

    def metrics(self) -> dict[str, float | None]:
        """Mean loss over the window's steps, and mean of each term over the steps where it had targets
        (None: absent, no step of the window had targets for it)."""
        out: dict[str, float | None] = {"loss": self.sums["loss"] / self.steps}
        out.update({n: self.sums[n] / self.present[n] if n in self.sums else None for n in self.names})
        return out

    def throughput(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        return {"tokens_per_s": self.tokens / elapsed, "examples_per_s": self.examples / elapsed}


def train(recipe: Recipe) -> dict[str, Any]:
    """Run a recipe with its `trainer` class (default TrainingRecipe); returns the summary (also written to
    output_dir/summary.json)."""
    return build(recipe["trainer"], f"{recipe.source}: trainer", recipe=recipe).run()
