"""`omnivox transcribe FILE...`: the ASR yardstick (faster-whisper, shipped tiny.en by default), with WER.

Prints one `FILE<TAB>transcript` line per file. With `--references REFS.txt` (one reference per line, in
file order) or `--manifest MANIFEST.jsonl` (its A1T1 examples: question_audio and answer_text) it also prints
the corpus word error rate after Whisper's English normaliser. faster-whisper and tiny.en are core dependencies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnivox.core.errors import InputError


def register(subparsers) -> None:
    cmd = subparsers.add_parser(
        "transcribe", help="speech to text with faster-whisper (the ASR yardstick), optionally scored by WER",
        description="Transcribe audio files with faster-whisper (beam 5, Silero VAD on; default model: the "
        "shipped tiny.en, a core dependency) and print FILE<TAB>TEXT lines. With --references or --manifest, also "
        "print the word error rate after Whisper's English text normaliser.")
    cmd.add_argument("files", nargs="*", metavar="FILE", help="audio files (WAV, FLAC, ...)")
    cmd.add_argument("--model", help="CTranslate2 Whisper directory, tiny.en (default, shipped) or base")
    cmd.add_argument("--references", metavar="TXT", help="reference transcripts, one line per FILE, in order")
    cmd.add_argument("--manifest", metavar="JSONL", help="transcribe and score a manifest's A1T1 examples")
    cmd.add_argument("--language", help="language code (default: en for English-only models, else detected)")
    cmd.add_argument("--beam-size", type=int, default=5)
    cmd.add_argument("--no-vad", action="store_true", help="turn Silero VAD filtering off (silence gives words)")
    cmd.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    cmd.add_argument("--json", action="store_true", help="print one JSON object per file, then one for WER")
    cmd.set_defaults(func=run_transcribe)


def run_transcribe(args: argparse.Namespace) -> int:
    files, references = _inputs(args)
    from omnivox.plugins.fw_transcriber import Transcriber, normalize, word_error_rate

    transcriber = Transcriber(args.model, beam_size=args.beam_size, vad=not args.no_vad, language=args.language,
                              threads=args.threads)
    texts = transcriber.transcribe_files(files)
    for i, (path, text) in enumerate(zip(files, texts, strict=True)):
        if args.json:
            row = {"file": str(path), "text": text, "normalized": normalize(text)}
            print(json.dumps(row | ({"reference": references[i]} if references else {})))
        else:
            print(f"{path}\t{text}")
    if references:
        wer = word_error_rate(references, texts)
        words = sum(len(normalize(r).split()) for r in references)
        if args.json:
            print(json.dumps({"wer": wer, "files": len(files), "reference_words": words}))
        else:
            print(f"WER {100 * wer:.2f}% over {len(files)} file(s), {words} reference words (Whisper-normalised)")
    return 0


def _inputs(args: argparse.Namespace) -> tuple[list[Path], list[str] | None]:
    """The audio files to transcribe and their references (None when not scoring)."""
    if args.manifest:
        if args.files or args.references:
            raise InputError("--manifest given together with FILE or --references",
                             "pass either a manifest, or audio files (with --references to score them)")
        from omnivox.training.data import read_manifest

        examples = [e for e in read_manifest(args.manifest, require_prepared=False) if e.task == "A1T1"]
        if not examples:
            raise InputError(f"{args.manifest} has no A1T1 (speech -> transcript) examples",
                             "pass a manifest with A1T1 lines (question_audio + answer_text)")
        return [e.question_audio for e in examples], [e.answer_text for e in examples]
    if not args.files:
        raise InputError("no audio files given", "pass FILE... or --manifest MANIFEST.jsonl")
    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"no such audio file: {', '.join(missing)}", "check the paths")
    if args.references is None:
        return files, None
    if not Path(args.references).is_file():
        raise InputError(f"no such references file: {args.references}", "pass a text file, one line per FILE")
    lines = Path(args.references).read_text(encoding="utf-8").splitlines()
    if len(lines) != len(files):
        raise InputError(f"{args.references} has {len(lines)} lines for {len(files)} audio files",
                         "write one reference transcript per line, in the order of the audio files")
    return files, lines
