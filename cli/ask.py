"""`omnivox ask`: one question to an `omnivox serve` worker through the broker, as a device would ask it
(uses the omnivox.mqtt client): streamed text on stdout, the spoken answer to --output. Like every device of
that client it connects with an MQTT last will, so if it is killed the worker frees its session at once."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from omnivox.core.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask an `omnivox serve` worker over MQTT (a device's view)",
                       description="Send one question (audio file or text) over the broker and stream the answer.")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--site", default="cli", help="this device's site id (default cli)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="AUDIO", help="question as an audio file (WAV, FLAC, ...)")
    source.add_argument("--text", help="question as text (the worker answers with T1A2)")
    p.add_argument("--output", metavar="AUDIO", help="where to write the spoken answer (default: not written)")
    p.add_argument("--text-out", metavar="FILE", help="also write the text answer to FILE")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a worker to come online")
    p.add_argument("--quiet", action="store_true", help="no live text")
    auth = p.add_argument_group("authentication and TLS")
    auth.add_argument("--username")
    auth.add_argument("--password", help="or set OMNIVOX_MQTT_PASSWORD")
    auth.add_argument("--tls-ca", metavar="PEM")
    auth.add_argument("--tls-cert", metavar="PEM")
    auth.add_argument("--tls-key", metavar="PEM")
    p.set_defaults(func=ask)


def ask(args: argparse.Namespace) -> int:
    if args.input and not Path(args.input).is_file():
        raise InputError(f"input file {args.input} does not exist", "record or synthesise a question first")
    if args.output and not Path(args.output).expanduser().resolve().parent.is_dir():
        raise InputError(f"cannot write {args.output}: its folder does not exist", "create it first")
    answer = asyncio.run(_ask(args))
    for error in answer.errors:
        print(f"omnivox ask: error {error.get('code')}: {error.get('message')}", file=sys.stderr)
        if error.get("fix"):
            print(f"  fix: {error['fix']}", file=sys.stderr)
    if args.text_out:
        Path(args.text_out).write_text(answer.text + "\n", encoding="utf-8")
    silent = bool(args.output) and answer.reason == "done" and not answer.audio  # asked for speech, got none
    if args.output and answer.audio and answer.rate is not None:
        answer.write_wav(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    metrics = answer.metrics or {}
    print(f"turn {answer.reason}: worker {answer.worker}, first audio "
          f"{'-' if answer.first_audio_s is None else f'{answer.first_audio_s * 1000:.0f} ms'} after sending, "
          f"{metrics.get('audio_s', 0.0):.2f} s of speech", file=sys.stderr)
    if silent:
        print(f"omnivox ask: no speech: the answer ended after {len(answer.text)} characters of text with 0 s of "
              f"audio; nothing was written to {args.output}", file=sys.stderr)
        print("  try: a spoken question (--input QUESTION.wav), or a worker with a larger --max-steps (omnivox "
              "serve --max-steps N)", file=sys.stderr)
        return 1
    return 0 if answer.ok else 1


async def _ask(args: argparse.Namespace):
    from omnivox.mqtt import Client

    password = args.password or os.environ.get("OMNIVOX_MQTT_PASSWORD")
    async with Client(args.broker, site=args.site, username=args.username, password=password,
                      ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key) as client:
        await client.wait_for_worker(args.wait)
        session = await client.session()
        if args.text is not None:
            turn = await session.send_text(args.text)
        else:
            from omnivox.plugins.mqtt.client import read_wav_pcm

            pcm, rate, width, channels = read_wav_pcm(args.input)
            turn = await session.start_turn(rate, width, channels)
            step = rate // 10 * width * channels  # 100 ms chunks
            for start in range(0, len(pcm), step):
                await turn.send(pcm[start:start + step])
            await turn.stop()
        printer = asyncio.create_task(_print_text(turn, None if args.quiet else sys.stdout))
        answer = await turn.result(args.timeout)
        await printer
        await session.close()
        return answer


async def _print_text(turn, out) -> None:
    """The streamed text as it arrives, made terminal-safe as `omnivox chat` does (chat.displayable)."""
    from omnivox.cli.chat import displayable

    held: list[int] = []  # ids whose text the service's detokenizer still holds back
    async for reply in turn:
        if out is not None and reply.event == "transcript-chunk":
            held.append(reply.data.get("token", -1))
            text = reply.data.get("text", "")
            if text:
                out.write(displayable(text, held))
                out.flush()
                held.clear()
    if out is not None:
        out.write("\n")
