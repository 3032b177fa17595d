"""Actions (issue 23, item 3): the markup a model declares, the streaming parser, the Action / ActionWarning /
ActionResult events, and the LM stage of a real pipeline whose text stream is scripted to hold actions."""

import asyncio
import json
import random

import pytest
import torch

from omnivox.core.errors import ConfigError
from omnivox.core.kernel.actions import (
    ISSUE_CODES,
    ActionFormat,
    ActionIssue,
    ActionParser,
    ParsedAction,
    split_actions,
)
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.strategies import DecodingStrategy, get_strategy
from omnivox.core.runtime.events import (
    Action,
    ActionResult,
    ActionWarning,
    CodecFrame,
    ControlEvent,
    DataEvent,
    Features,
    Interruption,
    TextIn,
    TextToken,
    same_turn,
)
from omnivox.core.runtime.model_stages import IncrementalText, LMStage
from omnivox.core.runtime.testing import assert_turn_ended, make_turn, of_type, run_pipeline
from omnivox.plugins.random_models import tiny_model

FMT = ActionFormat()
LIGHT = '<act>light {"room": "kitchen", "on": true}</act>'
MOVE = '<act>move {"metres": 2, "direction": "forward"}</act>'


def parse(pieces, fmt=FMT, vocabulary=None):
    """Feed `pieces` one by one, then finish: (items in order, plain text, actions, issues)."""
    parser = ActionParser(fmt, vocabulary)
    items = [item for piece in pieces for item in parser.feed(piece)] + parser.finish()
    plain = "".join(i for i in items if isinstance(i, str))
    return (items, plain, [i for i in items if isinstance(i, ParsedAction)],
            [i for i in items if isinstance(i, ActionIssue)])


def chunks(text, rng, largest=4):
    """`text` cut into random pieces of 1..largest characters."""
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, largest)
        out.append(text[i:i + n])
        i += n
    return out


# ------------------------------------------------------------------------------------------ the parser
def test_text_without_markers_passes_untouched_even_with_angle_brackets():
    text = "a < b, <3 and <ac t> and </ac are not markers <"
    _, plain, actions, issues = parse(list(text))
    assert plain == text and actions == [] and issues == []


def test_an_action_between_text_gives_the_plain_text_and_the_action():
    items, plain, actions, issues = parse([f"turning on{LIGHT} the light"])
    assert plain == "turning on the light" and issues == []
    assert [(a.name, a.arguments) for a in actions] == [("light", {"room": "kitchen", "on": True})]
    assert items == ["turning on", actions[0], " the light"]  # in the order of the text
    assert actions[0].markup == LIGHT


@pytest.mark.parametrize("cut", range(1, len(LIGHT)))
def test_a_marker_split_anywhere_is_still_found(cut):
    text = f"ok {LIGHT}done"
    whole = parse([text])
    split_at_cut = parse([text[:3 + cut], text[3 + cut:]])
    assert split_at_cut[1:] == whole[1:]  # the same plain text, actions and issues
    assert whole[1] == "ok done" and [a.name for a in whole[2]] == ["light"]


def test_character_by_character_equals_all_at_once():
    text = f"first{LIGHT}, then {MOVE}and stop<act>stop</act>."
    assert parse(list(text))[1:] == parse([text])[1:]
    _, plain, actions, _ = parse(list(text))
    assert plain == "first, then and stop."
    assert [(a.name, a.arguments) for a in actions] == [
        ("light", {"room": "kitchen", "on": True}), ("move", {"metres": 2, "direction": "forward"}), ("stop", {})]


def test_only_a_possible_marker_start_is_held_back():
    parser = ActionParser(FMT)
    assert parser.feed("hello <a") == ["hello "]  # "<a" may begin <act>
    assert parser.feed("c") == []
    assert parser.feed("x") == ["<acx"]  # it did not: released at once
    assert parser.feed(" </") == [" "]  # may begin </act>
    assert parser.feed("b>") == ["</b>"]
    assert parser.feed("end <") == ["end "]
    assert parser.finish() == ["<"]  # the turn ended: it can no longer become a marker


def test_an_action_is_returned_by_the_piece_that_closes_it():
    parser = ActionParser(FMT)
    pieces = ["go", "<ac", "t>mo", 've {"metres"', ": 1}</a", "ct>", "now"]
    got = [parser.feed(p) for p in pieces]
    assert got[:5] == [["go"], [], [], [], []]
    assert got[5] == [ParsedAction("move", {"metres": 1}, '<act>move {"metres": 1}</act>')]
    assert got[6] == ["now"]


def test_several_actions_and_text_in_random_pieces_never_leak_a_byte_of_an_action():
    """Generated turns of plain words, good and bad actions, cut at random: the plain text is exactly the words,
    and no marker, name or argument reaches it."""
    rng = random.Random(23)
    words = ["turning", "on", "the", "kitchen", "light", "<3", "a<b", "</", "<ac", "ok", "é", "forty"]
    bodies = ['light {"room": "hall", "on": false}', "stop", 'move {"metres": 3}', "volume {bad json}",
              '{"no": "name"}', 'turn {"direction": "left", "degrees": 90}', "", "9lives"]
    for _ in range(200):
        plain_parts, markup, expected_names = [], [], []
        for _ in range(rng.randint(1, 6)):
            word = rng.choice(words) + " "
            plain_parts.append(word)
            markup.append(word)
            if rng.random() < 0.5:
                body = rng.choice(bodies)
                markup.append(FMT.open + body + FMT.close)
                if body in ("stop",) or body.startswith(("light", "move", "turn")):
                    expected_names.append(body.split()[0])
        text = "".join(markup)
        _, plain, actions, issues = parse(chunks(text, rng))
        assert plain == "".join(plain_parts), text
        assert [a.name for a in actions] == expected_names
        assert "act>" not in plain and "{" not in plain
        assert len(issues) == text.count(FMT.open) - len(actions)


@pytest.mark.parametrize("text, code", [
    ('<act>light {room: "kitchen"}</act>', "bad-action-json"),
    ("<act>light [1, 2]</act>", "bad-action-json"),
    ('<act>light {"on": true} trailing</act>', "bad-action-json"),
    ('<act>light {"level": NaN}</act>', "bad-action-json"),
    ('<act>{"on": true}</act>', "missing-action-name"),
    ("<act>  </act>", "missing-action-name"),
    ("<act>9lives</act>", "bad-action-name"),
    ('<act>li"ght {}</act>', "bad-action-name"),
    ('<act>fly {"to": "moon"}</act>', "unknown-action"),
    ("<act>light " + "x" * 300 + "</act>", "action-too-long"),
    ('<act>light {"on": true}', "unclosed-action"),
    ("</act>", "stray-action-close"),
    ('<act>light {"level": "far"}</act>', "bad-action-number"),
    ('<act>light {"level": true}</act>', "bad-action-number"),
])  # fmt: skip
def test_each_malformed_action_is_a_named_issue_and_the_turn_goes_on(text, code):
    assert code in ISSUE_CODES
    vocabulary = ["light", "move", "stop"]
    fmt = ActionFormat(number_words=("level",))
    rng = random.Random(code)
    turn = f"before {text} after{MOVE}" if code != "unclosed-action" else f"before {MOVE}and {text}"
    for pieces in ([turn], list(turn), chunks(turn, rng)):
        _, plain, actions, issues = parse(pieces, fmt, vocabulary=vocabulary)
        assert [i.code for i in issues] == [code], issues
        assert issues[0].message and len(issues[0].markup) <= 80
        assert [a.name for a in actions] == ["move"]  # the well-formed action still counts
        assert plain == ("before  after" if code != "unclosed-action" else "before and ")
        for fragment in ("act>", "light", "{", "fly", "9lives"):
            assert fragment not in plain


def test_every_issue_code_is_tested_and_documented():
    from pathlib import Path

    table = test_each_malformed_action_is_a_named_issue_and_the_turn_goes_on.pytestmark[0].args[1]
    assert {code for _, code in table} == set(ISSUE_CODES)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "actions.md").read_text(encoding="utf-8")
    assert all(f"| `{code}` |" in doc for code in ISSUE_CODES)


def test_an_overlong_action_is_reported_once_while_it_streams_and_skipped_to_its_close():
    fmt = ActionFormat(max_chars=16)
    parser = ActionParser(fmt)
    out = parser.feed("hi <act>light ") + parser.feed('{"room": "kitchen"')  # 32 characters: too long already
    assert [i.code for i in out if isinstance(i, ActionIssue)] == ["action-too-long"] and out[0] == "hi "
    more = parser.feed(', "on": true}') + parser.feed("</act> bye") + parser.finish()
    assert more == [" bye"]  # no second issue, nothing of the action


def test_a_vocabulary_from_the_caller_replaces_the_declared_names():
    fmt = ActionFormat(names=("light",))
    assert [i.code for i in parse(["<act>stop</act>"], fmt)[3]] == ["unknown-action"]
    assert [a.name for a in parse(["<act>stop</act>"], fmt, vocabulary=["stop"])[2]] == ["stop"]
    assert [a.name for a in parse(["<act>anything</act>"])[2]] == ["anything"]  # no names: any name


def test_the_parser_follows_the_declared_markers():
    fmt = ActionFormat(open="[[", close="]]")
    _, plain, actions, _ = parse(list('say [[light {"on": false}]]ok <act>x</act>'), fmt)
    assert plain == "say ok <act>x</act>" and [(a.name, a.arguments) for a in actions] == [("light", {"on": False})]


def test_byte_tokens_of_a_multibyte_text_through_the_detokenizer_and_the_parser():
    """The byte-level tokenizer cuts 'é' and the markers into single bytes: the plain text is still exact."""
    model = tiny_model(seed=0)
    text = 'café: <act>light {"room": "séjour", "on": true}</act>prêt'
    detok, parser, items = IncrementalText(model.tokenizer), ActionParser(FMT), []
    for token in model.tokenizer.encode(text):
        items += parser.feed(detok.push(token))
    items += parser.finish()
    assert "".join(i for i in items if isinstance(i, str)) == "café: prêt"
    assert [i.arguments for i in items if isinstance(i, ParsedAction)] == [{"room": "séjour", "on": True}]


# ----------------------------------------------------------------------------------------- the format
def test_render_round_trips_through_the_parser_and_split_actions():
    args = {"room": "kitchen", "on": True}
    markup = FMT.render("light", args)
    assert markup == LIGHT and FMT.render("stop") == "<act>stop</act>"
    plain, actions, issues = split_actions(f"{markup}turning on the kitchen light", FMT)
    assert plain == "turning on the kitchen light" and issues == []
    assert [(a.name, a.arguments) for a in actions] == [("light", args)]
    assert FMT.render_result("light", {"ok": True}) == '<result>light {"ok": true}</result>'


def test_arguments_declared_in_number_words_are_delivered_as_numbers():
    fmt = ActionFormat(names=("move",), number_words=("metres",))
    text = 'moving back by five metres<act>move {"direction": "back", "metres": "five"}</act>'
    for pieces in ([text], list(text)):
        _, plain, actions, issues = parse(pieces, fmt)
        assert plain == "moving back by five metres" and issues == []
        assert [a.arguments for a in actions] == [{"direction": "back", "metres": 5}]
    assert parse(['<act>move {"direction": "back", "metres": 4}</act>'], fmt)[2][0].arguments["metres"] == 4
    assert parse(['<act>move {"direction": "five"}</act>'], fmt)[2][0].arguments == {"direction": "five"}
    assert ActionFormat.from_dict(fmt.to_dict()) == fmt


@pytest.mark.parametrize("data, words", [
    ({"open": "<act>", "close": "<act>x"}, "contain one another"),
    ({"open": ""}, "non-empty marker"),
    ({"close": " </act>"}, "outer spaces"),
    ({"max_chars": 0}, "positive integer"),
    ({"max_chars": True}, "positive integer"),
    ({"names": ["light", "no spaces"]}, "not action names"),
    ({"names": "light"}, "not a list"),
    ({"number_words": "metres"}, "not a list of argument names"),
    ({"number_words": 5}, "not a list of argument names"),
    ({"opn": "<act>"}, "unknown key(s) opn"),
    ("<act>", "expected a mapping"),
])  # fmt: skip
def test_a_bad_format_is_a_config_error_naming_the_problem(data, words):
    with pytest.raises(ConfigError) as info:
        ActionFormat.from_dict(data, "model_config.yaml: field 'actions'")
    assert words in info.value.problem and "field 'actions'" in info.value.problem and info.value.fix


def test_a_model_declares_its_format_in_its_config(tmp_path):
    assert ActionFormat.of(tiny_model(seed=0)) is None  # declares none: no actions
    config = OmniConfig.tiny(actions={"open": "<act>", "close": "</act>", "names": ["light", "stop"]})
    model = tiny_model(seed=0, actions=FMT.to_dict())
    assert ActionFormat.of(model) == FMT and ActionFormat.of(model.lm) == FMT
    config.to_file(tmp_path / "model_config.yaml")
    again = OmniConfig.from_file(tmp_path / "model_config.yaml")
    assert ActionFormat.from_dict(again.actions) == ActionFormat(names=("light", "stop"))
    with pytest.raises(ConfigError, match="field 'actions'.*max_chars"):
        OmniConfig.tiny(actions={"max_chars": -1})


@pytest.mark.parametrize("names", ["light", [1], ["turn left"]])
def test_the_lm_stage_checks_its_action_names(names):
    with pytest.raises(ConfigError, match="lm: action_names"):
        LMStage("text-delay", model=tiny_model(seed=0), action_names=names)
    assert LMStage("text-delay", model=tiny_model(seed=0), action_names=("light",)).action_names == ["light"]


# ---------------------------------------------------------------------------------------------- events
def test_action_events_carry_the_turn_and_their_fate():
    action = Action("light", {"room": "kitchen", "on": True}, index=1, step=12, session_id="robot/1", turn_id=4)
    assert isinstance(action, DataEvent)  # part of the answer: dropped with an interrupted turn, like its text
    assert (action.name, action.arguments, action.index, action.step) == ("light", {"room": "kitchen", "on": True},
                                                                          1, 12)
    warning = ActionWarning("bad-action-json", "action 'light' was dropped", markup="<act>light {", **same_turn(action))
    result = ActionResult("light", {"ok": True}, index=1, **same_turn(action))
    for event in (warning, result):
        assert isinstance(event, ControlEvent) and event.turn == ("robot/1", 4)  # never dropped
    assert json.loads(json.dumps({"name": result.name, "result": result.result})) == {"name": "light",
                                                                                      "result": {"ok": True}}
    assert Action("stop").arguments == {} and Action("stop").arguments is not Action("stop").arguments


# ------------------------------------------------------------------- the LM stage, scripted text stream
class ScriptedRule:
    """A real step rule whose text id at answer column p is `script[p]` (then eot) instead of the sampled one;
    everything else (audio ids, feeding back, stopping) is the wrapped rule's."""

    def __init__(self, inner, script, eot):
        self.inner, self.script, self.eot = inner, list(script), eot

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def apply(self, position, audio, text):
        if position <= len(self.script):
            text = self.script[position] if position < len(self.script) else self.eot
        return self.inner.apply(position, audio, text)


class Scripted(DecodingStrategy):
    """A registered strategy (by name) whose text stream says `text`: the model runs every forward and is fed the
    scripted text ids, so the LM stage sees them exactly as it would a trained model's."""

    def __init__(self, inner, text, tokenizer):
        self.inner, self.script = get_strategy(inner), tokenizer.encode(text)
        self.name, self.tasks = f"scripted-{self.inner.name}", self.inner.tasks

    def delays(self, layout):
        return self.inner.delays(layout)

    def prompt(self, layout, task, n_frames=None, text_ids=None):
        return self.inner.prompt(layout, task, n_frames=n_frames, text_ids=text_ids)

    def step_rule(self, layout, task, force_layout=False):
        return ScriptedRule(self.inner.step_rule(layout, task, force_layout), self.script, layout.eot)


ANSWER = f"turning on{LIGHT} the kitchen light"


def run_turn(model, text, *, strategy="text-delay", task="T1T2", max_steps=None, **stage_options):
    script = Scripted(strategy, text, model.tokenizer)
    steps = max_steps or len(script.script) + 4
    lm = LMStage(script, model=model, task=task, max_steps=steps, threads=1, **stage_options)
    if strategy == "batch-parallel":
        question = Features(features=torch.randn(12, model.config.whisper_adapter_dim, generator=torch.Generator()
                                                  .manual_seed(0)))
    else:
        question = TextIn("please turn on the light")
    out = asyncio.run(run_pipeline([lm], make_turn(0, [question]), timeout=120))
    return out, lm.results[("default", 0)]


@pytest.fixture(scope="module")
def acting_model():
    return tiny_model(seed=0, actions=FMT.to_dict())


def test_a_scripted_action_becomes_an_action_event_and_never_a_word(acting_model):
    out, result = run_turn(acting_model, ANSWER)
    assert acting_model.tokenizer.decode(result.text_ids) == ANSWER  # the model's text stream held the markup
    tokens = of_type(out, TextToken)
    assert "".join(t.text for t in tokens) == "turning on the kitchen light"
    assert all(t.text for t in tokens)  # no empty TextToken stands in for a token of the action
    (action,) = of_type(out, Action)
    assert (action.name, action.arguments, action.index) == ("light", {"room": "kitchen", "on": True}, 0)
    close_step = len(acting_model.tokenizer.encode(f"turning on{LIGHT}")) - 1
    assert action.step == close_step  # emitted by the step whose token closed it ...
    position = out.index(action)  # ... before any later text
    assert all(t.step < close_step for t in tokens if out.index(t) < position)
    assert all(t.step > close_step for t in tokens if out.index(t) > position)
    assert of_type(out, ActionWarning) == []
    assert_turn_ended(out, 0)


def test_a_model_that_declares_no_actions_passes_its_text_untouched():
    model = tiny_model(seed=0)
    out, _ = run_turn(model, ANSWER)
    assert "".join(t.text for t in of_type(out, TextToken)) == ANSWER
    assert of_type(out, Action, ActionWarning) == []


@pytest.mark.parametrize("text, code, plain", [
    ('ok <act>light {room: kitchen}</act>fine', "bad-action-json", "ok fine"),
    ("ok <act>fly</act>fine", "unknown-action", "ok fine"),
    ('ok <act>light {"room": "hall"', "unclosed-action", "ok "),
])  # fmt: skip
def test_a_malformed_action_is_a_warning_and_the_turn_ends_normally(acting_model, text, code, plain):
    out, result = run_turn(acting_model, f"{text}", action_names=["light", "stop"])
    (warning,) = of_type(out, ActionWarning)
    assert warning.code == code and warning.message and warning.turn == ("default", 0)
    assert "".join(t.text for t in of_type(out, TextToken)) == plain
    assert of_type(out, Action) == []
    assert result.stop_reason == "eot"
    assert_turn_ended(out, 0)
    if code == "unclosed-action":  # found at the turn's end: after the last text, before the turn ends
        assert out.index(warning) > max(out.index(t) for t in of_type(out, TextToken))


@pytest.mark.parametrize("strategy, task", [("text-delay", "T1A2"), ("parallel", "T1A2"),
                                            ("batch-parallel", "A1A2")])
def test_speaking_strategies_parse_the_text_and_leave_the_codec_frames_alone(acting_model, strategy, task):
    """Audio-output tasks with each strategy: the text is parsed as in text output; the codec frames are the
    model's audio stream, the same with and without an action format (the framework never edits the speech: a
    model is trained to keep actions out of it, docs/actions.md)."""
    answer = f"{MOVE}going forward two metres{LIGHT}"
    out, result = run_turn(acting_model, answer, strategy=strategy, task=task, max_steps=140)
    assert "".join(t.text for t in of_type(out, TextToken)) == "going forward two metres"
    assert [a.name for a in of_type(out, Action)] == ["move", "light"]
    assert [a.index for a in of_type(out, Action)] == [0, 1]
    frames = [e.codes for e in of_type(out, CodecFrame)]
    assert frames and frames == [tuple(f) for f in result.frames.tolist()]
    plain_model = tiny_model(seed=0)
    out_plain, _ = run_turn(plain_model, answer, strategy=strategy, task=task, max_steps=140)
    assert [e.codes for e in of_type(out_plain, CodecFrame)] == frames
    assert_turn_ended(out, 0)


def test_an_interrupted_turn_delivers_nothing_of_its_open_action_and_the_next_turn_acts(acting_model):
    """Interrupted inside an action: no Action and no unclosed-action warning of that turn (its parser is dropped
    with it), and the next turn of the session parses its own text from a clean state."""
    answer = "ok<act>stop" + " " * 200 + "</act>done"
    script = Scripted("text-delay", answer, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1)

    async def barge_in(event, bus):
        if isinstance(event, TextToken) and event.turn_id == 0:
            await bus.publish(Interruption(turn_id=0))

    events = make_turn(0, [TextIn("hi")]) + make_turn(1, [TextIn("again")])
    out = asyncio.run(run_pipeline([lm], events, on_output=barge_in, timeout=120))
    assert [(a.turn_id, a.name) for a in of_type(out, Action)] == [(1, "stop")]
    assert of_type(out, ActionWarning) == []
    assert [t.text for t in of_type(out, TextToken) if t.turn_id == 1] == list("okdone")
    assert_turn_ended(out, 0, "interrupted")
    assert_turn_ended(out, 1)
