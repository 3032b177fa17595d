"""`omnivox listen`'s conversation (docs/conversations.md): the silence that ends it (fake timestamps), the options
that wire memory and context into the LM stage, the reset reaching the LM through the VAD like the microphone's
audio, and actions on the console. Fast: no audio device."""

from __future__ import annotations

import asyncio
import io
import math
from types import SimpleNamespace

import pytest

from omnivox.cli import listen
from omnivox.cli.main import parse_args
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import Action, ActionWarning, TextIn
from omnivox.core.runtime.model_stages import LMStage
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.testing import make_turn, run_stage
from omnivox.plugins.random_models import tiny_model
from omnivox.plugins.silero_vad import SileroVAD


def test_the_conversation_ends_once_after_the_silence_that_follows_its_last_turn():
    timeout = listen.ConversationTimeout(120)
    assert not timeout.update(0.0, busy=False) and not timeout.update(500.0, busy=False)  # nobody spoke yet
    assert not timeout.update(1000.0, busy=True)  # hearing the question
    assert not timeout.update(1010.0, busy=True)  # answering, until the answer has played
    assert not timeout.update(1129.9, busy=False)
    assert timeout.update(1130.0, busy=False)  # 120 s without speech after the turn ended
    assert not timeout.update(1130.1, busy=False) and not timeout.update(9000.0, busy=False)  # once
    assert not timeout.update(9001.0, busy=True)  # a new conversation
    assert not timeout.update(9100.0, busy=False)
    assert not timeout.update(9110.0, busy=True)  # spoken within the silence: it goes on, counted from here
    assert not timeout.update(9229.0, busy=False)
    assert timeout.update(9230.0, busy=False)


@pytest.mark.parametrize("silence", [0, -1, math.nan])
def test_a_timeout_needs_a_positive_silence(silence):
    with pytest.raises(ConfigError, match="must be > 0"):
        listen.ConversationTimeout(silence)


def test_listen_conversation_options_memory_follows_the_model_unless_told_and_silence_0_turns_it_off():
    plain, trained = tiny_model(seed=0), tiny_model(seed=0, conversation={"memory": True})
    args = parse_args(["listen"])
    assert (args.memory, args.conversation_silence, args.context) == (None, 120.0, None)
    assert not listen.keeps_memory(args, plain) and listen.keeps_memory(args, trained)  # as the model declares
    assert listen.keeps_memory(parse_args(["listen", "--memory"]), plain)
    assert not listen.keeps_memory(parse_args(["listen", "--no-memory"]), trained)
    assert not listen.keeps_memory(parse_args(["listen", "--conversation-silence", "0"]), trained)
    listen.check_conversation_options(parse_args(["listen", "--conversation-silence", "0", "--no-memory"]))
    with pytest.raises(ConfigError, match="stand alone"):
        listen.check_conversation_options(parse_args(["listen", "--conversation-silence", "0", "--memory"]))
    with pytest.raises(ConfigError, match=">= 0 seconds"):
        listen.check_conversation_options(parse_args(["listen", "--conversation-silence", "-5"]))


def test_listen_builds_its_lm_stage_with_the_context_and_memory():
    args = parse_args(["listen", "--checkpoint", "random", "--memory", "--context", "battery forty percent"])
    pipeline, mic, *_ = listen.build(args, say=lambda line: None)  # builds only: no device is opened
    lm = listen.lm_stage(pipeline)
    assert (lm.conversations.memory, lm.conversations.context) == (True, "battery forty percent")
    assert mic.session_id == "default"


class Lines(list):
    """A stand-in for listen's Console: the lines it was told."""

    line = list.append


def test_the_reset_passes_the_vad_and_drops_the_lm_history_keeping_the_context():
    """What listen does on a timeout (`end_conversation`): a ResetConversation fed to the pipeline's input, through
    the microphone's place and the VAD, to the LM stage."""
    lm = LMStage("text-delay", model=tiny_model(seed=0), task="T1T2", max_steps=4, threads=1, memory=True,
                 context="battery forty percent")
    mic = Stage.from_function(lambda event: event, name="mic")  # passes data on, as the microphone's place
    pipeline, console = Pipeline([mic, SileroVAD(), lm]), Lines()

    async def scenario():
        await pipeline.start()
        try:
            for event in make_turn(1, [TextIn("turn on the light")]):
                await pipeline.feed(event)
            await pipeline.drain()
            conversation = lm.conversations.sessions["default"]
            before = [record.task for record in conversation.history]
            await listen.end_conversation(pipeline, "default", console, listen.ConversationTimeout(120))
            await pipeline.drain()
            return before, conversation
        finally:
            await pipeline.stop()

    before, conversation = asyncio.run(scenario())
    assert before == ["T1T2"] and conversation.history == [] and conversation.context_ids
    assert console == ["conversation reset: no speech for 120 s (the context stays)"]


def test_actions_and_action_warnings_are_printed_on_the_console_and_kept_in_the_turn_report():
    view, out = listen.TurnView(), io.StringIO()
    action = Action("light", {"room": "kitchen", "on": True}, turn_id=3)
    warning = ActionWarning("unknown-action", "no action 'fly'\x1b[2J", turn_id=3)
    passed = asyncio.run(run_stage(view, [action, warning]))
    assert [type(event).__name__ for event in passed] == ["Action", "ActionWarning"]  # both go on
    vad, speaker = SimpleNamespace(voice_started_at={}, speaking=False, turn_id=3), SimpleNamespace(turns={})
    listen.Console(vad, view, speaker, out=out).tick(-60.0)
    assert out.getvalue().splitlines() == [
        'turn 3: action light {"room": "kitchen", "on": true}',
        "turn 3: warning: action dropped (unknown-action): no action 'fly'\\x1b[2J",  # made terminal-safe
    ]
    assert view.reports[3].actions == [{"name": "light", "arguments": {"room": "kitchen", "on": True}}]


def test_listen_speculates_by_default_and_holds_the_guessed_answers():
    """listen guesses at each pause's first ask by default (docs/turn_taking.md), with HoldGuesses right after the
    LM; `--speculate off` and `--turn-end off` (nothing to guess from) answer only decided turns; asking for a
    guess without the detector, or a bar that is no number, is refused by name."""
    def built(*options):
        pipeline, _, vad, *_ = listen.build(parse_args(["listen", "--checkpoint", "random", *options]),
                                            say=lambda line: None)
        return vad.speculate, [type(s).__name__ for s in pipeline.stages]

    speculate, stages = built()
    assert speculate == 0 and stages[stages.index("LMStage") + 1] == "HoldGuesses"
    assert built("--speculate", "0.5")[0] == 0.5
    for options in (["--speculate", "off"], ["--turn-end", "off"]):
        speculate, stages = built(*options)
        assert speculate is None and "HoldGuesses" not in stages
    with pytest.raises(ConfigError, match="speculate needs an end-of-turn detector"):
        built("--turn-end", "off", "--speculate", "0")
    with pytest.raises(SystemExit):
        parse_args(["listen", "--speculate", "soon"])


def test_a_guess_taken_back_is_not_reported_as_a_turn_on_the_console():
    from omnivox.core.runtime.guesses import Guesses

    async def decided() -> Guesses:  # turn 1 withdrawn (the speaker went on), turn 2 stood
        guesses = Guesses()
        for turn, stands in ((1, False), (2, True)):
            guesses.guessed(("default", turn))
            guesses.decide(("default", turn), stands=stands)
        return guesses

    view, out = listen.TurnView(), io.StringIO()
    view.lm_done |= {1, 2}
    view.reports[2] = listen.TurnReport(2, text="ten")
    played = SimpleNamespace(finished_at=1.0, first_frame=0, last_frame=10, underruns=0, dropped=False,
                             first_played_at=None, first_audio_at=None)
    speaker = SimpleNamespace(turns={("default", 1): played, ("default", 2): played})
    vad = SimpleNamespace(voice_started_at={}, speaking=False, turn_id=2, guesses=asyncio.run(decided()))
    console = listen.Console(vad, view, speaker, out=out)
    console.tick(-60.0)
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == ["turn 2 [done]"]
    assert console.finished == 1
