"""The training loop of a recipe: one launcher for a single process and for torchrun (DDP or FSDP).

    recipe ──► model (+ init_from) ──► trainable map ──► data check (every example laid out once)
           ──► AdamW + scheduler (+ resume) ──► steps: forward, token losses, backward, clip, step
           ──► atomic checkpoints every N steps and at the end ──► export (native format) + loss curve

Run layout under `output_dir`: checkpoints/step_NNNNNN/ (model.safetensors, model_config.yaml,
tokenizer.json, state.pt, recipe.yaml), checkpoints/latest, metrics.csv, tensorboard/, loss.png,
summary.json; the export (default output_dir/export) holds what `omnivox chat --checkpoint` loads."""

from __future__ import annotations

import csv as csvfile  # `csv` is a MetricsLogger parameter
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.kernel.checkpoint import (
    CONFIG_FILE,
    NATIVE_WEIGHTS,
    TOKENIZER_FILE,
    load_torch_state_dict,
    upstream_to_native,
)
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.model import OmniLM
from omnivox.core.kernel.tokenizer import TextTokenizer
from omnivox.training.collate import build_sequence, collate
from omnivox.training.freeze import apply_trainable
from omnivox.training.loss import combine, mask_streams, term_names, token_losses
from omnivox.training.recipe import Recipe, build

STATE_FILE = "state.pt"
LATEST = "latest"
VOCAB_KEYS = ("backbone.embed_tokens.weight", "lm_head.weight")  # rows may be extended (text -> +audio)


# ---- small builders named by recipes ------------------------------------------------------------------
def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio` x lr at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class MetricsLogger:
    """Metrics to metrics.csv and TensorBoard (when installed), and a loss-curve PNG (when matplotlib is
    installed) at the end. Only rank 0 logs (`enabled`). Resuming at step k drops the rows after k."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0, enabled: bool = True, csv: bool = True,
                 tensorboard: bool = True, plot: bool = True):
        self.dir = Path(output_dir)
        self.enabled, self.use_csv, self.plot = enabled, csv, plot
        self.csv_path = self.dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        self.writer = None
        if not enabled:
            return
        if self.use_csv and self.csv_path.is_file():
            with self.csv_path.open(newline="") as f:
                self.rows = [{k: float(v) for k, v in r.items()} for r in csvfile.DictReader(f)
                             if float(r["step"]) <= resume_step]
            self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                print("note: tensorboard is not installed; metrics go to metrics.csv only "
                      "(pip install 'omnivox[train]')", flush=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": float(step), **metrics}
        self.rows.append(row)
        if self.use_csv:
            new = not self.csv_path.is_file()
            with self.csv_path.open("a", newline="") as f:
                writer = csvfile.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def _rewrite(self) -> None:
        if not self.rows:
            self.csv_path.unlink(missing_ok=True)
            return
        with self.csv_path.open("w", newline="") as f:
            writer = csvfile.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> Path | None:
        """Flush TensorBoard and draw loss.png; returns the PNG path (None without matplotlib or data)."""
        if not self.enabled:
            return None
        if self.writer is not None:
            self.writer.close()
        if not (self.plot and self.rows):
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("note: matplotlib is not installed; no loss.png (pip install 'omnivox[train]')", flush=True)
            return None
        steps = [r["step"] for r in self.rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in [k for k in self.rows[0] if k == "loss" or k == "text" or k.startswith("audio_")]:
            ax.plot(steps, [r.get(key, float("nan")) for r in self.rows], label=key,
                    linewidth=2 if key == "loss" else 0.8)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        path = self.dir / "loss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


# ---- distributed -------------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor


def setup_distributed(device_choice: str, num_threads: int | None) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "auto":
        device_choice = "cuda" if torch.cuda.is_available() else "cpu"
    if device_choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("training.device is cuda but no CUDA device is visible", "set training.device: cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if num_threads is None and device.type == "cpu" and world > 1:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        num_threads = max(1, (os.cpu_count() or 1) // local_world)
    if num_threads:
        torch.set_num_threads(num_threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, local_rank, device)


def wrap(model: OmniLM, mode: str, ctx: Dist, find_unused: bool) -> nn.Module:
    """DDP (parameters replicated, gradients all-reduced) or FSDP2 (`fully_shard` per block + root)."""
    if ctx.world == 1:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.backbone.layers:
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> OmniLM:
    return model.module if hasattr(model, "module") and isinstance(model.module, OmniLM) else model


# ---- weights in and out --------------------------------------------------------------------------------
def resolve_tokenizer(spec: str | None, init_from: str | None, config: OmniConfig) -> TextTokenizer:
    if spec == "byte-level":
        tokenizer = TextTokenizer.byte_level()
    elif spec is not None:
        tokenizer = TextTokenizer.from_file(spec, first_special=config.raw_text_vocab_size)
    elif init_from and (Path(init_from) / TOKENIZER_FILE).is_file():
        tokenizer = TextTokenizer.from_file(Path(init_from) / TOKENIZER_FILE, first_special=config.raw_text_vocab_size)
    else:
        raise ConfigError("the recipe names no tokenizer and init_from has no tokenizer.json",
                          "set tokenizer: byte-level (tiny models) or tokenizer: PATH/tokenizer.json")
    if tokenizer.vocab_size > config.raw_text_vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's text vocabulary holds "
                          f"{config.raw_text_vocab_size}", "use the model's tokenizer, or a larger text_vocab_size")
    return tokenizer


def read_init_state(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """State dict in OmniLM key names from an omnivox (native or training checkpoint), upstream Mini-Omni
    or Hugging Face Qwen2 directory; returns (state, kind)."""
    from safetensors.torch import load_file

    if not directory.is_dir():
        raise CheckpointError(f"init_from directory {directory} not found", "point at a previous stage's export "
                              "or checkpoint, a Mini-Omni or a Qwen2 directory")
    if (directory / NATIVE_WEIGHTS).is_file() and (directory / CONFIG_FILE).is_file():
        return load_file(str(directory / NATIVE_WEIGHTS)), "omnivox"
    if (directory / "lit_model.pth").is_file():
        config = OmniConfig.from_file(directory / CONFIG_FILE)
        return upstream_to_native(load_torch_state_dict(directory / "lit_model.pth"), config), "mini-omni"
    files = sorted(directory.glob("*.safetensors"))
    if (directory / "config.json").is_file() and files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            for key, value in load_file(str(file)).items():
                state["backbone." + key[len("model."):] if key.startswith("model.") else key] = value
        tied = json.loads((directory / "config.json").read_text()).get("tie_word_embeddings", False)
        if tied and "lm_head.weight" not in state and "backbone.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["backbone.embed_tokens.weight"]  # Qwen2-0.5B ties them
        return state, "qwen2"
    raise CheckpointError(f"{directory} holds no weights omnivox can read",
                          "point at a directory with model.safetensors + model_config.yaml (omnivox), "
                          "lit_model.pth (Mini-Omni) or config.json + *.safetensors (Qwen2)")


def load_init(model: OmniLM, directory: str | Path) -> list[str]:
    """Partial load of `directory` into `model`: equal shapes are copied, vocabulary tables with fewer rows
    fill the first rows (a text-only LM into the multi-stream table); other shape mismatches raise
    CheckpointError before any step. Returns the report lines."""
    state, kind = read_init_state(Path(directory))
    own = model.state_dict()
    loaded, rows, misfit = [], [], []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            loaded.append(key)
        elif key in VOCAB_KEYS and value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]:
            rows.append(f"{key} rows 0..{value.shape[0] - 1} of {target.shape[0]}")
        else:
            misfit.append(f"{key} {tuple(value.shape)} != model {tuple(target.shape)}")
    if misfit:
        more = f" (+{len(misfit) - 6} more)" if len(misfit) > 6 else ""
        raise CheckpointError(f"init_from {directory}: {len(misfit)} tensor(s) do not fit the model: "
                              f"{'; '.join(misfit[:6])}{more}",
                              "use init_from weights of the same model shape (model.config / overrides)")
    if not loaded and not rows:
        raise CheckpointError(f"init_from {directory}: no tensor name matches the model",
                              "point at weights of an OmniLM, a Mini-Omni or a Qwen2 model")
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(state[key])
        for key in VOCAB_KEYS:
            if key in state and state[key].shape != own[key].shape and key in own:
                own[key][: state[key].shape[0]].copy_(state[key])
    missing = sorted(set(own) - set(state))
    ignored = sorted(set(state) - set(own))
    lines = [f"init_from {directory} ({kind}): loaded {len(loaded)} of {len(own)} tensors"]
    lines += [f"  partial: {r}" for r in rows]
    if missing:
        lines.append(f"  kept at initialisation ({len(missing)}): {', '.join(missing[:8])}"
                     + (" ..." if len(missing) > 8 else ""))
    if ignored:
        lines.append(f"  ignored, not in this model ({len(ignored)}): {', '.join(ignored[:8])}"
                     + (" ..." if len(ignored) > 8 else ""))
    return lines


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """(model state, optimizer state), complete on every rank (FSDP shards are gathered)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def set_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                   fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


def write_native(directory: Path, state: dict[str, torch.Tensor], config: OmniConfig,
                 tokenizer: TextTokenizer) -> None:
    """The native inference files (as core/checkpoint.save_native) from a full state dict."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / NATIVE_WEIGHTS),
              metadata={"format": "pt", "producer": "omnivox"})
    config.to_file(directory / CONFIG_FILE)
    tokenizer.save(directory / TOKENIZER_FILE)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written `tmp` directory to `final` (the old `final`, if any, goes first)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def find_resume(spec: str | None, output_dir: Path) -> Path | None:
    """`resume: auto` -> the latest checkpoint of output_dir (None if there is none); PATH -> that one."""
    if spec is None:
        return None
    if spec == "auto":
        latest = output_dir / "checkpoints" / LATEST
        if not latest.is_file():
            return None
        path = output_dir / "checkpoints" / latest.read_text().strip()
    else:
        path = Path(spec)
    if not (path / STATE_FILE).is_file() or not (path / NATIVE_WEIGHTS).is_file():
        raise CheckpointError(f"resume checkpoint {path} has no {STATE_FILE} / {NATIVE_WEIGHTS}",
                              "point resume at a checkpoints/step_NNNNNN directory, or use resume: auto")
    return path


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names and bytes (replica comparison)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---- data order ------------------------------------------------------------------------------------------
def global_batch(n: int, seed: int, position: int, size: int) -> list[int]:
    """Indices of samples position..position+size-1 of the stream: one seeded permutation per epoch."""
    out, perms = [], {}
    for p in range(position, position + size):
        epoch, i = divmod(p, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perms[epoch][i]))
    return out


# ---- the run ---------------------------------------------------------------------------------------------
def train(recipe: Recipe) -> dict[str, Any]:
    """Run a recipe to training.max_steps; returns the summary (also written to output_dir/summary.json)."""
    r, t = recipe.data, recipe.data["training"]
    ctx = setup_distributed(t["device"], t["num_threads"])
    say = (lambda *a: print(*a, flush=True)) if ctx.main else (lambda *a: None)
    if t["batch_size"] % ctx.world:
        raise ConfigError(f"training.batch_size {t['batch_size']} is not divisible by {ctx.world} processes",
                          f"use a multiple of {ctx.world} (it is the global batch)")
    out_dir = recipe.output_dir
    torch.manual_seed(r["seed"])
    random.seed(r["seed"])
    np.random.seed(r["seed"])

    model: OmniLM = build(r["model"], f"{recipe.source}: model")
    config, layout = model.config, model.layout
    tokenizer = resolve_tokenizer(r["tokenizer"], r["init_from"], config)
    resume_from = find_resume(r["resume"], out_dir)
    say(f"== {r['name']}: {ctx.world} process(es) on {ctx.device}, strategy {r['strategy']}")
    if r["init_from"] and resume_from is None:
        for line in load_init(model, r["init_from"]):
            say(line)
    elif r["init_from"]:
        load_init(model, r["init_from"])  # still checked, so a bad init_from fails the same way on resume
        say(f"init_from {r['init_from']}: checked, weights come from the resumed checkpoint")
    say("trainable:")
    for line in apply_trainable(model, r["trainable"]):
        say(line)

    from omnivox.core.contracts.manager import create

    strategy = create("strategies", r["strategy"])
    dataset = build(r["data"], f"{recipe.source}: data", "datasets")
    lengths = [build_sequence(ex, tokenizer, strategy, layout, config.block_size, config.whisper_adapter_dim,
                              load_features=False).length for ex in dataset]
    say(f"data: {len(dataset)} examples, {min(lengths)}..{max(lengths)} positions (context {config.block_size})")

    model.to(ctx.device)
    fsdp = t["distributed"] == "fsdp" and ctx.world > 1
    # a batch without audio input leaves a trainable adapter unused: then DDP must look for unused parameters
    find_unused = r["trainable"]["adapter"] == "full" and any(not ex.audio_in for ex in dataset)
    if fsdp and find_unused:
        raise ConfigError("FSDP cannot train the adapter on data with text-in examples (a rank whose batch has "
                          "no audio input leaves the adapter out of its backward, and the shards' reductions "
                          "no longer match)", "use training.distributed: ddp, or freeze the adapter, or train "
                          "on audio-in tasks only")
    wrapped = wrap(model, t["distributed"], ctx, find_unused)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = build(r["optimizer"], f"{recipe.source}: optimizer", params=params)
    scheduler = build(r["scheduler"], f"{recipe.source}: scheduler", optimizer=optimizer, total_steps=t["max_steps"])

    step, position = 0, 0
    if resume_from is not None:
        from safetensors.torch import load_file

        state = torch.load(resume_from / STATE_FILE, map_location="cpu", weights_only=False)
        set_full_state(wrapped, optimizer, load_file(str(resume_from / NATIVE_WEIGHTS)), state["optimizer"], fsdp)
        scheduler.load_state_dict(state["scheduler"])
        step, position = state["step"], state["position"]
        set_rng_state(state["rng"])
        say(f"resumed from {resume_from} at step {step} (sample {position})")
    elif r["resume"] == "auto":
        say(f"resume: auto found no checkpoint in {out_dir / 'checkpoints'}; starting at step 0")
    if step >= t["max_steps"]:
        say(f"already at step {step} >= training.max_steps {t['max_steps']}; nothing to train")

    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    logger = build(r["logger"], f"{recipe.source}: logger", output_dir=out_dir, resume_step=step, enabled=ctx.main)
    names = term_names(1 + layout.audio_streams)
    ckpt_root = out_dir / "checkpoints"

    def save_checkpoint(at_step: int) -> Path:
        model_state, optim_state = full_state(wrapped, optimizer, fsdp)
        final = ckpt_root / f"step_{at_step:06d}"
        if ctx.main:
            tmp = ckpt_root / f".step_{at_step:06d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            write_native(tmp, model_state, config, tokenizer)
            torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": at_step,
                        "position": position, "rng": rng_state(), "world_size": ctx.world, "recipe": r["name"]},
                       tmp / STATE_FILE)
            (tmp / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
            replace_dir(tmp, final)
            latest_tmp = ckpt_root / (LATEST + ".tmp")
            latest_tmp.write_text(final.name)
            os.replace(latest_tmp, ckpt_root / LATEST)
            keep = t["keep_checkpoints"]
            if keep:
                for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
            print(f"checkpoint saved: {final} (step {at_step})", flush=True)
        ctx.barrier()
        return final

    wrapped.train()
    window: dict[str, float] = {}
    window_steps, tokens, examples, t0 = 0, 0, 0, time.perf_counter()
    last_saved = step if resume_from is not None else None
    while step < t["max_steps"]:
        indices = global_batch(len(dataset), r["seed"], position, t["batch_size"])[ctx.rank::ctx.world]
        sequences = [build_sequence(dataset[i], tokenizer, strategy, layout, config.block_size,
                                    config.whisper_adapter_dim) for i in indices]
        for i, seq in zip(indices, sequences, strict=True):
            seq.labels = mask_streams(seq.labels, r["loss"]["task_streams"].get(dataset[i].task))
        batch = collate(sequences, layout).to(ctx.device)
        out = wrapped(batch.input_ids, batch.features, batch.audio_lengths)
        losses = token_losses(out.text_logits, out.audio_logits, batch.labels)
        counts = ctx.all_sum(losses.counts)
        total, terms = combine(losses, counts, r["loss"]["text_weight"], r["loss"]["audio_weight"])
        (total * ctx.world).backward()  # DDP averages gradients over ranks: undo it (global normalisation)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t["grad_clip"] or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        position += t["batch_size"]

        reduced = ctx.all_sum(torch.cat([total.detach().view(1), terms]))  # (2 + A,)
        window["loss"] = window.get("loss", 0.0) + float(reduced[0])
        for name, value, count in zip(names, reduced[1:].tolist(), counts.tolist(), strict=True):
            if count:
                window[name] = window.get(name, 0.0) + value
        window_steps += 1
        tokens += int(counts.sum())
        examples += t["batch_size"]
        if (t["log_every"] and step % t["log_every"] == 0) or step == t["max_steps"]:
            elapsed = time.perf_counter() - t0
            metrics = {"loss": window["loss"] / window_steps}
            metrics.update({n: window[n] / window_steps if n in window else float("nan") for n in names})
            metrics.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm),
                           tokens_per_s=tokens / elapsed, examples_per_s=examples / elapsed)
            logger.log(step, metrics)
            audio = [metrics[n] for n in names[1:] if n in window]
            say(f"[{r['name']}] step {step}/{t['max_steps']}  loss {metrics['loss']:.4f}  "
                f"text {metrics['text']:.3f}  "
                f"audio {(sum(audio) / len(audio)) if audio else float('nan'):.3f}  lr {metrics['lr']:.2e}  "
                f"|g| {metrics['grad_norm']:.2f}  {metrics['tokens_per_s']:.0f} tok/s  "
                f"{metrics['examples_per_s']:.1f} ex/s")
            window, window_steps, tokens, examples, t0 = {}, 0, 0, 0, time.perf_counter()
        if t["checkpoint_every"] and step % t["checkpoint_every"] == 0:
            save_checkpoint(step)
            last_saved = step

    final = save_checkpoint(step) if last_saved != step else ckpt_root / f"step_{step:06d}"
    model_state, _ = full_state(wrapped, optimizer, fsdp)  # complete on rank 0 (FSDP: empty elsewhere)
    replicas = [digest(unwrap(wrapped).state_dict())] if not fsdp else []  # FSDP shards: no replicas
    if ctx.world > 1 and not fsdp:
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, replicas[0])
        replicas = gathered
    summary: dict[str, Any] = {}
    if ctx.main:
        export = recipe.export_dir
        tmp = export.with_name(export.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_native(tmp, model_state, config, tokenizer)
        from omnivox.training.prepare import export_encoder

        export_encoder(recipe, tmp)
        replace_dir(tmp, export)
        png = logger.close()
        summary = {"name": r["name"], "steps": step, "world_size": ctx.world, "distributed": t["distributed"],
                   "checkpoint": str(final), "export": str(export), "loss_png": str(png) if png else None,
                   "replica_digests": replicas, "export_digest": digest(model_state)}
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        print(f"exported {export} (load with: omnivox chat --checkpoint {export})", flush=True)
        if len(set(replicas)) > 1:
            raise CheckpointError(f"replicas diverged: weight digests per rank {replicas}",
                                  "report this: data-parallel ranks must hold identical weights")
    ctx.barrier()
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return summary
