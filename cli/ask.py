"""`omnivox ask`: questions to an `omnivox serve` worker through the broker, as a device would ask them (uses the
omnivox.mqtt client): streamed text on stdout with one `action NAME {json}` line per action the worker sends, the
spoken answer to --output. Several --input/--text are asked in order in one session: one conversation.
--context sets the session's context (docs/conversations.md). Like every
device of that client it connects with an MQTT last will, so if it is killed the worker frees its session at once."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from omnivox.core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask an `omnivox serve` worker over MQTT (a device's view)",
                       description="Send questions (audio files or text) over the broker and stream the answers: "
                                   "their text on stdout, with a line `action NAME {json}` per action the model asks "
                                   "for. Several --input/--text are asked in the order given, in one session (one "
                                   "conversation).")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--site", default="cli", help="this device's site id (default cli)")
    p.add_argument("--input", metavar="AUDIO", dest="questions", action=_Question, default=[],
                   help="a question as an audio file (WAV, FLAC, ...); repeatable")
    p.add_argument("--text", dest="questions", action=_Question,
                   help="a question as text (the worker answers with T1A2); repeatable")
    p.add_argument("--output", metavar="AUDIO", action="append", default=[],
                   help="where to write the spoken answer (default: not written); once per question, in order")
    p.add_argument("--text-out", metavar="FILE", action="append", default=[],
                   help="also write the text answer to FILE; once per question, in order")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a worker to come online")
    p.add_argument("--context", metavar="TEXT",
                   help="the session's context text, seen by the answer (e.g. 'battery forty percent, in the "
                        "kitchen'; docs/conversations.md)")
    p.add_argument("--quiet", action="store_true",
                   help="no live text (the `action NAME {json}` lines on stdout stay)")
    auth = p.add_argument_group("authentication and TLS")
    auth.add_argument("--username")
    auth.add_argument("--password", help="or set OMNIVOX_MQTT_PASSWORD")
    auth.add_argument("--tls-ca", metavar="PEM")
    auth.add_argument("--tls-cert", metavar="PEM")
    auth.add_argument("--tls-key", metavar="PEM")
    p.set_defaults(func=ask)


class _Question(argparse.Action):
    """--input and --text append ("audio" | "text", value) to one list, so the questions keep their order."""

    def __call__(self, parser, namespace, value, option_string=None):
        kind = "audio" if option_string == "--input" else "text"
        namespace.questions = [*(getattr(namespace, "questions", None) or []), (kind, value)]


def ask(args: argparse.Namespace) -> int:
    if not args.questions:
        raise InputError("no question given", "pass --input QUESTION.wav or --text 'a question' (repeatable)")
    for kind, value in args.questions:
        if kind == "audio" and not Path(value).is_file():
            raise InputError(f"input file {value} does not exist", "record or synthesise a question first")
    for name, paths in (("--output", args.output), ("--text-out", args.text_out)):
        if len(paths) > len(args.questions):
            raise InputError(f"{len(paths)} {name} for {len(args.questions)} question(s)",
                             f"give at most one {name} per question, in the order of the questions")
        for path in paths:
            if not Path(path).expanduser().resolve().parent.is_dir():
                raise InputError(f"cannot write {path}: its folder does not exist", "create it first")
    answers = asyncio.run(_ask(args))
    status = 0
    for i, answer in enumerate(answers):
        status = max(status, _report(answer, args.output[i] if i < len(args.output) else None,
                                     args.text_out[i] if i < len(args.text_out) else None))
    return status


def _report(answer, output: str | None, text_out: str | None) -> int:
    """Write one answer's files and print its summary (stderr); 1 when it failed or asked speech came silent."""
    for error in answer.errors:
        print(f"omnivox ask: error {error.get('code')}: {error.get('message')}", file=sys.stderr)
        if error.get("fix"):
            print(f"  fix: {error['fix']}", file=sys.stderr)
    if text_out:
        Path(text_out).write_text(answer.text + "\n", encoding="utf-8")
    silent = bool(output) and answer.reason == "done" and not answer.audio  # asked for speech, got none
    if output and answer.audio and answer.rate is not None:
        answer.write_wav(output)
        print(f"wrote {output}", file=sys.stderr)
    metrics = answer.metrics or {}
    print(f"turn {answer.reason}: worker {answer.worker}, first audio "
          f"{'-' if answer.first_audio_s is None else f'{answer.first_audio_s * 1000:.0f} ms'} after sending, "
          f"{metrics.get('audio_s', 0.0):.2f} s of speech", file=sys.stderr)
    if silent:
        print(f"omnivox ask: no speech: the answer ended after {len(answer.text)} characters of text with 0 s of "
              f"audio; nothing was written to {output}", file=sys.stderr)
        print("  try: a spoken question (--input QUESTION.wav), or a worker with a larger --max-steps (omnivox "
              "serve --max-steps N)", file=sys.stderr)
        return 1
    return 0 if answer.ok else 1


async def _ask(args: argparse.Namespace) -> list:
    """The answers to args.questions, asked one after another in one session."""
    from omnivox.mqtt import Client

    password = args.password or os.environ.get("OMNIVOX_MQTT_PASSWORD")
    async with Client(args.broker, site=args.site, username=args.username, password=password,
                      ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key) as client:
        await client.wait_for_worker(args.wait)
        session = await client.session(context=args.context)
        answers = []
        for kind, value in args.questions:
            if kind == "text":
                turn = await session.send_text(value)
            else:
                from omnivox.plugins.mqtt.client import read_wav_pcm

                pcm, rate, width, channels = read_wav_pcm(value)
                turn = await session.start_turn(rate, width, channels)
                step = rate // 10 * width * channels  # 100 ms chunks
                for start in range(0, len(pcm), step):
                    await turn.send(pcm[start:start + step])
                await turn.stop()
            printer = asyncio.create_task(_print_live(turn, sys.stdout, quiet=args.quiet))
            answers.append(await turn.result(args.timeout))
            await printer
            if not answers[-1].ok:
                break
        await session.close()
        return answers


async def _print_live(turn, out, quiet: bool = False, err=None) -> None:
    """The streamed text as it arrives (none when `quiet`), made terminal-safe as `omnivox chat` does
    (chat.displayable); each action as a line `action NAME {json arguments}` on `out`, each action warning on
    `err` (default stderr)."""
    from omnivox.cli.chat import action_line, displayable

    err = sys.stderr if err is None else err
    held: list[int] = []  # ids whose text the service's detokenizer still holds back
    midline = False  # text written since the last newline
    async for reply in turn:
        if reply.event == "transcript-chunk" and not quiet:
            held.append(reply.data.get("token", -1))
            text = reply.data.get("text", "")
            if text:
                shown = displayable(text, held)
                out.write(shown)
                out.flush()
                midline = not shown.endswith("\n")
                held.clear()
        elif reply.event == "action":
            out.write(("\n" if midline else "") + action_line(reply.data.get("name", ""),
                                                               reply.data.get("arguments", {})) + "\n")
            out.flush()
            midline = False
        elif reply.event == "action-warning":
            message = displayable(str(reply.data.get("message", "")), [])
            print(f"omnivox ask: warning: action dropped ({reply.data.get('code')}): {message}", file=err)
    if not quiet:
        out.write("\n")
