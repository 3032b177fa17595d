"""Microphone assistant benchmark: per-turn latency, end of the user's speech -> first answer sample handed to
the speaker, over N spoken questions, through real PortAudio devices (the virtual ones of tests/virtual_audio.py:
ALSA file plugin + a private PulseAudio, real-time paced) and the tiny random model.

    python benchmarks/bench_listen.py [--turns 10] [--gap 9] [--max-steps 16] [--checkpoint demo] [--turn-end off]
                                      [--speculate off]

`omnivox listen --trace` records, per turn, where the latency goes:
  vad       end of speech -> end of turn decided (the end-of-turn detector's wait and compute, --turn-end; or
            the silence rule's --silence-ms with --turn-end off)
  model     -> first codec frame (Whisper encoder, LM prefill, decode steps up to the first complete frame)
  codec     -> first AudioOut (streaming SNAC decode of the first frames)
  playback  -> first sample handed to the device (the speaker's jitter buffer)
Reports p50/p90 of each and each part's share of the median total (shares of the same run, so they do not
depend on the machine's speed). Needs libportaudio2, libasound2-plugins and pulseaudio (make install).

First, what the full-duplex echo gate buys (no devices; tests/echo_scenes.py): espeak-ng "answers" heard back
by the microphone after 50 / 250 ms at -6 / -12 dB, with and without the user talking over them; counts the
scenes where the echo alone barged in (false), and where the first barge-in was the user's voice, gate off vs on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from echo_scenes import MIC_RATE, SPEAKER_RATE, espeak, make_vad, run_scene  # noqa: E402
from virtual_audio import DEVICE_RATE, VirtualAudio, available  # noqa: E402

from omnivox.core import audio  # noqa: E402
from omnivox.plugins.audio_files import read_audio  # noqa: E402

QUESTIONS = ["What is the capital of France?", "How far away is the moon?", "Tell me a joke.",
             "What time is it?", "Why is the sky blue?"]
# the default model's domain, in its held-out phrasings (training/demo_domain.py PHRASINGS: the last of each intent)
DEMO_QUESTIONS = ["What is the day after friday?", "Do you know the capital of spain?",
                  "What is the month before june?", "Is it true that snow is white?", "Please tell me who you are.",
                  "Can you tell me what five plus three is?", "Please tell me which day comes before sunday?",
                  "Hi there."]
PARTS = ("vad_ms", "model_ms", "codec_ms", "playback_ms")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


ANSWERS = ["The capital of France is Paris, a city on the river Seine.", "The moon is about three hundred and "
           "eighty thousand kilometres away.", "Here is one: why did the chicken cross the road?",
           "It is a quarter past ten in the morning.", "Sunlight scatters off the air, and blue scatters most."]


def echo_gate_figures() -> None:
    user = espeak("Wait, stop, tell me about Berlin instead.", MIC_RATE, voice="en+f3")
    scenes = [(espeak(text, SPEAKER_RATE), delay, level) for text in ANSWERS for delay in (0.05, 0.25)
              for level in (-6.0, -12.0)]
    print(f"echo gate, {len(scenes)} scenes per row (5 answers x delay 50/250 ms x echo -6/-12 dB):")
    for gate in (False, True):
        false = sum(bool(run_scene(make_vad(gate), a, delay_s=d, echo_db=g)["barge_ins"]) for a, d, g in scenes)
        right = sum(run_scene(make_vad(gate), a, delay_s=d, echo_db=g, user=user, user_at_s=1.0)["barge_ins"][:1]
                    >= [1.0] for a, d, g in scenes)
        print(f"  gate {'on ' if gate else 'off'}: echo alone barged in {false}/{len(scenes)}; with the user talking "
              f"over it from 1 s, the first barge-in was the user's voice in {right}/{len(scenes)}")


def listen_turns(checkpoint: str, turns: int, gap: float, max_steps: int, turn_end: str = "default",
                 jitter_ms: int | None = None, speculate: str | None = None) -> tuple[list[dict], dict]:
    """`omnivox listen --trace` through the virtual devices, asked `turns` questions each followed by `gap` s of
    silence: its answered turns (latency_ms and PARTS) and its summary."""
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        speech = []
        for i in range(turns):
            wav = folder / f"q{i}.wav"
            asked = DEMO_QUESTIONS if checkpoint == "demo" else QUESTIONS
            subprocess.run(["espeak-ng", "-w", str(wav), asked[i % len(asked)]], check=True)
            pcm, rate = read_audio(wav)
            speech += [audio.resample(pcm[0], rate, DEVICE_RATE), np.zeros(int(gap * DEVICE_RATE), np.float32)]
        mono = np.concatenate([np.zeros(DEVICE_RATE // 2, np.float32), *speech])
        trace = folder / "trace.jsonl"
        with VirtualAudio(folder / "va") as va:
            va.set_microphone(np.stack([mono, mono]))
            run = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "listen", "--checkpoint", checkpoint,
                                  "--max-turns", str(turns), "--max-steps", str(max_steps),
                                  "--turn-end", turn_end, "--trace", str(trace),
                                  *(["--jitter-ms", str(jitter_ms)] if jitter_ms is not None else []),
                                  *(["--speculate", str(speculate)] if speculate is not None else [])],
                                 env=va.env, capture_output=True, text=True,
                                 timeout=60 + len(mono) / DEVICE_RATE * 3)
        if run.returncode != 0:
            raise RuntimeError(f"omnivox listen failed:\n{run.stderr}")
        lines = [json.loads(line) for line in trace.read_text().splitlines()]
    answered = [t for t in lines if "turn" in t and t["latency_ms"] is not None]
    return answered, next(t["summary"] for t in lines if "summary" in t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--gap", type=float, default=9.0, help="seconds of silence after each question (half "
                        "duplex: the next question must come after the answer has played)")
    parser.add_argument("--max-steps", type=int, default=16, help="answer length in LM steps")
    parser.add_argument("--skip-echo", action="store_true", help="skip the echo-gate figures")
    parser.add_argument("--checkpoint", default="random", help="the model: random (tiny, default) or demo (the "
                        "shipped default model, asked DEMO_QUESTIONS: its domain, held-out phrasings) or a folder")
    parser.add_argument("--turn-end", default="default", help="listen's end-of-turn detector: default or off "
                        "(the silence rule alone; docs/turn_taking.md)")
    parser.add_argument("--jitter-ms", type=int, default=None, help="listen's --jitter-ms (default: listen's)")
    parser.add_argument("--speculate", default=None, metavar="P|off", help="listen's --speculate (default: "
                        "listen's, a guess at each pause's first ask; the vad part is then the guess, the wait for "
                        "the decision counts in the model's; off: answers start at the decision)")
    args = parser.parse_args()
    if not args.skip_echo:
        echo_gate_figures()
    if available() is not None:
        print(f"bench_listen: {available()}", file=sys.stderr)
        return 2
    try:
        turns, summary = listen_turns(args.checkpoint, args.turns, args.gap, args.max_steps, args.turn_end,
                                      args.jitter_ms, args.speculate)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{len(turns)} answered turns of {args.turns} (half duplex, model {args.checkpoint}, max {args.max_steps} "
          f"steps, end-of-turn detector {args.turn_end}, speculate {args.speculate or 'as listen'})"
          f"; speaker underruns {summary['speaker_underruns']}, mic blocks dropped {summary['mic_blocks_dropped']}")
    total = [t["latency_ms"] for t in turns]
    median = statistics.median(total)
    print(f"{'part':<10} {'p50 ms':>8} {'p90 ms':>8} {'share of p50 total':>20}")
    print(f"{'total':<10} {median:8.0f} {percentile(total, 90):8.0f} {'100%':>20}")
    for part in PARTS:
        values = [t[part] for t in turns]
        print(f"{part[:-3]:<10} {statistics.median(values):8.0f} {percentile(values, 90):8.0f} "
              f"{statistics.median(values) / median:>19.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
