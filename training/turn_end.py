"""The end-of-turn detector (plugins/turn_end.py): its data and its training recipe (recipes/turn_end.yaml).

    python -m omnivox.training.turn_end build DATA_DIR      renders and encodes the examples (~5 min on 2 cores)
    omnivox train recipes/turn_end.yaml                      trains (seconds) and exports the detector

Examples come from the demo corpus's questions and the robot's commands (demo_domain, demo_robot), spoken by
espeak-ng with a pause of 300-800 ms inside (SSML <break>) after a random word:
    incomplete   the audio up to that pause, plus 100-250 ms of it (what the VAD has when it asks)
    complete     the whole utterance, plus 100-250 ms of silence after it (and the same sentence without a pause)
Test sentences are the corpora's held-out phrasings and values, in held-out voices. `test_streams.jsonl` lists
the test recordings with their pause and end times, for the false cut-in benchmark (benchmarks/bench_turn_end.py).
Every example stores what the detector reads at run time (plugins/turn_end.py utterance_features: the Whisper
features of the last 3 s, the last `frames` kept) as float16 .npy."""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnivox.core.errors import ConfigError, InputError
from omnivox.plugins.turn_end import TurnEndConfig, TurnEndNet, save_detector, utterance_features
from omnivox.training.corpus import Utterance, config_from, render_all, write_atomic
from omnivox.training.demo_domain import DemoConfig, RenderConfig

RATE = 16000
FRAME_S = 0.01  # energy frames for finding the pause


@dataclass
class TurnEndDataConfig:
    """What to build; every field can be set with --set key=value."""

    pause_ms: list[int] = field(default_factory=lambda: [300, 800])  # inner pause, uniform in this range
    tail_ms: list[int] = field(default_factory=lambda: [50, 250])  # silence after the speech when asked
    pre_roll_s: float = 0.3
    train_sentences: int = 1500
    test_sentences: int = 300
    frames: int = TurnEndConfig.frames
    everyday: bool = False  # also everyday sentences beyond the demo's domain (training/everyday.py)
    seed: int = 0
    demo: DemoConfig = field(default_factory=DemoConfig)

    def __post_init__(self) -> None:
        if isinstance(self.demo, dict):
            self.demo = DemoConfig(**self.demo)
        for name in ("pause_ms", "tail_ms"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ConfigError(f"{name}={getattr(self, name)}", f"give {name} as [low, high] milliseconds")


def sentences(config: TurnEndDataConfig) -> dict[str, list[str]]:
    """split -> sentence texts of at least two words: demo_domain's questions and demo_robot's commands (the
    test split: their held-out phrasings and values), and with `everyday` training/everyday.py's groups, drawn
    intent by intent in turn, so that a few greetings weigh as much as thousands of sums."""
    from omnivox.training.demo_domain import questions
    from omnivox.training.demo_robot import COMMANDS, PHRASINGS, command_items

    by_split: dict[str, dict[str, set[str]]] = {"train": {}, "test": {}}
    for q in questions(config.demo):
        by_split["test" if q.split == "test" else "train"].setdefault(q.intent, set()).add(q.text)
    for intent in (*COMMANDS, "battery", "location"):
        templates = PHRASINGS[intent]
        items = command_items(intent) if intent in COMMANDS else [None]
        for p, template in enumerate(templates):
            for item in items:
                text = template.format(**item.slots) if item else template
                by_split["test" if p == len(templates) - 1 else "train"].setdefault(intent, set()).add(text)
    if config.everyday:
        from omnivox.training.everyday import everyday_sentences

        for group, splits in everyday_sentences().items():
            for split, texts in splits.items():
                by_split[split].setdefault(group, set()).update(texts)
    held = set().union(*by_split["test"].values())
    rng = random.Random(config.seed)
    out = {}
    for split, n in (("train", config.train_sentences), ("test", config.test_sentences)):
        pools = []
        for intent in sorted(by_split[split]):
            texts = sorted(t for t in by_split[split][intent] if len(t.split()) >= 2 and (split == "test" or
                                                                                         t not in held))
            rng.shuffle(texts)
            pools.append(texts)
        picked: list[str] = []
        while len(picked) < n and any(pools):
            for pool in pools:
                if pool and len(picked) < n:
                    picked.append(pool.pop())
        rng.shuffle(picked)
        out[split] = picked
    return out


def speech_bounds(pcm: np.ndarray) -> tuple[float, float, tuple[float, float] | None]:
    """(speech start s, speech end s, the longest inner silence (start s, end s) or None) of a clean render."""
    hop = int(FRAME_S * RATE)
    rms = np.sqrt(np.mean(pcm[: len(pcm) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    loud = rms > rms.max() * 0.03  # -30 dB under the loudest frame
    idx = np.flatnonzero(loud)
    if not len(idx):
        raise InputError("a render holds no speech", "check espeak-ng (espeak-ng --voices)")
    first, last = idx[0], idx[-1]
    best, run_start = None, None
    for i in range(first, last + 1):
        if not loud[i] and run_start is None:
            run_start = i
        elif loud[i] and run_start is not None:
            if best is None or i - run_start > best[1] - best[0]:
                best = (run_start, i)
            run_start = None
    pause = None if best is None else (best[0] * FRAME_S, best[1] * FRAME_S)
    return first * FRAME_S, (last + 1) * FRAME_S, pause


def _noisy(pcm: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    if snr_db is None:
        return pcm
    level = np.sqrt(np.mean(pcm ** 2)) / (10 ** (snr_db / 20))
    return (pcm + rng.normal(0, level, len(pcm))).astype(np.float32)


def build_turn_end(data_dir: str | Path, config: TurnEndDataConfig | None = None, *, progress: bool = True) -> Path:
    """Render, cut and encode the examples into `data_dir`; returns its summary.json."""
    import soundfile

    from omnivox.plugins.fw_encoder import load_fw_encoder

    config = config or TurnEndDataConfig()
    out, d = Path(data_dir), config.demo
    rng = random.Random(config.seed)
    jobs, plan = [], []
    for split, texts in sentences(config).items():
        for text in texts:
            words = text.split()
            k = rng.randrange(1, len(words))
            pause = rng.uniform(*config.pause_ms)
            voice = rng.choice(d.test_voices if split == "test" else d.voices)
            rate, pitch = rng.choice(d.test_rates if split == "test" else d.rates), rng.choice(d.pitches)
            snr = rng.uniform(*d.noise_snr_db) if rng.random() < d.noise_probability else None
            ssml = f"<speak>{' '.join(words[:k])} <break time=\"{pause:.0f}ms\"/> {' '.join(words[k:])}</speak>"
            n = len(plan)
            paused = Utterance(out / "audio" / f"p{n:05d}.wav", ssml, voice, rate, pitch, None, None, 0, ssml=True)
            plain = Utterance(out / "audio" / f"w{n:05d}.wav", text, voice, rate, pitch, None, None, 0)
            jobs += [paused, plain]
            plan.append({"split": split, "text": text, "cut_after": k, "pause_ms": round(pause), "snr_db": snr,
                         "paused": paused.path, "plain": plain.path, "seed": rng.randrange(2**31)})
    (out / "audio").mkdir(parents=True, exist_ok=True)
    render_all(jobs, RenderConfig(d.jobs, RATE), progress)

    encoder = load_fw_encoder(TurnEndConfig.encoder, threads=2, trim=True)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    streams = []
    (out / "features").mkdir(exist_ok=True)
    for i, item in enumerate(plan):
        noise = np.random.default_rng(item["seed"])
        pre = np.zeros(int(config.pre_roll_s * RATE), np.float32)
        paused, _ = soundfile.read(item["paused"], dtype="float32")
        plain, _ = soundfile.read(item["plain"], dtype="float32")
        _, end, gap = speech_bounds(paused)
        if gap is None or gap[1] - gap[0] < config.pause_ms[0] / 1000 * 0.6:
            continue  # espeak-ng swallowed the break: no clean cut
        tail = np.zeros(int(1.0 * RATE), np.float32)
        paused = _noisy(np.concatenate([pre, paused, tail]), item["snr_db"], noise)
        plain_end = speech_bounds(plain)[1]
        plain = _noisy(np.concatenate([pre, plain, tail]), item["snr_db"], noise)
        shift = config.pre_roll_s
        cuts = [("incomplete", paused, shift + gap[0]), ("complete", paused, shift + end),
                ("complete", plain, shift + plain_end)]
        for j, (label, pcm, at) in enumerate(cuts):
            tail_s = rng.uniform(*config.tail_ms) / 1000
            feats = utterance_features(encoder, pcm[: int((at + tail_s) * RATE)], config.frames)  # (frames, F)
            rel = f"features/{i:05d}-{j}.npy"
            np.save(out / rel, feats.numpy().astype(np.float16))
            rows[item["split"]].append({"features": rel, "complete": label == "complete", "text": item["text"],
                                        "cut_after": item["cut_after"] if label == "incomplete" else None,
                                        "pause_ms": item["pause_ms"], "tail_ms": round(tail_s * 1000)})
        if item["split"] == "test":
            rel = f"streams/{i:05d}.wav"
            (out / "streams").mkdir(exist_ok=True)
            soundfile.write(out / rel, paused, RATE, subtype="PCM_16")
            streams.append({"audio": rel, "text": item["text"], "pause_s": [shift + gap[0], shift + gap[1]],
                            "speech_end_s": shift + end})
    for split, lines in rows.items():
        write_atomic(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    write_atomic(out / "test_streams.jsonl", "".join(json.dumps(r) + "\n" for r in streams))
    summary = {"config": asdict(config), "examples": {s: len(v) for s, v in rows.items()}, "streams": len(streams)}
    path = out / "summary.json"
    write_atomic(path, json.dumps(summary, indent=1) + "\n")
    return path


# ------------------------------------------------------------------------------------------ the recipe
class TurnEndSet:
    """A built split: features (N, frames, F) float32 and labels (N,) float (1 = complete)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} not found", f"build it: python -m omnivox.training.turn_end build {path.parent}")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if not rows:
            raise InputError(f"{path} holds no examples", "build the data again with more sentences")
        self.rows = rows
        self.features = torch.from_numpy(np.stack([np.load(path.parent / r["features"]) for r in rows]).astype(
            np.float32))
        self.labels = torch.tensor([float(r["complete"]) for r in rows])


def build_detector(config: dict | None = None) -> TurnEndNet:
    return TurnEndNet(TurnEndConfig(**(config or {})))


def scores(net: TurnEndNet, data: TurnEndSet, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, and the two errors that matter: complete turns judged incomplete (they wait for the silence
    rule) and incomplete ones judged complete (a false cut-in at the pause)."""
    with torch.no_grad():
        p = torch.sigmoid(net(data.features))
    said = p >= threshold
    complete = data.labels.bool()
    return {"accuracy": float((said == complete).float().mean()),
            "complete_missed": float((~said & complete).sum() / complete.sum().clamp(min=1)),
            "false_cut_in": float((said & ~complete).sum() / (~complete).sum().clamp(min=1))}


class TurnEndRecipe:
    """The recipe's steps: setup (data, network, optimiser), train, evaluate, export. Uses the recipe's name, seed,
    output_dir, model, data, eval_data, optimizer, scheduler, logger, training (max_steps, batch_size, log_every,
    num_threads) and export; the LM-only keys (strategy, trainable, loss, prepare) do not apply."""

    def __init__(self, recipe):
        self.recipe = recipe

    def setup(self) -> None:
        from omnivox.training.recipe import build

        r = self.recipe
        torch.manual_seed(r["seed"])
        if r["training"]["num_threads"]:
            torch.set_num_threads(r["training"]["num_threads"])
        self.net = build(r["model"], f"{r.source}: model")
        self.train_set = build(r["data"], f"{r.source}: data")
        self.eval_set = build(r["eval_data"], f"{r.source}: eval_data") if r["eval_data"] else None
        self.optimizer = build(r["optimizer"], f"{r.source}: optimizer", params=self.net.parameters())
        self.scheduler = build(r["scheduler"], f"{r.source}: scheduler", optimizer=self.optimizer,
                               total_steps=r["training"]["max_steps"])
        r.output_dir.mkdir(parents=True, exist_ok=True)
        self.logger = build(r["logger"], f"{r.source}: logger", output_dir=r.output_dir, resume_step=0,
                            enabled=True)

    def train(self) -> None:
        t = self.recipe["training"]
        generator = torch.Generator().manual_seed(self.recipe["seed"])
        loss_fn = torch.nn.BCEWithLogitsLoss()
        n = len(self.train_set.labels)
        self.net.train()
        for step in range(1, t["max_steps"] + 1):
            pick = torch.randint(0, n, (t["batch_size"],), generator=generator)
            loss = loss_fn(self.net(self.train_set.features[pick]), self.train_set.labels[pick])
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), t["grad_clip"])
            self.optimizer.step()
            self.scheduler.step()
            if step % t["log_every"] == 0 or step == t["max_steps"]:
                self.logger.log(step, {"loss": loss.item(), "lr": self.scheduler.get_last_lr()[0]})
        self.net.eval()

    def evaluate(self) -> dict[str, Any]:
        results = {"train": scores(self.net, self.train_set)}
        if self.eval_set is not None:
            results["eval"] = scores(self.net, self.eval_set)
            self.logger.log(self.recipe["training"]["max_steps"], results["eval"], split="eval")
        return results

    def run(self) -> dict[str, Any]:
        self.setup()
        self.train()
        results = self.evaluate()
        self.logger.close()
        export = save_detector(self.net, self.recipe.export_dir)
        summary = {"name": self.recipe["name"], "steps": self.recipe["training"]["max_steps"],
                   "examples": len(self.train_set.labels), "export": str(export), **results}
        write_atomic(self.recipe.output_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))
        return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnivox.training.turn_end", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="render and encode the examples")
    build.add_argument("data_dir")
    build.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    config = config_from(TurnEndDataConfig, {}, args.set, "turn-end data config", "train_sentences=200")
    print(build_turn_end(args.data_dir, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
