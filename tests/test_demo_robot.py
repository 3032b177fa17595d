"""The home-robot extension of the demo data (training/demo_robot.py): answers and their actions, scoring of
replies as the ASR yardstick writes them, follow-up answers, splits; one small build (slow: espeak-ng)."""

import json
import random
import re
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from omnivox.plugins.random_models import tiny_model
from omnivox.training.data import Example, read_manifest
from omnivox.training.demo_domain import DemoConfig, build_demo
from omnivox.training.demo_robot import (
    COMMANDS,
    EXTRA_DIRECTIONS,
    EXTRA_FOLLOW_UPS,
    EXTRA_LOCATIONS,
    EXTRA_ROOMS,
    EXTRA_STOPS,
    FOLLOW_UPS,
    FRAMES,
    PHRASINGS,
    RobotConfig,
    _Builder,
    _commands,
    _extra_follow_ups,
    _extra_values,
    _fit_block,
    answer_turns,
    build_robot,
    command_items,
    context_reply,
    expected_action,
    metres,
    plain_reply,
    score_line,
    score_reply,
)
from omnivox.training.demo_robot import _follow_up_turn as follow_up_turn


def test_every_command_answer_carries_its_action_and_speaks_only_the_reply():
    for intent in COMMANDS:
        for item in command_items(intent):
            assert expected_action(item.answer) == item.action
            assert plain_reply(item.answer) == item.reply and "<" not in item.reply
    by = command_items("move", move_by=True)[2]
    assert by.reply == "moving forward by three metres" and by.action == command_items("move")[2].action
    said = command_items("move", move_by=True, metres_in_words=True)[2]  # the action copies the reply's words
    assert said.answer.endswith('<act>move {"direction": "forward", "metres": "three"}</act>')
    assert expected_action(said.answer) == by.action == ("move", {"direction": "forward", "metres": 3})
    first = command_items("move", move_by=True, metres_in_words=True, metres_first=True)[2]  # the distance first
    assert first.answer.endswith('<act>move {"metres": "three", "direction": "forward"}</act>')
    assert expected_action(first.answer) == by.action and first.reply == by.reply
    light = command_items("light")[0]
    assert light.answer == 'turning on the kitchen light<act>light {"room": "kitchen", "on": true}</act>'


@pytest.mark.parametrize("intent, expected, heard, ok", [
    ("light", "turning on the kitchen light", "Turning on the kitchen light.", True),
    ("light", "turning on the kitchen light", "Turning off the kitchen light.", False),
    ("light", "turning off the living room light", "turning off the living room light", True),
    ("light", "turning off the living room light", "turning off the bedroom light", False),
    ("move", "moving forward three metres", "Moving forward 3 meters.", True),
    ("move", "moving forward three metres", "Moving forward 4 meters.", False),
    ("move", "moving back one metre", "moving back one meter", True),
    ("move", "moving back by two metres", "Moving back by 2 meters.", True),
    ("move", "moving back by two metres", "moving back two metres", True),
    ("move", "moving back by two metres", "moving back by to meters", False),
    ("turn", "turning left", "Turning left.", True),
    ("turn", "turning left", "Turning right.", False),
    ("stop", "stopping", "Stopping.", True),
    ("volume", "turning the volume up", "turning the volume down", False),
    ("battery", "my battery is at forty five percent", "My battery is at 45%.", True),
    ("battery", "my battery is at forty five percent", "My battery is at 40%.", False),
    ("battery", "my battery is at one hundred percent", "my battery is at one hundred percent", True),
    ("battery", "my battery is at one hundred percent", "My battery is at 100%.", True),
    ("battery", "my battery is at one hundred percent", "My battery is at 10%.", False),
    ("location", "i am in the dining room", "I am in the dining room.", True),
    ("location", "i am in the dining room", "I am in the kitchen.", False),
    ("capital", "the capital of peru is lima", "The capital of Peru is Lima.", True),
])
def test_score_reply(intent, expected, heard, ok):
    assert score_reply(intent, expected, heard) is ok


def test_commands_score_the_exact_action_and_the_reply():
    item = command_items("move")[2]  # forward, three metres
    info = {"intent": "move", "group": "command", "answer": item.answer}
    right = {"action": ("move", {"direction": "forward", "metres": 3}), "reply": "moving forward three metres"}
    assert score_line(info, "A1T2", right) == {"action_right": True, "text_right": True}
    wrong = {"action": ("move", {"direction": "forward", "metres": 4}), "reply": "moving forward three metres"}
    assert score_line(info, "A1T2", wrong)["action_right"] is False
    spoken = {"action": right["action"], "reply": "", "transcript": "Moving forward 3 meters."}
    assert score_line(info, "A1A2", spoken) == {"action_right": True, "spoken_right": True}


def test_speech_answers_can_be_scored_with_batch_parallel_decoding():
    """`evaluate --strategy batch-parallel`: a typed question's spoken answer is written by its T1T2 twin row."""
    model = tiny_model(seed=2)
    heard = SimpleNamespace(transcribe=lambda pcm, rate: "heard")
    codec = SimpleNamespace(decode=lambda frames: np.zeros(160, np.float32), grid=SimpleNamespace(sample_rate=16000))

    def answer(task, **kwargs):
        line = Example("q", task, "test:1", "", question_text="turn on the light")
        return answer_turns(model, [line], None, codec=codec, transcriber=heard, max_steps=24, **kwargs)

    batch, twin = answer("T1A2", strategy="batch-parallel"), answer("T1T2")
    assert batch["text"] == twin["text"] and batch["transcript"] == "heard"
    assert answer("T1A2")["text"] != twin["text"]  # by itself the speech row writes other text


def test_follow_ups_answer_about_the_previous_turn():
    rng = random.Random(0)
    assert follow_up_turn("day_after", "next", "tuesday comes after monday", "and the next one", rng)[1:] == (
        "wednesday comes after tuesday", "day_after")
    assert follow_up_turn("month_before", "previous", "december comes before january", "and before it", rng)[1:] == (
        "november comes before december", "month_before")
    text, answer, intent = follow_up_turn("capital", "capital", "the capital of france is paris", "what about {x}", rng)
    country = text.removeprefix("what about ")
    assert country != "france" and answer.startswith(f"the capital of {country} is ") and intent == "capital"
    assert follow_up_turn("add", "more", "forty seven plus ten is fifty seven", "and ten more", rng)[1] == \
        "fifty seven plus ten is sixty seven"
    assert follow_up_turn("add", "more", "eighty nine plus ten is ninety nine", "and ten more", rng) is None
    kitchen_on = command_items("light")[0]
    text, answer, _ = follow_up_turn("light", "toggle", kitchen_on, "now turn it {on}", rng)
    assert text == "now turn it off" and expected_action(answer) == ("light", {"room": "kitchen", "on": False})


def test_extra_follow_ups_ask_for_sums_in_new_phrasings_after_a_spoken_first_turn(tmp_path):
    """RobotConfig.extra_follow_ups: "more"/"less" follow-ups in EXTRA_FOLLOW_UPS' phrasings (never a held-out
    one), spoken after a spoken training first turn and typed after it, answered from its result; a first turn
    that has since been given a history of its own is not followed. (Lines only: nothing is rendered.)"""
    b = _Builder(tmp_path, RobotConfig(extra_follow_ups=4), {})
    firsts = {}
    for intent, answer in (("add", "forty seven plus ten is fifty seven"), ("subtract", "ninety minus ten is eighty"),
                           ("add", "twenty plus ten is thirty")):
        ids = {task: b.line("train", task, intent, "single", "q", answer, audio="q.wav") for task in ("A1A2", "A1T2")}
        firsts.setdefault(intent, []).append((ids, "en-us", answer))
    b.rows["train"][-1]["history"] = [b.rows["train"][0]["id"]]  # "twenty plus ten" now follows another turn
    b.train_firsts = firsts
    _extra_follow_ups(b, random.Random(0))
    added = [(r, b.meta[r["id"]]) for r in b.rows["train"][6:]]
    by_id = {r["id"]: r for r in b.rows["train"]}
    assert sorted(r["task"] for r, _ in added) == sorted(["A1A2", "A1T2", "T1T2", "T1A2"] * 2)
    for row, info in added:
        first = by_id[row["history"][0]]
        assert first["answer_text"] != "twenty plus ten is thirty" and first["task"][2:] == row["task"][2:]
        kind = "more" if info["intent"] == "add" else "less"
        assert info["question"] in EXTRA_FOLLOW_UPS[kind] and info["group"] == "follow-up"
        assert info["question"] not in FOLLOW_UPS[kind]
    answers = {info["intent"]: row["answer_text"] for row, info in added}
    assert answers == {"add": "fifty seven plus ten is sixty seven", "subtract": "eighty minus ten is seventy"}


def test_context_replies_say_the_value_in_words():
    assert context_reply("battery", 40, "kitchen") == "my battery is at forty percent"
    assert context_reply("battery", 100, "kitchen") == "my battery is at one hundred percent"
    assert context_reply("location", 40, "living room") == "i am in the living room"


def test_phrasings_fill_their_slots():
    for intent in COMMANDS:
        for item in command_items(intent):
            for template in PHRASINGS[intent]:
                assert "{" not in template.format(**item.slots)


def test_polite_frames_and_more_stops_reach_training_only_and_keep_the_commands_answer(tmp_path):
    """RobotConfig.frames and extra_stops: each framed recording keeps its command's
    answer, no test phrasing ("can you ...", "freeze") is trained, and the test split and the earlier lines are
    those of a build without them. (Lines only: nothing is rendered.)"""
    def built(**extras):
        config = RobotConfig(commands=["move", "turn", "stop"], extra_rooms=0, extra_levels=False, typed_copies=False,
                             extra_locations=False, extra_directions=0, **extras)
        b = _Builder(tmp_path, config, {})
        _commands(b)
        _extra_values(b)
        return b

    b = built(frames={"turn": 2, "stop": 2, "move": 1}, extra_stops=True)
    answers = {b.meta[r["id"]]["question"]: b.meta[r["id"]]["answer"] for r in b.rows["train"]}
    framed = {}  # framed question -> the trained question inside it
    for q in answers:
        for head, _, tail in (frame.partition("{x}") for frame in FRAMES):
            inner = q[len(head):len(q) - len(tail)]
            if q.startswith(head) and q.endswith(tail) and inner in answers and inner != q:
                framed[q] = inner
    assert {b.meta[r["id"]]["intent"] for r in b.rows["train"] if b.meta[r["id"]]["question"] in framed} == \
        {"move", "turn", "stop"}
    assert all(answers[q] == answers[inner] for q, inner in framed.items())  # a frame keeps the command's answer
    assert set(EXTRA_STOPS) <= set(answers)
    held_out = {PHRASINGS[intent][-1].format(**item.slots) for intent in ("move", "turn", "stop")
                for item in command_items(intent)}
    assert not held_out & set(answers) and not any(q.startswith("can you") for q in answers)
    plain = built(frames={}, extra_stops=False)
    assert b.rows["test"] == plain.rows["test"] and b.rows["train"][:len(plain.rows["train"])] == plain.rows["train"]
    assert len(b.rows["train"]) > len(plain.rows["train"])
    with pytest.raises(Exception, match="frames="):
        RobotConfig(frames={"dance": 1})


def test_compass_moves_pair_every_distance_with_new_directions_in_training_only(tmp_path):
    """RobotConfig.extra_directions: moves in compass directions at every distance 1..9, confirmed and acted as the
    question says, in training only; the test split and the earlier lines are those of a build without them."""
    def built(n):
        config = RobotConfig(commands=["move", "turn"], extra_rooms=0, extra_levels=False, typed_copies=False,
                             extra_locations=False, extra_stops=False, frames={}, extra_directions=n)
        b = _Builder(tmp_path, config, {})
        _commands(b)
        _extra_values(b)
        return b

    b, plain = built(3), built(0)
    assert b.rows["test"] == plain.rows["test"] and b.rows["train"][:len(plain.rows["train"])] == plain.rows["train"]
    added = [b.meta[r["id"]] for r in b.rows["train"][len(plain.rows["train"]):]]
    assert {expected_action(m["answer"])[1]["direction"] for m in added} == set(EXTRA_DIRECTIONS[:3])
    for m in added:
        name, args = expected_action(m["answer"])
        assert name == "move" and args["direction"] in m["question"] and metres(args["metres"]) in m["question"]
        assert plain_reply(m["answer"]) == f"moving {args['direction']} by {metres(args['metres'])}"
    assert {expected_action(m["answer"])[1]["metres"] for m in added} == set(range(1, 10))
    assert not {expected_action(b.meta[r["id"]]["answer"])[1]["direction"] for r in b.rows["test"]
                if b.meta[r["id"]]["intent"] == "move"} & set(EXTRA_DIRECTIONS)
    with pytest.raises(Exception, match="extra_directions="):
        RobotConfig(extra_directions=len(EXTRA_DIRECTIONS) + 1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_build_small_set(tmp_path):
    demo = DemoConfig(intents=["day_after", "capital"], variants=1, min_per_intent=0, test_per_intent=2)
    build_demo(tmp_path, demo, progress=False)
    config = RobotConfig(commands=["light", "move", "stop"], command_variants=1, context_variants=1,
                         contexts_per_question=1, follow_ups_per_kind=2, test_per_intent=2, demo=demo, extra_rooms=2,
                         extra_phrasings=1, extra_levels=True, typed_copies=True, frames={"stop": 1}, extra_stops=True,
                         extra_locations=True, extra_distances=2, typed_spoken_singles=0.5, cut_histories=0.5,
                         metres_in_words=False, extra_directions=0)  # digits: the distances read back below
    meta = json.loads(build_robot(tmp_path, config, progress=False).read_text())["lines"]
    rows = {split: [json.loads(line) for line in (tmp_path / f"robot_{split}.jsonl").read_text().splitlines()]
            for split in ("train", "test")}
    for split in rows:  # every history resolves; the training manifest reads as training will read it
        examples = read_manifest(tmp_path / f"robot_{split}.jsonl", require_prepared=False)
        follow_ups = [ex for ex in examples if meta[ex.id]["group"] == "follow-up"]
        # a follow-up's first turn answers in its kind (a typed copy of a spoken follow-up keeps the spoken turn)
        assert follow_ups and all(len(ex.history) == 1 and ex.history[0].task[2:] == ex.task[2:] for ex in follow_ups)
    voices = json.loads((tmp_path / "demo.json").read_text())["questions"]
    held = set(demo.test_voices)
    test_audio = {r["question_audio"] for r in rows["test"] if "question_audio" in r}
    train_audio = {r["question_audio"] for r in rows["train"] if "question_audio" in r}
    assert not test_audio & train_audio
    assert all(voices[r["id"].rsplit("-", 1)[0]]["voice"] in held for r in rows["test"] if r["id"].startswith("q"))
    last = {intent: template for intent, templates in PHRASINGS.items() for template in templates[-1:]}
    train_questions = {meta[r["id"]]["question"] for r in rows["train"] if meta[r["id"]]["group"] == "command"}
    assert not any(last["stop"] in q for q in train_questions)  # the held-out phrasing stays out of training
    assert set(EXTRA_STOPS) <= train_questions
    asked_where = {meta[r["id"]]["question"] for r in rows["train"] if meta[r["id"]]["intent"] == "location"}
    assert set(EXTRA_LOCATIONS) <= asked_where and last["location"] not in asked_where
    assert any(meta[r["id"]]["question"] == last["stop"] for r in rows["test"])
    assert all("context" in r for r in rows["train"] if meta[r["id"]]["group"] == "context")
    again = tmp_path / "again"
    again.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "demo.json"):
        shutil.copy(tmp_path / name, again / name)
    shutil.copytree(tmp_path / "audio", again / "audio", ignore=shutil.ignore_patterns("r"))
    build_robot(again, config, progress=False)
    assert (again / "robot_train.jsonl").read_text() == (tmp_path / "robot_train.jsonl").read_text()  # seeded
    # the training-only values: extra rooms and off-grid levels in training, never in test; the test split and the
    # other training lines are those of a build without them
    def rooms(rows):
        return {room for r in rows for room in EXTRA_ROOMS
                if f"the {room} light" in r["answer_text"] or r["answer_text"] == f"i am in the {room}"}

    assert rooms(rows["train"]) == set(EXTRA_ROOMS[:config.extra_rooms]) and config.extra_rooms > 0
    assert not rooms(rows["test"])
    assert any(r["answer_text"] == "my battery is at seven percent" for r in rows["train"])
    def distances(rows):
        return {int(m) for r in rows for m in re.findall(r'"metres": (\d+)', r["answer_text"])}

    assert 'moving back by eleven metres<act>move {"direction": "back", "metres": 11}</act>' in \
        {r["answer_text"] for r in rows["train"]}
    assert {10, 11} <= distances(rows["train"]) and max(distances(rows["test"])) <= 9
    singles = {(meta[r["id"]]["question"], r["task"]) for r in rows["train"] if meta[r["id"]]["group"] == "single"}
    typed_spoken = {q for q, task in singles if task == "T1A2"}
    assert typed_spoken and typed_spoken < {q for q, task in singles if task == "A1A2"}
    by_id = {r["id"]: r for r in rows["train"]}
    cut = [r for r in rows["train"] if "history_cut" in r]  # after a barged-in spoken answer
    assert cut and all(0.15 <= r["history_cut"] <= 0.85 and by_id[r["history"][0]]["task"] in ("A1A2", "T1A2")
                       for r in cut)
    assert not any("history_cut" in r for r in rows["test"])
    typed = {(meta[r["id"]]["question"], r.get("context")) for r in rows["train"] if r["task"] == "T1T2"}
    assert all((meta[r["id"]]["question"], r.get("context")) in typed for r in rows["train"] if r["task"] == "A1T2")
    plain = tmp_path / "plain"
    shutil.copytree(again, plain, ignore=shutil.ignore_patterns("robot*"))
    build_robot(plain, replace(config, extra_rooms=0, extra_levels=False, typed_copies=False, frames={},
                               extra_stops=False, extra_locations=False, extra_distances=0, typed_spoken_singles=0.0,
                               cut_histories=0.0),
                progress=False)
    assert (plain / "robot_test.jsonl").read_text() == (tmp_path / "robot_test.jsonl").read_text()
    kept = [json.loads(line) for line in (plain / "robot_train.jsonl").read_text().splitlines()]
    made = [{k: v for k, v in r.items() if k != "history_cut"} for r in rows["train"]]
    assert made[:len(kept)] == kept  # the extras come after, nothing moved; cuts change no other field


def test_a_history_dropped_for_length_takes_its_cut_with_it(tmp_path):
    """A line too long with its history loses the history, and its history_cut (a cut of no history is refused)."""
    rows = [{"id": "t1", "task": "T1T2", "question_text": "what is it", "answer_text": "x" * 300},
            {"id": "t2", "task": "T1T2", "question_text": "and now", "answer_text": "y" * 200, "history": ["t1"],
             "history_cut": 0.5}]
    b = SimpleNamespace(out=tmp_path, rows={"train": rows}, meta={"t1": {"group": "single"}, "t2": {"group": "single"}})
    assert _fit_block(b, None) == 1
    assert "history" not in b.rows["train"][1] and "history_cut" not in b.rows["train"][1]
