"""A small spoken question -> answer set made with espeak-ng, so every recipe can be smoke-run anywhere.

Pairs are sums of two digits ("what is three plus four" -> "three plus four is seven"), drawn with a seeded
generator; each pair gives four manifest lines (tasks A1T1, T1A2, A1T2, A1A2) over two WAV files. The same
arguments give byte-identical files (espeak-ng is deterministic for a fixed voice and speed)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

from omnivox.core.errors import ConfigError, InputError
from omnivox.core.progress import bar

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
MANIFEST = "manifest.jsonl"


def qa_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct (question, answer) texts (at most 100: the digit pairs)."""
    if not 1 <= n <= 100:
        raise ConfigError(f"--pairs {n} is out of range", "ask for 1..100 pairs")
    pool = [(a, b) for a in range(10) for b in range(10)]
    random.Random(seed).shuffle(pool)
    return [(f"what is {WORDS[a]} plus {WORDS[b]}", f"{WORDS[a]} plus {WORDS[b]} is {WORDS[a + b]}")
            for a, b in pool[:n]]


def speak(text: str, path: Path, voice: str = "en-us", speed: int = 175) -> Path:
    """espeak-ng `text` into the WAV file `path` (22.05 kHz mono)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise InputError("espeak-ng is not installed", "install it (apt-get install espeak-ng) to make synthetic data")
    result = subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(path), text],
                            capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise InputError(f"espeak-ng failed for {text!r}: {result.stderr.strip()[:200]}", "check the voice name")
    return path


def build_synthetic(out_dir: str | Path, pairs: int = 12, seed: int = 0, voice: str = "en-us",
                    speed: int = 175, progress: bool = True) -> Path:
    """Write OUT/audio/*.wav and OUT/manifest.jsonl; returns the manifest path. `progress`: a bar (pairs
    spoken) on stderr when it is a terminal."""
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    spoken = bar(qa_pairs(pairs, seed), desc="synth-data", unit="pair", enabled=progress, leave=False)
    for k, (question, answer) in enumerate(spoken):
        q_wav = speak(question, out / "audio" / f"q{k:03d}.wav", voice, speed)
        a_wav = speak(answer, out / "audio" / f"a{k:03d}.wav", voice, speed)
        q_rel, a_rel = str(q_wav.relative_to(out)), str(a_wav.relative_to(out))
        rows += [
            {"id": f"{k:03d}-asr", "task": "A1T1", "question_audio": q_rel, "answer_text": question},
            {"id": f"{k:03d}-tts", "task": "T1A2", "question_text": answer, "answer_text": answer,
             "answer_audio": a_rel},
            {"id": f"{k:03d}-qa-text", "task": "A1T2", "question_audio": q_rel, "answer_text": answer},
            {"id": f"{k:03d}-qa-speech", "task": "A1A2", "question_audio": q_rel, "answer_text": answer,
             "answer_audio": a_rel},
        ]
    manifest = out / MANIFEST
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(manifest)
    return manifest
