"""`omnivox chat`: the main job. A spoken (or typed) question in, streaming speech and text out, through
the full event-bus pipeline: input -> encoder -> LM + strategy -> codec -> audio file, text printed live."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import unicodedata
from pathlib import Path

from omnivox.cli import model_options
from omnivox.cli.report import report_stage_errors
from omnivox.core.errors import ConfigError, InputError
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS, AUDIO_OUT_TASKS, TASKS
from omnivox.core.runtime.events import Action, ActionWarning, Event, TextToken, TurnEnd
from omnivox.core.runtime.stage import Stage


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="ask by voice or text; get streaming speech and text back",
                       description="Run the streaming pipeline on one question: writes the spoken answer and "
                                   "prints the text answer as it is generated.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="AUDIO", help="question as an audio file (WAV, FLAC, ...)")
    source.add_argument("--text", help="question as text (tasks T1A2 / T1T2)")
    p.add_argument("--output", default="answer.wav", metavar="AUDIO", help="where to write the spoken answer")
    p.add_argument("--text-out", metavar="FILE", help="also write the text answer to FILE")
    p.add_argument("--context", metavar="TEXT", help="context text the answer sees (a robot's state, e.g. "
                                                     "'battery: 40%%, location: kitchen'; docs/conversations.md)")
    model_options.add_model_options(p)
    p.add_argument("--strategy", help="decoding strategy (see `omnivox plugins`; default: the model's own, "
                   "its config's `decoding`, else text-delay)")
    p.add_argument("--task", choices=TASKS, help="default: A1A2 for audio input, T1A2 for text input")
    p.add_argument("--max-steps", type=int, help="answer length bound in LM steps (default 600; random 96)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (upstream's top_k=1)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--int8", action="store_true",
                   help="int8 dynamic quantisation of the LM (CPU; ~3x faster decode, tokens may differ)")
    p.add_argument("--quiet", action="store_true", help="no live text, no metrics")
    p.set_defaults(answers=True, func=chat)


class TranscriptPrinter(Stage):
    """Prints each turn's text tokens as they arrive and passes them on; each action the model asks for as a line
    `action NAME {json arguments}`, each dropped one as a warning on stderr. Keeps each turn's text twice: `texts`
    as decoded, `shown` as printed (see `displayable`: no control characters, ids for undecodable bytes), and its
    `actions` (name, arguments)."""

    consumes = (TextToken, TurnEnd, Action, ActionWarning)

    def __init__(self, out=sys.stdout, name: str = "transcript"):
        super().__init__(name)
        self.out, self.texts, self.shown, self.actions = out, {}, {}, {}
        self.pending: dict[tuple[str, int], list[int]] = {}  # ids whose text the tokenizer still holds back

    async def process(self, event: Event):
        key = event.turn
        if isinstance(event, Action):
            self.actions.setdefault(key, []).append((event.name, dict(event.arguments)))
            if self.out is not None:  # a line of its own; not part of the text (`shown`, --text-out)
                midline = self.shown.get(key, "\n")[-1:] != "\n"
                self.out.write(("\n" if midline else "") + action_line(event.name, event.arguments) + "\n")
                self.out.flush()
            yield event
        elif isinstance(event, ActionWarning):
            print(f"warning: action dropped ({event.code}): {displayable(event.message, [])}", file=sys.stderr)
            yield event
        elif isinstance(event, TextToken):
            self.texts[key] = self.texts.get(key, "") + event.text
            ids = self.pending.setdefault(key, [])
            ids.append(event.token_id)
            if event.text:
                self._show(key, displayable(event.text, ids))
                ids.clear()
            yield event
        else:
            held = self.pending.pop(key, [])
            self._show(key, _ids(held) if held else "")  # a turn ending inside a character: its bytes' ids
            if self.out is not None:
                self.out.write("\n")

    def _show(self, key: tuple[str, int], text: str) -> None:
        self.shown[key] = self.shown.get(key, "") + text
        if self.out is not None and text:
            encoding = getattr(self.out, "encoding", None) or "utf-8"
            self.out.write(text.encode(encoding, "backslashreplace").decode(encoding))
            self.out.flush()


def action_line(name: str, arguments) -> str:
    """How the CLI shows an action the model asks for: `action NAME {json arguments}`, terminal-safe."""
    return f"action {displayable(str(name), [])} {json.dumps(dict(arguments))}"


def displayable(text: str, ids: list[int]) -> str:
    """`text` (decoded from the token `ids`) made safe for a terminal or a text file: control and other
    unprintable characters (C0 but newline, DEL, C1, format, separators) become `\\xNN` / `\\uNNNN` escapes;
    text with an undecodable byte sequence (U+FFFD) is shown as the ids it came from, `<ids 12 34>`."""
    if "\ufffd" in text:
        return _ids(ids)
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in text)


def _unsafe(ch: str) -> bool:
    """Control (Cc: C0, DEL, C1), format (Cf, e.g. bidi overrides), surrogate, private-use, unassigned, and
    line/paragraph separators; newline is the one control character a transcript keeps."""
    category = unicodedata.category(ch)
    return ch != "\n" and (category[0] == "C" or category in ("Zl", "Zp"))


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _ids(ids: list[int]) -> str:
    return "<ids " + " ".join(map(str, ids)) + ">"


def build_pipeline(args: argparse.Namespace, say=print):
    """The chat pipeline's stages (returned as a Pipeline) and the printer; validates inputs first."""
    from omnivox.core.runtime.speech_pipeline import speech_pipeline
    from omnivox.plugins.audio_files import FileAudioInput, FileAudioOutput
    from omnivox.plugins.text_input import TextInput

    task = args.task or ("A1A2" if args.input else "T1A2")
    if args.input and task not in AUDIO_IN_TASKS:
        raise InputError(f"task {task} takes text, but --input gave audio", "use --text, or an audio task")
    if args.text is not None and task in AUDIO_IN_TASKS:
        raise InputError(f"task {task} takes audio, but --text gave text", "use --input, or T1A2 / T1T2")
    if args.input and not Path(args.input).is_file():
        raise InputError(f"input file {args.input} does not exist", "record or synthesise a question first")
    speech_out = task in AUDIO_OUT_TASKS
    if speech_out and not Path(args.output).expanduser().resolve().parent.is_dir():
        raise InputError(f"cannot write {args.output}: its folder does not exist", "create it first")

    kit = model_options.load_kit(args, hear=bool(args.input), speak=speech_out, say=say)
    model, encoder, codec, max_steps = kit.model, kit.encoder, kit.codec, args.max_steps or kit.max_steps

    printer = TranscriptPrinter(None if args.quiet else sys.stdout)
    pipeline = speech_pipeline(
        [FileAudioInput(args.input) if args.input else TextInput(args.text)], model=model, encoder=encoder,
        codec=codec, sinks=[FileAudioOutput(str(args.output))] if codec is not None else [],
        lm=dict(strategy=args.strategy, task=task, max_steps=max_steps, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, int8=args.int8, context=args.context),
        after_lm=[printer])  # right after the LM: text shows without waiting for the vocoder
    return pipeline, printer, task


def chat(args: argparse.Namespace) -> int:
    from omnivox.core.runtime.metrics import format_summary

    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {args.max_steps}", "pass a positive number of steps")
    pipeline, printer, task = build_pipeline(args, say=lambda line: print(line, file=sys.stderr))
    turns = asyncio.run(pipeline.run())
    if report_stage_errors("chat", pipeline.errors):
        return 1
    text = next(iter(printer.shown.values()), "")
    if args.text_out:
        Path(args.text_out).write_text(text + "\n", encoding="utf-8")
    # a turn that should speak but ended with no audio (one the user interrupted may be silent)
    silent = [m for m in turns if m.reason != "interrupted" and m.audio_s == 0] if task in AUDIO_OUT_TASKS else []
    if task in AUDIO_OUT_TASKS and not silent:
        print(f"wrote {args.output}", file=sys.stderr)
    if not args.quiet:
        print(format_summary(turns), file=sys.stderr)
    for m in silent:
        print(f"omnivox chat: no speech: the answer ended after {m.text_tokens} text tokens with 0 s of audio (the "
              "model stopped, or reached --max-steps, before its first complete audio frame); nothing was written "
              f"to {args.output}", file=sys.stderr)
        print("  try: a larger --max-steps, a spoken question (--input QUESTION.wav), or --task T1T2 for a text "
              "answer", file=sys.stderr)
    return 1 if silent else 0
