"""A configurable espeak-ng speech corpus for codec training, ASR (A1T1) and spoken Q->A.

    omnivox synth-data DIR --corpus [CORPUS.yaml] [--set key=value ...]

Sentences are generated from templates with a seeded generator: statements ("the old teacher walked to the
station on friday") and question/answer pairs (sums, days, numbers, opposites). Each sentence is assigned to
one split (train/validation/test) BEFORE any audio is made, so the splits never share a sentence, only ever
utterances of their own sentences. Each sentence is spoken `variants` times with voices, rates and pitches
drawn from the config; the test split uses its own held-out voices and rates (`test_voices`, `test_rates`),
so an ASR or codec figure on it is measured on speakers no model was trained on. Optional reverberation
(sox `reverb`) and additive white noise at a drawn SNR. The same config gives byte-identical files.

Written (paths relative to DIR, the manifest format of training/data.py):
    audio/<split>/<sentence id>-<variant>.wav
    <split>.codec.jsonl   T1A2 lines (text -> its speech): every utterance, for codec (and TTS) training
    <split>.asr.jsonl     A1T1 lines (speech -> transcript): every utterance
                          (test.codec/test.asr leave out the spoken answers: their voice is a training voice)
    <split>.qa.jsonl      A1T2 and A1A2 lines: spoken question -> answer text / answer speech (answers in
                          the one `answer_voice`, as an assistant speaks)
    corpus.json           the resolved config, the manifests, the sentences of each split and every utterance
                          (file, text, voice, rate, pitch, reverberance, SNR)"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from omnivox.core.errors import ConfigError, InputError
from omnivox.core.progress import bar

SPLITS = ("train", "validation", "test")

# ------------------------------------------------------------------------------------------ sentences
_ADJ = ["old", "young", "quiet", "busy", "tired", "happy", "careful", "clever", "small", "tall", "friendly", "brave"]
_WHO = ["teacher", "doctor", "farmer", "driver", "painter", "student", "baker", "pilot", "nurse", "writer",
        "gardener", "singer"]
_PAST = ["walked to", "drove to", "looked at", "waited near", "ran past", "cleaned", "painted", "visited"]
_PLACE = ["station", "library", "market", "garden", "harbour", "kitchen", "museum", "bridge", "school", "river"]
_DAY = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_NAME = ["anna", "peter", "maria", "james", "lucy", "tom", "sarah", "david", "emma", "john", "laura", "mark"]
_THING = ["letter", "basket", "window", "lamp", "coat", "bicycle", "picture", "chair", "book", "kettle"]
_COLOUR = ["red", "blue", "green", "yellow", "brown", "white", "black", "orange"]
_WEATHER = ["cold", "warm", "windy", "sunny", "rainy", "foggy", "cloudy"]
_MONTH = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
_OPPOSITE = {"hot": "cold", "big": "small", "fast": "slow", "open": "closed", "early": "late", "light": "dark",
             "full": "empty", "high": "low", "old": "new", "happy": "sad", "up": "down", "left": "right"}
_NUMBER = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_TEMPLATES: list[Callable[[random.Random], str]] = [
    lambda r: f"the {r.choice(_ADJ)} {r.choice(_WHO)} {r.choice(_PAST)} the {r.choice(_PLACE)} on {r.choice(_DAY)}",
    lambda r: f"{r.choice(_NAME)} bought a {r.choice(_COLOUR)} {r.choice(_THING)} at the {r.choice(_PLACE)}",
    lambda r: f"it was {r.choice(_WEATHER)} and {r.choice(_WEATHER)} in {r.choice(_MONTH)}",
    lambda r: f"please give the {r.choice(_THING)} to the {r.choice(_ADJ)} {r.choice(_WHO)}",
    lambda r: f"{r.choice(_NAME)} and {r.choice(_NAME)} will meet near the {r.choice(_PLACE)} next {r.choice(_DAY)}",
    lambda r: f"the {r.choice(_WHO)} left a {r.choice(_COLOUR)} {r.choice(_THING)} in the {r.choice(_PLACE)}",
]


def statements(n: int, seed: int) -> list[str]:
    """n distinct template sentences, drawn with `seed`."""
    rng, out = random.Random(seed), {}  # dict: distinct, in draw order
    for _ in range(200 * n):
        if len(out) == n:
            break
        out[rng.choice(_TEMPLATES)(rng)] = None
    if len(out) < n:
        raise ConfigError(f"sentences: {n} is more than the templates can make distinct", "ask for fewer sentences")
    return list(out)


def qa_pool() -> list[tuple[str, str]]:
    """Every question/answer pair the templates make (sums, next day/month/number, opposites)."""
    pairs = [(f"what is {_NUMBER[a]} plus {_NUMBER[b]}", f"{_NUMBER[a]} plus {_NUMBER[b]} is {_NUMBER[a + b]}")
             for a in range(10) for b in range(10)]
    for names, what in ((_DAY, "day"), (_MONTH, "month")):
        pairs += [(f"what {what} comes after {x}", f"{names[(i + 1) % len(names)]} comes after {x}")
                  for i, x in enumerate(names)]
    pairs += [(f"what number comes after {_NUMBER[i]}", f"{_NUMBER[i + 1]} comes after {_NUMBER[i]}")
              for i in range(len(_NUMBER) - 1)]
    pairs += [(f"what is the opposite of {a}", f"the opposite of {a} is {b}") for a, b in _OPPOSITE.items()]
    return pairs


# ------------------------------------------------------------------------------------------ config
@dataclass
class CorpusConfig:
    """What to build; every field can be set in the YAML file or with --set key=value."""

    sentences: int = 120  # statements (codec + ASR manifests)
    qa_pairs: int = 60  # question/answer pairs (all manifests; at most len(qa_pool()))
    variants: int = 2  # utterances per sentence, each with its own voice/rate/pitch (and noise/reverb draw)
    voices: list[str] = field(default_factory=lambda: ["en-us", "en-us+f3", "en-gb-scotland", "en-029",
                                                       "en-gb-x-gbclan", "en-gb-x-gbcwmd"])
    rates: list[int] = field(default_factory=lambda: [150, 170, 190])  # words per minute
    pitches: list[int] = field(default_factory=lambda: [35, 50, 65])  # espeak-ng 0..99
    # held out: voices tiny.en hears well (the ASR yardstick is most sensitive there); en-029 and
    # en-gb-scotland score ~55% WER with tiny.en, en-gb-x-rp, en-us-nyc and en-gb 20-25%
    test_voices: list[str] = field(default_factory=lambda: ["en-gb-x-rp", "en-us-nyc", "en-gb"])
    test_rates: list[int] = field(default_factory=lambda: [140, 180])
    answer_voice: str = "en-us"  # the assistant's voice for spoken answers (all splits)
    answer_rate: int = 170
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    noise_probability: float = 0.0  # share of utterances with white noise added
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])  # SNR drawn uniformly in this range
    reverb_probability: float = 0.0  # share of utterances through sox reverb
    reverberance: list[float] = field(default_factory=lambda: [20.0, 70.0])  # sox reverb's 0..100, drawn
    sample_rate: int | None = None  # resample (sox) to this rate; None keeps espeak-ng's 22050 Hz
    seed: int = 0
    jobs: int = 2  # espeak-ng/sox processes at once

    def __post_init__(self) -> None:
        if self.sentences < 0 or self.qa_pairs < 0 or self.sentences + self.qa_pairs == 0 or self.variants < 1:
            raise ConfigError(f"sentences={self.sentences}, qa_pairs={self.qa_pairs}, variants={self.variants}",
                              "ask for some sentences or QA pairs, and at least 1 variant")
        if self.qa_pairs > len(qa_pool()):
            raise ConfigError(f"qa_pairs={self.qa_pairs}", f"the templates make at most {len(qa_pool())} pairs")
        if sorted(self.split) != sorted(SPLITS) or any(v < 0 for v in self.split.values()) or \
                abs(sum(self.split.values()) - 1) > 1e-6:
            raise ConfigError(f"split={self.split}", "give train, validation and test shares that add up to 1")
        for name in ("voices", "rates", "pitches", "test_voices", "test_rates"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is empty", f"list at least one of {name}")
        for name in ("noise_probability", "reverb_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)}", "use a probability in [0, 1]")
        for name in ("noise_snr_db", "reverberance"):
            pair = getattr(self, name)
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ConfigError(f"{name}={pair}", "give a [low, high] range")
        if self.jobs < 1:
            raise ConfigError(f"jobs={self.jobs}", "use 1 or more")


def load_corpus_config(path: str | Path | None = None, overrides: list[str] = ()) -> CorpusConfig:
    """The defaults, updated by the YAML file `path` (a mapping of CorpusConfig fields), then by `overrides`
    ("key=value", the value parsed as YAML)."""
    from omnivox.core.yaml_files import read_yaml

    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path, "corpus config", "pass an existing YAML file") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"corpus config {path} is not a mapping", "write key: value lines")
    return config_from(CorpusConfig, values, overrides, "corpus config", "sentences=40")


def config_from(cls, values: dict[str, Any], overrides: list[str], what: str, example: str):
    """cls(**values) after "key=value" `overrides` (values parsed as YAML); unknown keys and wrong types are
    ConfigErrors naming `what` and the valid keys."""
    import yaml

    values = dict(values)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} has no '='", f"write key=value, e.g. {example}")
        values[key.strip()] = yaml.safe_load(value)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} key {unknown[0]!r}", f"valid keys: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. a list where a number belongs
        raise ConfigError(f"{what}: {exc}", "check the value types against the defaults") from None


# ------------------------------------------------------------------------------------------ building
@dataclass(frozen=True)
class Utterance:
    """One audio file to make: `text` spoken with a voice, rate, pitch and word gap (espeak-ng -g, in 10 ms),
    then the optional effects."""

    path: Path
    text: str
    voice: str
    rate: int
    pitch: int
    reverberance: float | None
    snr_db: float | None
    seed: int
    word_gap: int = 0
    ssml: bool = False  # `text` is SSML (espeak-ng -m): e.g. <break time="500ms"/> for a pause


def assign_splits(keys: list[str], shares: dict[str, float], seed: int) -> dict[str, str]:
    """key -> split, by a seeded shuffle of the keys (sentences, never utterances)."""
    order = keys[:]
    random.Random(seed).shuffle(order)
    n_test = round(shares["test"] * len(order))
    n_validation = round(shares["validation"] * len(order))
    return {key: "test" if i < n_test else "validation" if i < n_test + n_validation else "train"
            for i, key in enumerate(order)}


def build_corpus(out_dir: str | Path, config: CorpusConfig | None = None, *, progress: bool = True) -> Path:
    """Write the corpus described by `config` into `out_dir` (see the module docstring); returns corpus.json."""
    config = config or CorpusConfig()
    for exe in ("espeak-ng", "sox"):
        if shutil.which(exe) is None:
            raise InputError(f"{exe} is not installed", f"install it (apt-get install {exe}) to build a corpus")
    out = Path(out_dir)
    rng = random.Random(config.seed)
    texts = statements(config.sentences, config.seed)
    pairs = random.Random(config.seed + 1).sample(qa_pool(), config.qa_pairs)
    keys = [f"s{i:04d}" for i in range(len(texts))] + [f"q{i:04d}" for i in range(len(pairs))]
    split_of = assign_splits(keys[: len(texts)], config.split, config.seed)  # statements and QA pairs each
    split_of |= assign_splits(keys[len(texts) :], config.split, config.seed + 1)  # spread over the splits

    jobs: list[Utterance] = []
    rows: dict[str, dict[str, list[dict]]] = {s: {"codec": [], "asr": [], "qa": []} for s in SPLITS}
    sentences: dict[str, list[str]] = {s: [] for s in SPLITS}

    def utterance(key: str, variant: int | str, text: str, voice: str, rate: int, pitch: int) -> str:
        """Queue one utterance; list it in the codec and ASR manifests unless it is a test-split answer (the
        answer voice is a training voice; test.codec/test.asr hold held-out voices only)."""
        split = split_of[key]
        path = out / "audio" / split / f"{key}-{variant}.wav"
        reverb = rng.uniform(*config.reverberance) if rng.random() < config.reverb_probability else None
        snr = rng.uniform(*config.noise_snr_db) if rng.random() < config.noise_probability else None
        jobs.append(Utterance(path, text, voice, rate, pitch, reverb, snr, rng.randrange(2**31)))
        rel = path.relative_to(out).as_posix()
        uid = f"{key}-{variant}"
        if split == "test" and variant == "answer":
            return rel
        rows[split]["codec"].append({"id": f"{uid}-tts", "task": "T1A2", "question_text": text, "answer_text": text,
                                     "answer_audio": rel})
        rows[split]["asr"].append({"id": f"{uid}-asr", "task": "A1T1", "question_audio": rel, "answer_text": text})
        return rel

    def speaker(split: str) -> tuple[str, int, int]:
        test = split == "test"
        return (rng.choice(config.test_voices if test else config.voices),
                rng.choice(config.test_rates if test else config.rates), rng.choice(config.pitches))

    for key, text in zip(keys[: len(texts)], texts, strict=True):  # statements
        sentences[split_of[key]].append(text)
        for v in range(config.variants):
            utterance(key, v, text, *speaker(split_of[key]))
    for key, (question, answer) in zip(keys[len(texts):], pairs, strict=True):
        split = split_of[key]
        sentences[split] += [question, answer]
        answer_audio = utterance(key, "answer", answer, config.answer_voice, config.answer_rate, 50)
        for v in range(config.variants):
            question_audio = utterance(key, v, question, *speaker(split))
            uid = f"{key}-{v}"
            rows[split]["qa"] += [
                {"id": f"{uid}-qa-text", "task": "A1T2", "question_audio": question_audio, "answer_text": answer},
                {"id": f"{uid}-qa-speech", "task": "A1A2", "question_audio": question_audio, "answer_text": answer,
                 "answer_audio": answer_audio},
            ]

    render_all(jobs, config, progress)
    manifests = {}
    for split in SPLITS:
        for kind, lines in rows[split].items():
            if lines:
                path = out / f"{split}.{kind}.jsonl"
                write_atomic(path, "".join(json.dumps(r) + "\n" for r in lines))
                manifests[f"{split}.{kind}"] = {"file": path.name, "examples": len(lines)}
    utterances = [{**asdict(job), "path": job.path.relative_to(out).as_posix()} for job in jobs]
    summary = {"config": asdict(config), "manifests": manifests, "sentences": sentences, "utterances": utterances}
    corpus = out / "corpus.json"
    write_atomic(corpus, json.dumps(summary, indent=1) + "\n")
    return corpus


def render_all(jobs: list[Utterance], config: CorpusConfig, progress: bool) -> None:
    with ThreadPoolExecutor(max_workers=config.jobs) as pool:  # the work is in espeak-ng/sox processes
        done = pool.map(lambda job: render(job, config.sample_rate), jobs)
        for _ in bar(done, total=len(jobs), desc="corpus", unit="utt", enabled=progress, leave=False):
            pass


def render(job: Utterance, sample_rate: int | None = None) -> Path:
    """Make one utterance: espeak-ng, then sox (reverb, resampling) if asked, then white noise at the SNR."""
    import soundfile

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        _run(["espeak-ng", *(["-m"] if job.ssml else []), "-v", job.voice, "-s", str(job.rate), "-p", str(job.pitch),
              "-g", str(job.word_gap), "-w", str(raw), job.text],
             f"espeak-ng failed for {job.text!r} with voice {job.voice!r}", "check the voice name (espeak-ng --voices)")
        if not raw.is_file() or raw.stat().st_size <= 44:
            raise InputError(f"espeak-ng made no audio for {job.text!r} with voice {job.voice!r}",
                             "check the voice name (espeak-ng --voices)")
        effects = []
        if job.reverberance is not None:  # reverberance %, HF damping %, room scale %; let the tail ring out
            effects += ["reverb", f"{job.reverberance:.1f}", "50", "70", "pad", "0", "0.3"]
        if sample_rate is not None:
            effects += ["rate", str(sample_rate)]
        if effects:
            shaped = Path(tmp) / "shaped.wav"
            # -R -D: repeatable, no dither, so the same config gives the same bytes
            _run(["sox", "-R", "-D", str(raw), str(shaped), *effects], f"sox failed on {job.path.name}",
                 "check the sox install")
            raw = shaped
        pcm, rate = soundfile.read(raw, dtype="float32")  # (samples,)
    if job.snr_db is not None:
        noise = np.random.default_rng(job.seed).standard_normal(pcm.shape).astype(np.float32)
        power = float(np.mean(pcm**2)) or 1e-10
        pcm = pcm + noise * np.sqrt(power / 10 ** (job.snr_db / 10))
        peak = float(np.abs(pcm).max())
        if peak > 0.99:
            pcm = pcm * (0.99 / peak)  # keep PCM16 from clipping
    job.path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(job.path, pcm, rate, subtype="PCM_16")
    return job.path


def _run(cmd: list[str], problem: str, fix: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise InputError(f"{problem}: {result.stderr.strip()[:200]}", fix)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
