"""Corpus builder (`omnivox synth-data DIR --corpus`): splits by sentence, held-out test voices, manifests the
training loader accepts, noise at the asked SNR, reverberation, reproducible files, clear config errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile

from omnivox.cli.main import main
from omnivox.core.errors import ConfigError, InputError
from omnivox.training.corpus import SPLITS, CorpusConfig, Utterance, load_corpus_config, qa_pool, render, statements
from omnivox.training.data import read_manifest

CONFIG = """
sentences: 14
qa_pairs: 10
variants: 2
noise_probability: 0.5
reverb_probability: 0.5
sample_rate: 16000
"""


def build(directory: Path, *extra: str) -> dict:
    config = directory.parent / f"{directory.name}.yaml"
    config.write_text(CONFIG)
    assert main(["synth-data", str(directory), "--corpus", str(config), *extra]) == 0
    return json.loads((directory / "corpus.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus") / "c"
    return directory, build(directory, "--set", "seed=3")


def manifests(directory: Path) -> dict[str, list]:
    """split -> every example of its manifests, read by the training loader (files must exist)."""
    out: dict[str, list] = {split: [] for split in SPLITS}
    for path in sorted(directory.glob("*.jsonl")):
        out[path.name.split(".")[0]] += read_manifest(path, require_prepared=False)
    return out


def test_manifests_validate_with_the_training_loader(corpus):
    directory, summary = corpus
    names = {p.name for p in directory.glob("*.jsonl")}
    assert names == {f"{s}.{k}.jsonl" for s in SPLITS for k in ("codec", "asr", "qa")}
    assert {m["file"] for m in summary["manifests"].values()} == names
    for split, examples in manifests(directory).items():
        tasks = {e.task for e in examples}
        assert tasks == {"T1A2", "A1T1", "A1T2", "A1A2"}, split
        for example in examples:
            for audio in (example.question_audio, example.answer_audio):
                if audio is not None:
                    assert audio.is_relative_to(directory / "audio" / split)  # a split's audio stays in it
                    assert soundfile.info(audio).samplerate == 16000
    train_asr = read_manifest(directory / "train.asr.jsonl", require_prepared=False)
    # every statement and question is spoken `variants` times, answers once
    assert len(train_asr) == len(summary["sentences"]["train"]) * 2 - sum(1 for e in train_asr if "answer" in e.id)


def test_splits_never_share_a_sentence(corpus):
    directory, summary = corpus
    texts = {split: {e.answer_text for e in ex} | {e.question_text for e in ex if e.question_text}
             for split, ex in manifests(directory).items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not texts[a] & texts[b], (a, b)
                assert not set(summary["sentences"][a]) & set(summary["sentences"][b])
    # every sentence of a split is one of its manifests' texts (nothing listed that is not spoken)
    for split in SPLITS:
        assert set(summary["sentences"][split]) == texts[split]
    assert sum(len(v) for v in summary["sentences"].values()) == 14 + 2 * 10


def test_test_split_uses_held_out_voices_and_rates(corpus):
    directory, summary = corpus
    config = CorpusConfig(**summary["config"])
    spoken = {u["path"]: u for u in summary["utterances"]}
    test_asr = read_manifest(directory / "test.asr.jsonl", require_prepared=False)
    assert test_asr
    for example in test_asr:
        u = spoken[example.question_audio.relative_to(directory).as_posix()]
        assert u["voice"] in config.test_voices and u["rate"] in config.test_rates
        assert u["voice"] not in config.voices and u["rate"] not in config.rates
    train_voices = {u["voice"] for u in summary["utterances"] if u["path"].startswith("audio/train/")}
    assert not train_voices & set(config.test_voices)
    assert any(u["snr_db"] for u in summary["utterances"]) and any(u["reverberance"] for u in summary["utterances"])


def test_same_config_same_bytes(tmp_path, corpus):
    directory, _ = corpus
    again = tmp_path / "again"
    build(again, "--set", "seed=3")

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(again) == digest(directory)


def test_noise_is_added_at_the_drawn_snr(tmp_path):
    clean = Utterance(tmp_path / "clean.wav", "the river was cold", "en-us", 170, 50, None, None, 7)
    noisy = replace(clean, path=tmp_path / "noisy.wav", snr_db=12.0)
    x, rate = soundfile.read(render(clean), dtype="float64")
    y, _ = soundfile.read(render(noisy), dtype="float64")
    gain = float(np.dot(x, y) / np.dot(x, x))  # the peak normalisation may have scaled both
    snr = 10 * np.log10(np.sum((gain * x) ** 2) / np.sum((y - gain * x) ** 2))
    assert snr == pytest.approx(12.0, abs=0.3)
    echoed = replace(clean, path=tmp_path / "echo.wav", reverberance=60.0)
    z, _ = soundfile.read(render(echoed), dtype="float64")
    assert len(z) == len(x) + round(0.3 * rate)  # sox reverb, plus the ringing tail
    assert np.abs(z[: len(x)] - x).max() > 0.01
    gapped, _ = soundfile.read(render(replace(clean, path=tmp_path / "gap.wav", word_gap=10)), dtype="float64")
    assert len(gapped) > len(x) + 0.25 * rate  # 100 ms between each of the 4 words


def test_sentences_and_pairs_are_distinct():
    many = statements(300, seed=0)
    assert len(set(many)) == 300 and statements(300, seed=0) == many != statements(300, seed=1)
    pool = qa_pool()
    assert len({q for q, _ in pool}) == len(pool) and len({a for _, a in pool}) == len(pool)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="(?s)unknown corpus config key 'voice'.*valid keys"):
        load_corpus_config(None, ["voice=en-us"])
    with pytest.raises(ConfigError, match="add up to 1"):
        load_corpus_config(None, ["split={train: 0.5, validation: 0.1, test: 0.1}"])
    with pytest.raises(ConfigError, match="at most"):
        load_corpus_config(None, [f"qa_pairs={len(qa_pool()) + 1}"])
    with pytest.raises(ConfigError, match="has no '='"):
        load_corpus_config(None, ["sentences"])
    with pytest.raises(ConfigError, match="not found"):
        load_corpus_config(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="voice 'xx-nope'"):
        render(Utterance(tmp_path / "x.wav", "hello", "xx-nope", 170, 50, None, None, 0))
    assert main(["synth-data", str(tmp_path / "d"), "--set", "seed=1"]) == 2  # --set needs --corpus
