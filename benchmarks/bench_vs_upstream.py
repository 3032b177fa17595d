"""omnivox vs the ACTUAL upstream Mini-Omni code (imported from a checkout at run time), same weights.

Fabricates an upstream-format checkpoint (random weights, tiny or Mini-Omni shape), loads it into upstream's
`litgpt.model.GPT` (as inference.py `load_model` does, Fabric on CPU) and into `omnivox.OmniModel.from_pretrained`,
then runs per case upstream's own prompt builder (inference.py `get_input_ids_*`, with a stand-in whisper model
whose `embed_audio` returns the random (T, F) features and a stand-in tokenizer) and generate function
(litgpt/generate/base.py, with inference.py's arguments: temperature 0.9, top_k 1), and `omnivox.generate` with
the same task, the matching strategy (text-delay; batch-parallel for generate_TA_BATCH) and the same sampling
(top_k 1: greedy). Checks the token streams are identical, for a --steps run.

Per case: identical yes/no, omnivox's stop reason, steps, the first eot in the text stream (audio answers
force pad_t after it), prefill seconds (start to the end of the first model step), decode steps/s ((steps - 1)
/ (time from the end of the first step to the end of the last), read off a clock at the end of every step:
upstream's `next_token*` calls, omnivox's LM forward calls), whole-answer steps/s, and omnivox/upstream
ratios; medians of --repeats interleaved runs.
Random weights emit eot/eoa only for some seeds (--seed), otherwise the runs stop at the step budget.

Upstream hard-codes the Mini-Omni vocabulary (inference.py module constants, utils/snac_utils.py
`snac_config` and `layershift` defaults); for another shape those constants are set to the checkpoint's
vocabulary before running (printed); with --shape mini-omni they already match and nothing is changed.

    pip install lightning   # upstream litgpt/utils.py imports it; not an omnivox dependency
    python benchmarks/bench_vs_upstream.py --upstream-repo DIR [--shape tiny|mini-omni] [--steps N]
        [--frames N] [--repeats N] [--threads N] [--seed N] [--cases A1A2 ... batch] [--quantized SCHEME ...]

--quantized adds, per case, omnivox on a quantised copy of the same weights (core/kernel/quantize.py): its
decode and whole-answer steps/s, their ratios to upstream's, and how many leading columns equal upstream's.

Exit status: 0 all cases identical, 1 some case differs, 2 upstream checkout or lightning missing.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's loops wrap tqdm; tqdm reads this when first imported
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from upstream_reference import UPSTREAM_FIELDS, tiny_fields, write_upstream_checkpoint  # noqa: E402

from omnivox import OmniModel, generate  # noqa: E402
from omnivox.core import progress  # noqa: E402  (its bars pass disable explicitly: TQDM_DISABLE is upstream's)
from omnivox.core.kernel.quantize import SCHEMES, greedy_agreement, quantize  # noqa: E402
from omnivox.core.kernel.sampling import SamplingConfig  # noqa: E402

TEXT = [72, 105, 33, 10]  # the T1* prompt's text ids
UPSTREAM_FN = {"A1A2": "generate_AA", "A1T2": "generate_AT", "A1T1": "generate_ASR", "T1A2": "generate_TA",
               "T1T2": "generate_TT", "batch": "generate_TA_BATCH"}  # case -> litgpt/generate/base.py function
SETUP_HELP = ("this benchmark runs upstream Mini-Omni's own code from a checkout of it:\n"
              "  git clone https://github.com/gpt-omni/mini-omni /tmp/mini-omni\n"
              "  pip install lightning   # imported by upstream litgpt/utils.py (not an omnivox dependency)\n"
              "  python benchmarks/bench_vs_upstream.py --upstream-repo /tmp/mini-omni")


def fail_setup(problem: str) -> None:
    print(f"error: {problem}\n{SETUP_HELP}", file=sys.stderr)
    raise SystemExit(2)


def import_upstream(repo: Path | None) -> SimpleNamespace:
    """Upstream modules from the checkout `repo`: inference, litgpt.generate.base, litgpt (GPT, Config),
    utils.snac_utils and lightning's lazy_load."""
    if repo is None:
        fail_setup("--upstream-repo is missing")
    repo = repo.expanduser().resolve()
    for needed in ("inference.py", "litgpt/generate/base.py", "litgpt/model.py", "utils/snac_utils.py"):
        if not (repo / needed).is_file():
            fail_setup(f"{repo} is not a Mini-Omni checkout: {needed} is missing")
    try:
        lightning = importlib.import_module("lightning")
    except ImportError:
        fail_setup("the Python package 'lightning' is not installed")
    sys.path.insert(0, str(repo))
    mods = SimpleNamespace(lightning=lightning, inference=importlib.import_module("inference"),
                           base=importlib.import_module("litgpt.generate.base"),
                           litgpt=importlib.import_module("litgpt"),
                           snac_utils=importlib.import_module("utils.snac_utils"),
                           lazy_load=importlib.import_module("lightning.fabric.utilities.load")._lazy_load)
    for mod in (mods.inference, mods.base, mods.snac_utils):
        if not Path(mod.__file__).resolve().is_relative_to(repo):
            fail_setup(f"{mod.__name__} was imported from {mod.__file__}, not from {repo}; "
                       "uninstall the other copy or run from another directory")
    return mods


def match_upstream_vocab(up: SimpleNamespace, cfg: dict) -> list[str]:
    """Set upstream's hard-coded vocabulary constants to `cfg`'s; returns the ones that changed."""
    t, a = cfg["text_vocab_size"] - 64, cfg["audio_vocab_size"] - 64
    inf, snac = up.inference, up.snac_utils
    wanted = {
        (inf, "text_vocabsize"): t, (inf, "audio_vocabsize"): a,
        (inf, "padded_text_vocabsize"): cfg["text_vocab_size"],
        (inf, "padded_audio_vocabsize"): cfg["audio_vocab_size"],
        (inf, "_eot"): t, (inf, "_pad_t"): t + 1, (inf, "_input_t"): t + 2, (inf, "_answer_t"): t + 3,
        (inf, "_asr"): t + 4, (inf, "_eoa"): a, (inf, "_pad_a"): a + 1, (inf, "_input_a"): a + 2,
        (inf, "_answer_a"): a + 3, (inf, "_split"): a + 4,
        (snac.snac_config, "audio_vocab_size"): a, (snac.snac_config, "padded_vocab_size"): cfg["audio_vocab_size"],
        (snac.snac_config, "end_of_audio"): a + 1,  # upstream's name; the value is pad_a (4097)
        (snac.layershift, "__defaults__"): (cfg["audio_vocab_size"], cfg["text_vocab_size"]),  # (stride, shift)
    }
    changed = []
    for (owner, name), value in wanted.items():
        if getattr(owner, name) != value:
            changed.append(f"{name} {getattr(owner, name)} -> {value}")
            setattr(owner, name, value)
    return changed


def load_upstream_model(up: SimpleNamespace, ckpt: Path):
    """(fabric, model) as upstream inference.py `load_model` does, on CPU, without SNAC and whisper."""
    fabric = up.lightning.Fabric(devices=1, strategy="auto", accelerator="cpu")
    config = up.litgpt.Config.from_file(ckpt / "model_config.yaml")
    config.post_adapter = False
    with fabric.init_module(empty_init=False):
        model = up.litgpt.GPT(config)
    model = fabric.setup(model)  # upstream's generate_* read `model.device`, which Fabric's wrapper provides
    model.load_state_dict(up.lazy_load(ckpt / "lit_model.pth"), strict=True)
    return fabric, model.eval()


class FeaturesAsWhisper:
    """Stand-in for inference.py's whisper model: `embed_audio(mel)` returns the given features, so
    `get_input_ids_whisper*` build upstream's prompt around them."""

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        return mel  # (1, T, F): get_input_ids_whisper unsqueezed our (T, F) features


class IdsTokenizer:
    """Stand-in for litgpt's Tokenizer in `get_input_ids_TA/TT`: encodes any text to TEXT."""

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(TEXT)


class StepClock:
    """Monotonic time at the end of every model step (the first one is the prefill) while installed."""

    def __init__(self):
        self.ends: list[float] = []

    def tick(self, *_args) -> None:
        self.ends.append(time.perf_counter())

    def rates(self, start: float) -> tuple[float, float]:
        """(prefill seconds, decode steps/s) of one run that started at `start`."""
        return self.ends[0] - start, (len(self.ends) - 1) / (self.ends[-1] - self.ends[0])


@contextmanager
def upstream_clock(up: SimpleNamespace):
    """Wrap upstream's per-step functions (litgpt/generate/base.py next_token*) with a StepClock."""
    clock, saved = StepClock(), {}
    for name in dir(up.base):
        if name.startswith("next_token"):
            saved[name] = fn = getattr(up.base, name)
            setattr(up.base, name, lambda *a, _fn=fn, **k: (_fn(*a, **k), clock.tick())[0])
    try:
        yield clock
    finally:
        for name, fn in saved.items():
            setattr(up.base, name, fn)


@contextmanager
def omnivox_clock(model: OmniModel):
    """A StepClock ticked after every forward of omnivox's LM (one per step; the first is the prefill)."""
    clock = StepClock()
    handle = model.lm.register_forward_hook(clock.tick)
    try:
        yield clock
    finally:
        handle.remove()


def upstream_case(up: SimpleNamespace, case: str, features: torch.Tensor):
    """(positional args after the model, batch size) of UPSTREAM_FN[case], built and passed as inference.py
    does (its A1_A2, A1_T2, A1_T1, T1_A2, T1_T2, A1_A2_batch)."""
    inf, whisper, frames = up.inference, FeaturesAsWhisper(), features.shape[0]  # features: (T, F)
    if case == "A1A2":
        feats, ids = inf.get_input_ids_whisper(features, frames, whisper, "cpu", special_token_a=inf._answer_a,
                                               special_token_t=inf._answer_t)  # its defaults bound at import
        return (feats, ids, [frames], ["A1T2"]), 1
    if case == "A1T2":
        feats, ids = inf.get_input_ids_whisper(features, frames, whisper, "cpu", special_token_a=inf._pad_a,
                                               special_token_t=inf._answer_t)
        return (feats, ids, [frames], ["AT"]), 1
    if case == "A1T1":
        feats, ids = inf.get_input_ids_whisper(features, frames, whisper, "cpu", special_token_a=inf._pad_a,
                                               special_token_t=inf._asr)
        return (feats, ids, [frames], ["A1T1"]), 1
    if case == "T1A2":
        return (None, inf.get_input_ids_TA("", IdsTokenizer()), None, ["T1A2"]), 1
    if case == "T1T2":
        return (None, inf.get_input_ids_TT("", IdsTokenizer()), None, ["T1T2"]), 1
    feats, ids = inf.get_input_ids_whisper_ATBatch(features, frames, whisper, "cpu")
    return (feats, ids, [frames, frames], ["A1A2", "A1T2"]), 2


def run_upstream(up: SimpleNamespace, fabric, model, case: str, features: torch.Tensor, steps: int):
    """Upstream's output lists for `steps` generated columns, and the seconds taken."""
    args, batch = upstream_case(up, case, features)
    prompt_len = args[1][0].size(1)  # ids: 8 x (batch, T)
    inf = up.inference
    with upstream_clock(up) as clock:
        start = time.perf_counter()
        with fabric.init_tensor():
            model.set_kv_cache(batch_size=batch)
        out = getattr(up.base, UPSTREAM_FN[case])(
            model, *args, max_returned_tokens=prompt_len + steps, temperature=0.9, top_k=1, eos_id_a=inf._eoa,
            eos_id_t=inf._eot, pad_id_t=inf._pad_t, shift=inf.padded_text_vocabsize, include_prompt=True,
            generate_text=True)  # inference.py's arguments
        model.clear_kv_cache()
        whole = time.perf_counter() - start
    return out, (whole, *clock.rates(start))


def run_omnivox(model: OmniModel, case: str, features: torch.Tensor, steps: int):
    task, strategy = ("A1A2", "batch-parallel") if case == "batch" else (case, "text-delay")
    inputs = dict(text_ids=TEXT) if task.startswith("T1") else dict(audio_features=features)
    with omnivox_clock(model) as clock:
        start = time.perf_counter()
        result = generate(model, task=task, strategy=strategy, sampling=SamplingConfig(temperature=0.9, top_k=1),
                          max_steps=steps, **inputs)
        whole = time.perf_counter() - start
    return result, (whole, *clock.rates(start))


def first_difference(upstream: list, ours: list) -> str:
    """'stream s step k: upstream x, omnivox y' for the first differing token (or a length difference)."""
    nested = bool(upstream) and isinstance(upstream[0], list)
    pairs = list(zip(upstream, ours, strict=True)) if nested else [(upstream, ours)]
    for s, (u, o) in enumerate(pairs):
        for k, (x, y) in enumerate(zip(u, o, strict=False)):  # lengths compared below
            if x != y:
                return f"stream {s} step {k}: upstream {x}, omnivox {y}"
        if len(u) != len(o):
            return f"stream {s}: upstream {len(u)} steps, omnivox {len(o)}"
    return "same tokens"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-repo", type=Path, help="a Mini-Omni checkout (inference.py, litgpt/, utils/)")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "mini-omni"])
    parser.add_argument("--steps", type=int, default=None, help="generated steps per case (tiny 64, mini-omni 8)")
    parser.add_argument("--frames", type=int, default=None, help="audio feature frames (tiny 20, mini-omni 50)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side (tiny 5, mini-omni 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random checkpoint weights")
    parser.add_argument("--cases", nargs="+", default=list(UPSTREAM_FN), choices=list(UPSTREAM_FN))
    parser.add_argument("--quantized", nargs="+", default=[], choices=SCHEMES, help="also time these schemes")
    args = parser.parse_args()
    up = import_upstream(args.upstream_repo)
    tiny = args.shape == "tiny"
    steps = args.steps or (64 if tiny else 8)
    if steps < 2:
        parser.error("--steps must be >= 2 (the decode rate needs two steps)")
    frames = args.frames or (20 if tiny else 50)
    repeats = args.repeats or (5 if tiny else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = tiny_fields() if tiny else dict(UPSTREAM_FIELDS)
    changed = match_upstream_vocab(up, cfg)
    print(f"shape {args.shape}: {cfg['n_layer']} layers, n_embd {cfg['n_embd']}, vocab {cfg['padded_vocab_size']}; "
          f"{steps} steps, {frames} feature frames, {repeats} repeat(s), {torch.get_num_threads()} thread(s)")
    print("upstream vocabulary constants: " + ("; ".join(changed) if changed else "unchanged (Mini-Omni vocab)"))

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        t = time.perf_counter()
        write_upstream_checkpoint(ckpt, cfg, seed=args.seed)
        print(f"checkpoint written in {time.perf_counter() - t:.1f} s")
        fabric, upstream_model = load_upstream_model(up, ckpt)
        ours = OmniModel.from_pretrained(ckpt)
    quantized = {s: OmniModel(quantize(copy.deepcopy(ours.lm), s), ours.tokenizer) for s in args.quantized}

    features = torch.randn(frames, cfg["whisper_adapter_dim"], generator=torch.Generator().manual_seed(1))  # (T, F)
    print(f"{'case':<6} {'upstream function':<18} {'same':<4} {'stop':<9} {'steps':>5} {'eot@':>4} | "
          f"{'prefill s up/ours':>17} | {'decode steps/s up/ours':>22} {'ratio':>6} | {'whole steps/s up/ours':>21} "
          f"{'ratio':>6}", flush=True)
    all_identical = True
    for case in args.cases:
        times = {side: [] for side in ("up", "ours", *quantized)}  # (whole s, prefill s, decode steps/s) per run
        q_tokens = {}
        identical = True
        bar = progress.bar(total=repeats, desc=f"bench_vs_upstream {case}", unit="run",
                           leave=False)  # shown only on a terminal (TQDM_DISABLE above is upstream's default)
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both sides alike
            out, t_up = run_upstream(up, fabric, upstream_model, case, features, steps)
            result, t_ours = run_omnivox(ours, case, features, steps)
            times["up"].append(t_up)
            times["ours"].append(t_ours)
            ours_tokens = (result.text_tokens if result.audio_tokens is None
                           else result.audio_tokens + [result.text_tokens])
            if out != ours_tokens:
                identical = False
                bar.write(f"  {case} DIFFERS at {first_difference(out, ours_tokens)}")
            for scheme, model in quantized.items():
                q_tokens[scheme], t_q = run_omnivox(model, case, features, steps)
                times[scheme].append(t_q)
            bar.update()
        bar.close()
        all_identical &= identical
        t = {side: [statistics.median(run[i] for run in v) for i in range(3)] for side, v in times.items()}
        text = out[7] if case in ("A1A2", "T1A2", "batch") else out
        eot = up.inference._eot
        up_steps = len(text)
        whole_up = up_steps / t["up"][0]
        print(f"{case:<6} {UPSTREAM_FN[case]:<18} {'yes' if identical else 'NO':<4} {result.stop_reason:<9} "
              f"{result.steps:>5} {text.index(eot) if eot in text else '-':>4} | "
              f"{t['up'][1]:>8.3f} {t['ours'][1]:>8.3f} | {t['up'][2]:>11.2f} {t['ours'][2]:>10.2f} "
              f"{t['ours'][2] / t['up'][2]:>5.2f}x | {whole_up:>10.2f} {result.steps / t['ours'][0]:>10.2f} "
              f"{result.steps / t['ours'][0] / whole_up:>5.2f}x", flush=True)
        up_grid = torch.tensor(out if isinstance(out[0], list) else [out])
        for scheme, q in q_tokens.items():
            q_grid = q.tokens if q.audio_tokens is not None else q.tokens[-1:]
            decode_q, whole_q = t[scheme][2], q.steps / t[scheme][0]
            print(f"  {scheme:<18} decode {decode_q:.1f} steps/s ({decode_q / t['up'][2]:.2f}x upstream), whole "
                  f"{whole_q:.1f} steps/s ({whole_q / whole_up:.2f}x), prefill {t[scheme][1]:.3f} s, first "
                  f"{greedy_agreement(up_grid, q_grid)} of {q.steps} columns equal upstream's", flush=True)
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
