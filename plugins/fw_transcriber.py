"""The ASR yardstick: faster-whisper transcription on the fw encoder's weights, plus word error rate.

`Transcriber` runs faster-whisper on a CTranslate2 Whisper directory (default: the shipped tiny.en, see
plugins/fw_encoder.py) with beam search 5 and Silero VAD filtering on: without VAD, silence and noise come
out as hallucinated words ("You"). Decoding is deterministic, so a figure can be compared with another:
temperature 0 without Whisper's sampling fallback (CTranslate2's sampling cannot be seeded from here); what
that fallback is for, a looping transcript ("thank you very much, and thank you very much, ..."), is
prevented by forbidding repeated 3-grams. `word_error_rate` scores after Whisper's English text normaliser.

Absolute WERs of a small Whisper on synthetic speech mean little (tiny.en: ~15% on everyday espeak-ng
sentences, ~31% on the corpus builder's template sentences in its held-out voices, far more in some accents):
quality figures compare the WER of processed audio with that of the original audio, on the same yardstick.
faster-whisper is imported on first use, so `word_error_rate` needs only openai-whisper (a core dependency)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from omnivox.core import audio
from omnivox.core.errors import CheckpointError, InputError
from omnivox.core.progress import bar

SAMPLE_RATE = 16000


class Transcriber:
    """Speech -> text with faster-whisper. `model`: a CTranslate2 Whisper directory, or None / "tiny.en"
    for the shipped weights; `language`: None = English for English-only models, detected otherwise."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        beam_size: int = 5,
        vad: bool = True,
        language: str | None = None,
        threads: int | None = None,
        compute_type: str | None = None,
        device: str = "cpu",
    ):
        from faster_whisper import WhisperModel

        from omnivox.plugins.fw_encoder import ct2_load_errors, default_compute_type, default_threads, model_dir

        path = model_dir(model)
        if not (path / "tokenizer.json").is_file():  # faster-whisper would fetch one from the hub
            raise CheckpointError(f"{path} has no tokenizer.json", "use a CTranslate2 Whisper directory with its "
                                  "tokenizer.json (ct2-transformers-converter --copy_files tokenizer.json)")
        threads, compute_type = default_threads(threads), compute_type or default_compute_type(device)
        with ct2_load_errors(path):
            self.whisper = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=threads)
        multilingual = self.whisper.model.is_multilingual
        self.language = language if language is not None or multilingual else "en"
        self.beam_size, self.vad = beam_size, vad

    def transcribe(self, pcm: Any, sample_rate: int) -> str:
        """PCM (samples,) or (channels, samples) at `sample_rate` -> text ('' when nothing is said)."""
        x = audio.convert(pcm, sample_rate, to_rate=SAMPLE_RATE, mono=True, what="audio to transcribe")  # (n,)
        segments, _ = self.whisper.transcribe(x, language=self.language, beam_size=self.beam_size, temperature=0.0,
                                              no_repeat_ngram_size=3, vad_filter=self.vad)
        return "".join(segment.text for segment in segments).strip()

    def transcribe_file(self, path: str | os.PathLike) -> str:
        from omnivox.plugins.audio_files import read_audio

        return self.transcribe(*read_audio(path))

    def transcribe_files(self, paths: Sequence[str | os.PathLike], *, progress: bool | None = None) -> list[str]:
        """Transcripts of `paths`, in order; a progress bar on a terminal when there are several (or `progress`)."""
        show = len(paths) > 1 if progress is None else progress
        return [self.transcribe_file(p) for p in bar(paths, desc="transcribe", unit="file", enabled=show)]


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English text normaliser: lower case, no punctuation, spelled-out numbers as digits, British
    spellings as American, contractions expanded ("Mr." -> "mister", "twenty five" -> "25")."""
    return _normalizer()(text)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) between two already-normalised texts."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))  # edit distance of ref[:0] to each prefix of hyp
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1], len(ref)


def word_error_rate(references: str | Iterable[str], hypotheses: str | Iterable[str], *,
                    normalise: bool = True) -> float:
    """Corpus WER: all word errors over all reference words (not a mean of per-utterance rates), after
    Whisper's English normaliser unless `normalise=False`. Takes two strings or two equal-length lists."""
    refs = [references] if isinstance(references, str) else list(references)
    hyps = [hypotheses] if isinstance(hypotheses, str) else list(hypotheses)
    if len(refs) != len(hyps):
        raise InputError(f"{len(refs)} references but {len(hyps)} hypotheses", "pass one transcript per reference")
    errors = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        e, n = word_errors(normalize(ref), normalize(hyp)) if normalise else word_errors(ref, hyp)
        errors, words = errors + e, words + n
    if words == 0:
        raise InputError("the references have no words, so the word error rate is undefined",
                         "score against references that contain words")
    return errors / words

