"""The demo model's domain (training/demo_domain.py): answers, held-out splits, scoring, a small built set, and
the faster-whisper encoder's `trim` that the demo's features use."""

import json
import shutil

import numpy as np
import pytest

from omnivox.core.errors import ConfigError
from omnivox.training.demo_domain import (
    ARITHMETIC,
    INTENTS,
    PHRASINGS,
    DemoConfig,
    build_demo,
    contents,
    exact_match,
    load_demo_config,
    number_words,
    question_key,
    questions,
    score_answer,
)


def test_answers_are_right():
    add = {key: answer for key, _, answer in contents("add")}
    assert add["47+10"] == "forty seven plus ten is fifty seven"
    assert add["89+10"] == "eighty nine plus ten is ninety nine" and add["20+10"] == "twenty plus ten is thirty"
    assert {key: a for key, _, a in contents("subtract")}["30-10"] == "thirty minus ten is twenty"
    assert {key: a for key, _, a in contents("day_before")}["monday"] == "sunday comes before monday"
    assert {key: a for key, _, a in contents("month_after")}["december"] == "january comes after december"
    assert {key: a for key, _, a in contents("capital")}["france"] == "the capital of france is paris"
    yes_no = {key: a for key, _, a in contents("yes_no")}
    assert yes_no["ice:cold"] == "yes, ice is cold" and yes_no["ice:hot"] == "no, ice is not hot"
    assert len(add) == 70 and len(contents("subtract")) == 70
    assert [number_words(n) for n in (0, 13, 20, 47, 99)] == ["zero", "thirteen", "twenty", "forty seven",
                                                             "ninety nine"]


def test_splits_hold_out_phrasings_pairs_and_voices():
    config = DemoConfig()
    qs = questions(config)
    assert qs == questions(DemoConfig())  # seeded
    train = [q for q in qs if q.split == "train"]
    test = [q for q in qs if q.split == "test"]
    assert {q.intent for q in test} == set(INTENTS)
    for intent in INTENTS:
        held = len(PHRASINGS[intent]) - 1
        assert all(q.phrasing != held for q in train if q.intent == intent)
        assert any(q.phrasing == held for q in test if q.intent == intent)
    for intent in ARITHMETIC:
        seen = {q.content for q in train if q.intent == intent}
        unseen = [q for q in test if q.intent == intent and q.content not in seen]
        assert len(unseen) >= config.test_per_intent // 2  # number pairs never trained on, in any phrasing
    assert not {q.text for q in train} & {q.text for q in test}


def test_config_rejects_shared_voices_and_unknown_keys():
    with pytest.raises(ConfigError, match="test_voices"):
        DemoConfig(voices=["en-us", "en-gb"], test_voices=["en-gb"])
    with pytest.raises(ConfigError, match="unknown demo config key"):
        load_demo_config(["voice=en-us"])
    with pytest.raises(ConfigError, match="intents"):
        DemoConfig(intents=["weather"])
    assert load_demo_config(["variants=3"]).variants == 3


@pytest.mark.parametrize("intent, expected, transcript, ok", [
    ("add", "forty seven plus ten is fifty seven", "47 plus 10 is 57.", True),
    ("add", "forty seven plus ten is fifty seven", "Forty-seven plus ten is fifty-seven.", True),
    ("add", "forty seven plus ten is fifty seven", "Forty seven plus ten is fifty.", False),
    ("add", "forty seven plus ten is fifty seven", "forty seven plus ten", False),
    ("subtract", "thirty minus ten is twenty", "30 minus 10 is 20", True),
    ("subtract", "thirty minus ten is twenty", "Thirty minus ten is twenty one.", False),
    ("day_after", "tuesday comes after monday", "Tuesday comes after Monday.", True),
    ("day_after", "tuesday comes after monday", "Monday comes after Monday.", False),
    ("month_before", "april comes before may", "April comes before May", True),
    ("capital", "the capital of india is new delhi", "The capital of India is New Delhi.", True),
    ("capital", "the capital of india is new delhi", "The capital of India is Delhi.", False),
    ("yes_no", "no, ice is not hot", "No, ice is not hot.", True),
    ("yes_no", "no, ice is not hot", "Yes, ice is hot.", False),
    ("greeting", "hello, how can i help you", "Hello, how can I help you?", True),
    ("identity", "i am omnivox, a small demo voice assistant", "I am Omnivax, a small demo voice assistant.", True),
    ("identity", "i am omnivox, a small demo voice assistant", "", False),
])
def test_score_answer(intent, expected, transcript, ok):
    assert score_answer(intent, expected, transcript) is ok


def test_exact_match_and_keys():
    assert exact_match("forty seven plus ten is fifty seven", "Forty-seven plus 10 is 57.")
    assert not exact_match("forty seven plus ten is fifty seven", "forty seven plus ten is fifty eight")
    assert question_key("q00012-1-A1T2") == "q00012-1"
    with pytest.raises(ConfigError):
        score_answer("weather", "sunny", "sunny")


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng, sox")
def test_build_small_set(tmp_path):
    config = DemoConfig(intents=["greeting", "identity"], variants=1, min_per_intent=0, test_per_intent=2)
    demo = json.loads(build_demo(tmp_path, config, progress=False).read_text())
    rows = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "validation", "test", "codec")}
    assert {r["task"] for r in rows["train"]} == {"A1T1", "A1T2", "A1A2", "T1T2", "T1A2"}
    assert {r["task"] for r in rows["test"]} == {"A1T1", "A1T2", "A1A2"}
    for r in rows["train"] + rows["test"]:
        for field in ("question_audio", "answer_audio"):
            if field in r:
                assert (tmp_path / r[field]).stat().st_size > 1000
    voices = {split: {q["voice"] for q in demo["questions"].values() if q["split"] == split}
              for split in ("train", "test")}
    assert voices["test"] <= set(config.test_voices) and not voices["train"] & voices["test"]
    answers = {r["answer_audio"] for r in rows["train"] if r["task"] == "A1A2"}
    assert len(answers) == 2  # one fixed answer voice: one file per answer text
    again = build_demo(tmp_path / "again", config, progress=False)  # seeded: the same files, byte for byte
    assert again.read_text() == (tmp_path / "demo.json").read_text()
    for r in rows["test"]:
        assert (tmp_path / "again" / r["question_audio"]).read_bytes() == (tmp_path / r["question_audio"]).read_bytes()


def test_fw_encoder_trim_keeps_the_framing():
    from omnivox.plugins import fw_encoder as fw  # faster-whisper and the shipped tiny.en: core dependencies

    full, trimmed = fw.load_fw_encoder(threads=1), fw.load_fw_encoder(threads=1, trim=True)
    pcm = (0.1 * np.sin(np.arange(16000 * 2) * 2 * np.pi * 220 / 16000)).astype(np.float32)  # 2 s tone
    a, b = full.encode(pcm, 16000), trimmed.encode(pcm, 16000)
    assert a.shape == b.shape == (101, 384)
    assert not np.allclose(a.numpy(), b.numpy())  # attention no longer sees the padding
    assert np.allclose(b.numpy(), trimmed.encode(pcm, 16000).numpy())  # deterministic
    long = np.zeros(16000 * 31, np.float32)
    assert trimmed.encode(long, 16000).shape == full.encode(long, 16000).shape == (1551, 384)
    with pytest.raises(ConfigError, match="trim"):
        fw.load_fw_encoder(trim="yes")
