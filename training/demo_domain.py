"""The demo model's spoken-question domain: intents, phrasings, answers, splits, the espeak-ng data set and
the scoring that tells a right answer from a wrong one.

    python -m omnivox.training.demo_domain build DIR [--set key=value ...]     the data set (seeded)
    python -m omnivox.training.demo_domain evaluate EXPORT DIR/test.prepared.jsonl [--limit N]

What the demo model knows (every answer has one fixed form):
    add          "what is forty seven plus ten"       -> "forty seven plus ten is fifty seven"  (20..89 plus ten)
    subtract     "what is forty seven minus ten"      -> "forty seven minus ten is thirty seven"  (30..99)
    day_after    "what day comes after monday"        -> "tuesday comes after monday"
    day_before   "what day comes before monday"       -> "sunday comes before monday"
    month_after  "what month comes after may"         -> "june comes after may"
    month_before "what month comes before may"        -> "april comes before may"
    capital      "what is the capital of france"      -> "the capital of france is paris"  (30 countries)
    greeting     "hello there"                        -> "hello, how can i help you"
    identity     "who are you"                        -> "i am omnivox, a small demo voice assistant"
    yes_no       "is ice cold"                        -> "yes, ice is cold" / "no, ice is not hot"
Each intent has several phrasings ("how much is forty seven plus ten", "tell me the capital of france", ...).

Splits (decided before any audio is made, seeded): the test split holds, for every intent, one phrasing
never used in training, and for add/subtract number pairs never used in training (in any phrasing);
every test question is spoken by voices and rates held out of training. Validation: a few more unseen
number pairs in training phrasings, in training voices. Questions are spoken by many voices, rates and
pitches with light white noise; answers always by `answer_voice` at `answer_rate` (the assistant's voice).

Written (paths relative to DIR, the manifest format of training/data.py; rendered by training/corpus.py):
    audio/q/<key>.wav, audio/a/<answer key>.wav
    train.jsonl        A1T1 (question speech -> its text), T1A2 (answer text -> answer speech),
                       A1T2, A1A2 (spoken question -> answer text / speech), T1T2 (question text -> answer)
    validation.jsonl   the same tasks on the validation questions
    test.jsonl         A1T1, A1T2, A1A2 on the held-out questions (A1T2 and A1A2 lines share question audio)
    codec.jsonl        audio for codec training: every training answer + a share of training questions
    demo.json          the config, and per question key: intent, split, question, answer, voice, rate, pitch

`score_answer(intent, expected, transcript)` checks that a transcript (or a text answer) says the answer's
key fact (the sum, the day, the capital, yes/no, ...); `evaluate` runs a trained export on a prepared test
manifest and returns per-intent accuracy of text answers (A1T2) and of spoken answers (A1A2, transcribed by
the ASR yardstick plugins/fw_transcriber.py)."""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omnivox.core.errors import ConfigError, InputError
from omnivox.core.kernel import spoken_numbers
from omnivox.core.kernel.spoken_numbers import NUMBERS, TENS
from omnivox.training.corpus import Utterance, config_from, render_all, write_atomic

DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
CAPITALS = {
    "france": "paris", "germany": "berlin", "italy": "rome", "spain": "madrid", "portugal": "lisbon",
    "england": "london", "ireland": "dublin", "norway": "oslo", "sweden": "stockholm", "finland": "helsinki",
    "denmark": "copenhagen", "poland": "warsaw", "austria": "vienna", "greece": "athens", "egypt": "cairo",
    "russia": "moscow", "japan": "tokyo", "china": "beijing", "india": "new delhi", "canada": "ottawa",
    "mexico": "mexico city", "peru": "lima", "chile": "santiago", "kenya": "nairobi", "cuba": "havana",
    "turkey": "ankara", "iran": "tehran", "thailand": "bangkok", "hungary": "budapest", "belgium": "brussels",
}
GREETING_ANSWER = "hello, how can i help you"
IDENTITY_ANSWER = "i am omnivox, a small demo voice assistant"
# (subject, verb form, property, its opposite): "is ice cold" -> yes, "is ice hot" -> no
FACTS = [("ice", "is", "cold", "hot"), ("the sun", "is", "hot", "cold"), ("snow", "is", "white", "black"),
         ("the sky", "is", "blue", "green"), ("grass", "is", "green", "red"), ("a mouse", "is", "small", "big"),
         ("an elephant", "is", "big", "small"), ("fire", "is", "hot", "cold"), ("the sea", "is", "wet", "dry"),
         ("sugar", "is", "sweet", "bitter"), ("a lemon", "is", "sour", "sweet"), ("the night", "is", "dark", "light")]

# Phrasings per intent; the LAST one of each list is held out for the test split.
PHRASINGS: dict[str, list[str]] = {
    "add": ["what is {a} plus {b}", "what's {a} plus {b}", "how much is {a} plus {b}", "{a} plus {b} is what",
            "tell me {a} plus {b}", "please work out {a} plus {b}", "what do you get for {a} plus {b}",
            "add {b} to {a}", "can you tell me what {a} plus {b} is"],
    "subtract": ["what is {a} minus {b}", "what's {a} minus {b}", "how much is {a} minus {b}",
                 "{a} minus {b} is what", "tell me {a} minus {b}", "please work out {a} minus {b}",
                 "what do you get for {a} minus {b}", "take {b} from {a}", "can you tell me what {a} minus {b} is"],
    "day_after": ["what day comes after {x}", "which day comes after {x}", "what day is after {x}",
                  "tell me the day after {x}", "the day after {x} is what", "which day follows {x}",
                  "please tell me which day comes after {x}", "what is the day after {x}"],
    "day_before": ["what day comes before {x}", "which day comes before {x}", "what day is before {x}",
                   "tell me the day before {x}", "the day before {x} is what", "which day precedes {x}",
                   "please tell me which day comes before {x}", "what is the day before {x}"],
    "month_after": ["what month comes after {x}", "which month comes after {x}", "what month is after {x}",
                    "tell me the month after {x}", "the month after {x} is what", "which month follows {x}",
                    "please tell me which month comes after {x}", "what is the month after {x}"],
    "month_before": ["what month comes before {x}", "which month comes before {x}", "what month is before {x}",
                     "tell me the month before {x}", "the month before {x} is what", "which month precedes {x}",
                     "please tell me which month comes before {x}", "what is the month before {x}"],
    "capital": ["what is the capital of {x}", "what's the capital of {x}", "tell me the capital of {x}",
                "which city is the capital of {x}", "name the capital of {x}", "the capital of {x} is what",
                "please tell me the capital of {x}", "what city is the capital of {x}",
                "do you know the capital of {x}"],
    "greeting": ["hello", "hi", "hello there", "good morning", "hey", "hi there, how are you", "hey there",
                 "good evening", "hello, how are you", "hi there", "good afternoon"],
    "identity": ["who are you", "what is your name", "what are you", "tell me who you are", "what's your name",
                 "tell me your name", "who am i talking to", "what should i call you", "introduce yourself",
                 "please tell me who you are"],
    "yes_no": ["is {s} {p}", "tell me, is {s} {p}", "would you say {s} is {p}", "do you think {s} is {p}",
               "can you tell me if {s} is {p}", "is it right that {s} is {p}", "please tell me, is {s} {p}",
               "is it true that {s} is {p}"],
}
INTENTS = tuple(PHRASINGS)
ARITHMETIC = ("add", "subtract")
ADD_RANGE, SUBTRACT_RANGE = range(20, 90), range(30, 100)  # "<n> plus ten", "<n> minus ten"


def number_words(n: int) -> str:
    """0..99 in words: 7 -> 'seven', 40 -> 'forty', 47 -> 'forty seven'."""
    if not 0 <= n < 100:
        raise ValueError(f"{n} is outside 0..99")
    return spoken_numbers.number_words(n)


def contents(intent: str) -> list[tuple[str, dict[str, str], str]]:
    """(content key, template slots, answer) for every content of `intent` (the number pair, day, ...)."""
    if intent == "add":
        return [(f"{a}+10", {"a": number_words(a), "b": "ten"}, f"{number_words(a)} plus ten is {number_words(a + 10)}")
                for a in ADD_RANGE]
    if intent == "subtract":
        return [(f"{a}-10", {"a": number_words(a), "b": "ten"},
                 f"{number_words(a)} minus ten is {number_words(a - 10)}") for a in SUBTRACT_RANGE]
    if intent in ("day_after", "day_before", "month_after", "month_before"):
        names = DAYS if intent.startswith("day") else MONTHS
        step, word = (1, "after") if intent.endswith("after") else (-1, "before")
        return [(x, {"x": x}, f"{names[(i + step) % len(names)]} comes {word} {x}") for i, x in enumerate(names)]
    if intent == "capital":
        return [(c, {"x": c}, f"the capital of {c} is {city}") for c, city in CAPITALS.items()]
    if intent == "greeting":
        return [("hello", {}, GREETING_ANSWER)]
    if intent == "identity":
        return [("self", {}, IDENTITY_ANSWER)]
    if intent == "yes_no":
        out = []
        for subject, verb, good, bad in FACTS:
            out.append((f"{subject}:{good}", {"s": subject, "p": good}, f"yes, {subject} {verb} {good}"))
            out.append((f"{subject}:{bad}", {"s": subject, "p": bad}, f"no, {subject} {verb} not {bad}"))
        return out
    raise ConfigError(f"unknown intent {intent!r}", f"use one of: {', '.join(INTENTS)}")


# ------------------------------------------------------------------------------------------ scoring
def spoken_words(text: str) -> list[str]:
    """Lower-case words with numbers below 1000 spelled out ('7' -> 'seven', '47' -> 'forty seven', '100' -> 'one
    hundred', as the yardstick writes "my battery is at 100%"), punctuation dropped."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"\d+", lambda m: f" {spoken_numbers.number_words(int(m.group()))} " if int(m.group()) < 1000
                  else f" {m.group()} ", text)
    return re.findall(r"[a-z0-9']+", text)


def numbers_said(words: list[str]) -> list[int]:
    """The numbers said, in order: ['forty', 'seven', 'plus', 'ten'] -> [47, 10]."""
    out: list[int] = []
    for i, w in enumerate(words):
        if w in TENS[2:]:
            out.append(10 * TENS.index(w))
        elif w in NUMBERS:
            unit = NUMBERS.index(w)
            joins = 0 < unit < 10 and i > 0 and words[i - 1] in TENS[2:]  # "forty" "seven" -> 47
            out[-1:] = [out[-1] + unit] if joins else out[-1:] + [unit]
    return out


def score_answer(intent: str, expected: str, transcript: str) -> bool:
    """Does `transcript` (ASR of a spoken answer, or a text answer) say the key fact of `expected`?
    add/subtract: the last number said is the result; days/months: the first day/month said is the answer;
    capital: the city is named; yes_no: it starts with the right yes/no; greeting: 'hello' or 'help';
    identity: 'assistant' (ASR spells the name 'omnivox' many ways)."""
    if intent not in INTENTS:
        raise ConfigError(f"unknown intent {intent!r}", f"use one of: {', '.join(INTENTS)}")
    said, want = spoken_words(transcript), spoken_words(expected)
    if not said:
        return False
    if intent in ARITHMETIC:
        numbers = numbers_said(said)
        return bool(numbers) and numbers[-1] == numbers_said(want)[-1]
    if intent.startswith(("day", "month")):
        names = DAYS if intent.startswith("day") else MONTHS
        named = [w for w in said if w in names]
        return bool(named) and named[0] == want[0]
    if intent == "capital":
        city = expected.rsplit(" is ", 1)[1]
        return f" {city} " in f" {' '.join(said)} "
    if intent == "yes_no":
        return said[0] == want[0]
    if intent == "greeting":
        return "hello" in said or "help" in said
    return "assistant" in said  # identity


def exact_match(expected: str, answer: str) -> bool:
    """The same words, ignoring case, punctuation and digits-vs-words."""
    return spoken_words(expected) == spoken_words(answer)


# ------------------------------------------------------------------------------------------ config
@dataclass
class DemoConfig:
    """What to build; every field can be set with --set key=value (YAML values)."""

    intents: list[str] = field(default_factory=lambda: list(INTENTS))  # a subset builds a smaller set
    variants: int = 2  # utterances (voices) per training (content, phrasing)
    min_per_intent: int = 240  # at least this many training questions per intent (small intents get more voices)
    test_pairs: float = 0.15  # share of add/subtract number pairs held out for the test split
    validation_pairs: float = 0.05  # ... and for the validation split
    test_per_intent: int = 30  # test questions per intent (at most; drawn from the held-out combinations)
    validation_per_intent: int = 6
    voices: list[str] = field(default_factory=lambda: [
        "en-us", "en-us+f3", "en-us+m3", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-gb+f2",
        "en-us+f4", "en-gb-scotland+m2"])
    rates: list[int] = field(default_factory=lambda: [140, 155, 170, 185, 200])
    pitches: list[int] = field(default_factory=lambda: [30, 40, 50, 60, 70])
    test_voices: list[str] = field(default_factory=lambda: ["en-gb-x-rp", "en-us-nyc", "en-gb"])
    test_rates: list[int] = field(default_factory=lambda: [150, 175])
    answer_voice: str = "en-us"
    answer_rate: int = 140  # slow and with 40 ms word gaps, the yardstick hears 89 of 93 answers right
    answer_word_gap: int = 4  # (espeak-ng -g, 10 ms units); 81 of 93 at 165 wpm without gaps
    noise_probability: float = 0.5  # light white noise on this share of questions
    noise_snr_db: list[float] = field(default_factory=lambda: [20.0, 35.0])
    codec_questions: float = 0.15  # share of training questions also in codec.jsonl
    sample_rate: int = 16000
    seed: int = 0
    jobs: int = 2

    def __post_init__(self) -> None:
        if self.variants < 1 or self.min_per_intent < 0 or self.test_per_intent < 1:
            raise ConfigError(f"variants={self.variants}, min_per_intent={self.min_per_intent}, "
                              f"test_per_intent={self.test_per_intent}", "use variants >= 1, test_per_intent >= 1")
        if not (0 < self.test_pairs < 0.5 and 0 <= self.validation_pairs < 0.5):
            raise ConfigError(f"test_pairs={self.test_pairs}, validation_pairs={self.validation_pairs}",
                              "hold out a share in (0, 0.5) of the number pairs")
        for name in ("voices", "rates", "pitches", "test_voices", "test_rates"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is empty", f"list at least one of {name}")
        unknown = sorted(set(self.intents) - set(INTENTS))
        if unknown or not self.intents:
            raise ConfigError(f"intents={self.intents}", f"name some of: {', '.join(INTENTS)}")
        if set(self.voices) & set(self.test_voices):
            raise ConfigError(f"voices and test_voices share {sorted(set(self.voices) & set(self.test_voices))}",
                              "keep the test voices out of training")


def load_demo_config(overrides: list[str] = ()) -> DemoConfig:
    """The defaults updated by "key=value" overrides (values parsed as YAML)."""
    return config_from(DemoConfig, {}, overrides, "demo config", "variants=3")


# ------------------------------------------------------------------------------------------ splits
@dataclass(frozen=True)
class Question:
    """One question text of the domain, with its split (decided before any audio)."""

    intent: str
    content: str
    phrasing: int
    text: str
    answer: str
    split: str


def questions(config: DemoConfig) -> list[Question]:
    """Every (content, phrasing) question with its split: test = held-out phrasing or held-out number pair
    (at most test_per_intent of them per intent, seeded); validation = held-out pairs in training phrasings,
    or (other intents) training combinations set aside; the rest is training."""
    rng = random.Random(config.seed)
    out: list[Question] = []
    for intent in config.intents:
        items, templates = contents(intent), PHRASINGS[intent]
        held_phrasing = len(templates) - 1
        held: dict[str, str] = {}
        if intent in ARITHMETIC:
            keys = [key for key, _, _ in items]
            rng.shuffle(keys)
            n_test, n_val = round(config.test_pairs * len(keys)), round(config.validation_pairs * len(keys))
            held = {k: "test" for k in keys[:n_test]} | {k: "validation" for k in keys[n_test:n_test + n_val]}
        test, validation, train = [], [], []
        for key, slots, answer in items:
            for p, template in enumerate(templates):
                q = (intent, key, p, template.format(**slots), answer)
                if held.get(key) == "test" or p == held_phrasing:
                    test.append(q)
                elif held.get(key) == "validation":
                    validation.append(q)
                else:
                    train.append(q)
        rng.shuffle(test)
        if intent in ARITHMETIC:  # unseen pairs first (any phrasing), then seen pairs in the unseen phrasing
            test.sort(key=lambda q: held.get(q[1]) != "test")
            half = config.test_per_intent // 2
            pairs_first = [q for q in test if held.get(q[1]) == "test"][:half]
            rest = [q for q in test if q not in pairs_first][: config.test_per_intent - len(pairs_first)]
            test = pairs_first + rest
        else:
            test = test[: config.test_per_intent]
            rng.shuffle(train)
            n_val = min(config.validation_per_intent, len(train) // 10)
            validation, train = train[:n_val], train[n_val:]
        rng.shuffle(validation)
        validation = validation[: config.validation_per_intent]
        for split, group in (("train", train), ("validation", validation), ("test", test)):
            out += [Question(*q, split=split) for q in group]
    return out


# ------------------------------------------------------------------------------------------ building
def build_demo(out_dir: str | Path, config: DemoConfig | None = None, *, progress: bool = True) -> Path:
    """Write the demo data set (see the module docstring) into `out_dir`; returns demo.json."""
    import shutil

    config = config or DemoConfig()
    for exe in ("espeak-ng", "sox"):
        if shutil.which(exe) is None:
            raise InputError(f"{exe} is not installed", f"install it (apt-get install {exe}) to build the demo data")
    out = Path(out_dir)
    rng = random.Random(config.seed + 7)
    qs = questions(config)
    per_intent: dict[tuple[str, str], int] = defaultdict(int)  # (intent, split) -> questions
    for q in qs:
        per_intent[(q.intent, q.split)] += 1
    jobs: list[Utterance] = []
    answers: dict[str, str] = {}  # answer text -> audio path (relative)
    meta: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": [], "codec": []}

    def answer_audio(text: str) -> str:
        if text not in answers:
            rel = f"audio/a/a{len(answers):04d}.wav"
            answers[text] = rel
            jobs.append(Utterance(out / rel, text, config.answer_voice, config.answer_rate, 50, None, None, 0,
                                  config.answer_word_gap))
        return answers[text]

    for n, q in enumerate(qs):
        test = q.split == "test"
        if q.split == "train":  # small intents get more voices
            variants = max(config.variants, -(-config.min_per_intent // per_intent[(q.intent, "train")]))
        elif test:  # up to 3 held-out voices each, until the intent has test_per_intent questions
            variants = min(3, -(-config.test_per_intent // per_intent[(q.intent, "test")]))
        else:
            variants = 1
        for v in range(variants):
            key = f"q{n:05d}-{v}"
            voice = rng.choice(config.test_voices if test else config.voices)
            rate = rng.choice(config.test_rates if test else config.rates)
            pitch = rng.choice(config.pitches)
            snr = rng.uniform(*config.noise_snr_db) if rng.random() < config.noise_probability else None
            rel = f"audio/q/{key}.wav"
            jobs.append(Utterance(out / rel, q.text, voice, rate, pitch, None, snr, rng.randrange(2**31)))
            meta[key] = {"intent": q.intent, "split": q.split, "question": q.text, "answer": q.answer,
                         "content": q.content, "phrasing": q.phrasing, "voice": voice, "rate": rate, "pitch": pitch,
                         "snr_db": snr}
            lines = [{"id": f"{key}-A1T1", "task": "A1T1", "question_audio": rel, "answer_text": q.text},
                     {"id": f"{key}-A1T2", "task": "A1T2", "question_audio": rel, "answer_text": q.answer}]
            if not test:  # the test split's answers are never spoken to the model
                lines.append({"id": f"{key}-A1A2", "task": "A1A2", "question_audio": rel, "answer_text": q.answer,
                              "answer_audio": answer_audio(q.answer)})
            else:
                lines.append({"id": f"{key}-A1A2", "task": "A1A2", "question_audio": rel, "answer_text": q.answer})
            if v == 0 and not test:
                lines.append({"id": f"{key}-T1T2", "task": "T1T2", "question_text": q.text, "answer_text": q.answer})
            rows[q.split] += lines
            if q.split == "train" and rng.random() < config.codec_questions:
                rows["codec"].append({"id": f"{key}-codec", "task": "T1A2", "question_text": q.text,
                                      "answer_text": q.text, "answer_audio": rel})
    for split in ("train", "validation"):  # TTS (T1A2): each answer of the split once, in the answer voice
        texts = dict.fromkeys(q.answer for q in qs if q.split == split)
        rows[split] += [{"id": f"tts-{split}-{i:04d}", "task": "T1A2", "question_text": t, "answer_text": t,
                         "answer_audio": answers[t]} for i, t in enumerate(texts) if t in answers]
    rows["codec"] += [{"id": f"tts-codec-{i:04d}", "task": "T1A2", "question_text": t, "answer_text": t,
                       "answer_audio": rel} for i, (t, rel) in enumerate(answers.items())
                      if any(q.answer == t and q.split == "train" for q in qs)]
    for row in rows["test"]:  # test A1A2 lines keep a reference answer audio only if one exists (never trained)
        if row["task"] == "A1A2":
            row["answer_audio"] = answer_audio(row["answer_text"])

    render_all(jobs, RenderConfig(config.jobs, config.sample_rate), progress)
    for name, lines in rows.items():
        write_atomic(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    summary = {"config": asdict(config), "intents": list(config.intents),
               "examples": {name: len(lines) for name, lines in rows.items()}, "questions": meta}
    path = out / "demo.json"
    write_atomic(path, json.dumps(summary, indent=1) + "\n")
    return path


@dataclass(frozen=True)
class RenderConfig:
    """The two CorpusConfig fields training/corpus.py's renderer reads."""

    jobs: int
    sample_rate: int | None


# ------------------------------------------------------------------------------------------ evaluation
def question_key(example_id: str) -> str:
    """'q00012-1-A1T2' -> 'q00012-1' (the key of demo.json's questions)."""
    return example_id.rsplit("-", 1)[0]


def answer_question(model, task: str, features, info: dict[str, Any], *, codec=None, transcriber=None,
                    max_steps: int = 160, strategy: str | None = None) -> dict[str, Any]:
    """One greedy answer of `model` to one question (`features`: its encoder features (T, F); `info`: its
    demo.json entry), scored: {"task", "intent", "expected", "text", "correct", "exact"}, plus "transcript" (the
    yardstick's, of the spoken answer decoded by `codec`) for A1A2. A1T1 (the model's own ASR) expects the
    question and counts only exact transcripts as correct. `strategy` decodes A1A2 (None: the model's own;
    batch-parallel: the text of an A1T2 row drives the audio row); the other tasks always decode with text-delay."""
    import torch

    from omnivox.core.kernel.generation import generate
    from omnivox.core.kernel.sampling import SamplingConfig

    with torch.no_grad():
        result = generate(model, task=task, audio_features=features, sampling=SamplingConfig(temperature=0.0),
                          max_steps=max_steps, strategy=strategy if task == "A1A2" else "text-delay")
    text = model.tokenizer.decode(result.text_ids)
    expected = info["question"] if task == "A1T1" else info["answer"]
    row = {"task": task, "intent": info["intent"], "expected": expected, "text": text,
           "exact": exact_match(expected, text)}
    if task == "A1T1":
        row["correct"] = row["exact"]
    elif task == "A1A2":
        heard = row["transcript"] = hear(result.frames, codec, transcriber)
        row["correct"] = score_answer(info["intent"], info["answer"], heard)
    else:
        row["correct"] = score_answer(info["intent"], info["answer"], text)
    return row


def hear(frames, codec, transcriber) -> str:
    """The yardstick's transcript of generated codec `frames` (N, slots) spoken by `codec`; "" for no frame."""
    if not frames.shape[0]:
        return ""
    pcm = codec.decode(frames)
    return transcriber.transcribe(pcm.numpy() if hasattr(pcm, "numpy") else pcm, codec.grid.sample_rate)


def summarise(details: list[dict[str, Any]], log=print) -> dict[str, Any]:
    """Rows of `answer_question` -> {"per_intent": {task: {intent: share correct}}, "overall": {task: {"correct",
    "exact_text", "n"[, "wer"]}}, "details": rows}; logs a line per task and intent."""
    from omnivox.plugins.fw_transcriber import word_error_rate

    by_task: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in details:
        by_task[row["task"]][row["intent"]].append(row)
    report: dict[str, Any] = {"per_intent": {}, "overall": {}, "details": details}
    for task, by_intent in by_task.items():
        every = [r for rows in by_intent.values() for r in rows]
        report["per_intent"][task] = {i: sum(r["correct"] for r in v) / len(v) for i, v in sorted(by_intent.items())}
        report["overall"][task] = {"correct": sum(r["correct"] for r in every) / len(every),
                                   "exact_text": sum(r["exact"] for r in every) / len(every), "n": len(every)}
        if task == "A1T1":
            report["overall"][task]["wer"] = word_error_rate([r["expected"] for r in every], [r["text"] for r in every])
        log(f"{task}: {report['overall'][task]}")
        for intent, acc in report["per_intent"][task].items():
            log(f"  {intent:13s} {acc:.2f} ({len(by_intent[intent])})")
    return report


def evaluate(export: str | Path, manifest: str | Path, *, tasks: tuple[str, ...] = ("A1T2", "A1A2"),
             limit: int | None = None, transcriber=None, codec_dir: str | Path | None = None,
             strategy: str | None = None, log=print) -> dict[str, Any]:
    """Run the export on a prepared test manifest (beside its demo.json): per intent, the share of text
    answers (A1T2) and of spoken answers (A1A2, transcribed by the ASR yardstick) that `score_answer`
    accepts, plus exact text matches; A1T1 (the model's own ASR): exact transcripts and WER. `limit`: at most
    this many questions per intent. Greedy decoding."""
    import torch

    from omnivox.core.contracts.manager import create
    from omnivox.core.kernel.checkpoint import OmniModel
    from omnivox.training.data import read_manifest

    manifest = Path(manifest)
    demo = manifest.parent / "demo.json"
    if not demo.is_file():
        raise InputError(f"{demo} not found", "evaluate a prepared manifest inside a demo data folder")
    meta = json.loads(demo.read_text(encoding="utf-8"))["questions"]
    model = OmniModel.from_pretrained(export, dtype=torch.float32)  # a shipped fp16 copy runs in fp32, as chat runs it
    model.lm.eval()
    codec = None
    if "A1A2" in tasks:
        codec = create("codecs", "mel", model=str(codec_dir or export_codec_dir(Path(export))))
        if transcriber is None:
            from omnivox.plugins.fw_transcriber import Transcriber

            transcriber = Transcriber()
    taken: dict[tuple[str, str], int] = defaultdict(int)
    details = []
    for ex in read_manifest(manifest, tasks=list(tasks)):
        info = meta[question_key(ex.id)]
        if limit is not None and taken[(ex.task, info["intent"])] >= limit:
            continue
        taken[(ex.task, info["intent"])] += 1
        details.append({"id": ex.id} | answer_question(model, ex.task, ex.features(), info, codec=codec,
                                                       transcriber=transcriber, strategy=strategy))
    return summarise(details, log)


def export_codec_dir(export: Path) -> Path:
    """The mel codec an export was trained with (the trainer copies it into the export)."""
    for candidate in sorted(export.iterdir()):
        if candidate.is_dir() and (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    raise InputError(f"{export} holds no codec directory", "pass codec_dir= (the codec recipe's export)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnivox.training.demo_domain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the demo data set")
    build.add_argument("out_dir")
    build.add_argument("--set", action="append", default=[], metavar="key=value")
    ev = sub.add_parser("evaluate", help="score an export on a prepared test manifest")
    ev.add_argument("export")
    ev.add_argument("manifest")
    ev.add_argument("--tasks", default="A1T2,A1A2")
    ev.add_argument("--limit", type=int)
    ev.add_argument("--codec")
    ev.add_argument("--strategy", help="A1A2 decoding: text-delay or batch-parallel (default: the model's own)")
    ev.add_argument("--json", help="write the report (with every answer) here")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_demo(args.out_dir, load_demo_config(args.set)))
        return 0
    report = evaluate(args.export, args.manifest, tasks=tuple(args.tasks.split(",")), limit=args.limit,
                      codec_dir=args.codec, strategy=args.strategy)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
