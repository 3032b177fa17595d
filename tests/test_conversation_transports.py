"""Conversations, context and actions through the transports (issue 23 items 1-3, "per transport"): action results
entering a Conversation, the LM stage's conversation controls (SetContext, ResetConversation, ActionResult, Played),
and both transports end to end: MQTT on a REAL mosquitto (`omnivox.mqtt.Client` and a raw device) and HTTP
`/v1/chat` on the real server. The model is the tiny random one with a scripted text stream (tests/test_actions.py
`Scripted`), so the answer says a known action; what each turn's prompt held is recorded from the LM stage's
Conversation."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
import torch
from mqtt_support import Mosquitto
from test_actions import ANSWER, FMT, Scripted
from test_conversation import context_segment, fed_columns, kwargs

from omnivox.core.errors import InputError
from omnivox.core.kernel.conversation import Conversation
from omnivox.core.kernel.generation import TurnDecoder, prepare
from omnivox.core.kernel.tokens import Prompt
from omnivox.core.runtime.events import (
    Action,
    ActionResult,
    Interruption,
    Played,
    ResetConversation,
    SetContext,
    TextIn,
    TextToken,
)
from omnivox.core.runtime.model_stages import LMStage
from omnivox.core.runtime.testing import assert_turn_ended, make_turn, of_type, run_pipeline
from omnivox.plugins.random_models import tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")
RESULT = {"ok": True, "level": 40}


@pytest.fixture(scope="module")
def acting_model():
    return tiny_model(seed=0, actions=FMT.to_dict())


def result_segment(model, name, result, rows=1) -> torch.Tensor:
    """(rows, S, n + 2): text [eot + 6, ids of `<result>name {...}</result>`, eot], audio pad_a (the default)."""
    ids = model.tokenizer.encode(FMT.render_result(name, result))
    layout = model.layout
    text = [layout.eot + 6, *ids, layout.eot]
    return torch.tensor([[layout.pad_a] * len(text)] * layout.audio_streams + [text]).expand(rows, -1, -1)


# ---- the kernel: an action result enters the conversation -------------------------------------------------------
@pytest.mark.parametrize("continued", [True, False])
def test_an_action_result_is_prefilled_before_the_next_turn_and_equals_a_fresh_prefill(continued):
    """The result segment goes into the history right before the next turn's prompt: continuing the cache (only
    the result and the new prompt are prefilled) or re-prefilled with a new context; either way the next turn's
    tokens equal a fresh prefill of [context][turn 1][result][turn 2]."""
    model = tiny_model()
    chat = Conversation(model, strategy="parallel", context="in the kitchen")
    (t1, q1), (t2, q2) = ("T1A2", [5, 9, 17, 3]), ("T1A2", [7, 8])
    *_, first = chat.turn(**kwargs(t1, q1)).run()
    record = chat.add_result("light", RESULT, turn_id=0)
    assert record.task == "result" and chat.results == [record] and len(chat.history) == 1  # waits for the turn
    context = "in the kitchen" if continued else "in the hall"
    chat.set_context(context)
    decoder = chat.turn(**kwargs(t2, q2))
    own = prepare(model, **kwargs(t2, q2)).prompt
    segment = result_segment(model, "light", RESULT)
    if continued:
        assert decoder.setup.prompt.length == segment.shape[-1] + own.length
        assert torch.equal(decoder.setup.prompt.ids[..., :segment.shape[-1]], segment)
    *_, second = decoder.run()
    ctx = model.tokenizer.encode(context)
    whole = torch.cat([context_segment(model.layout, ctx, 1),
                       prepare(model, **kwargs(t1, q1)).prompt.ids,
                       fed_columns(model.layout, "parallel", first.result), segment, own.ids], dim=-1)
    reference = TurnDecoder(replace(prepare(model, **kwargs(t2, q2)), prompt=Prompt(whole, None, (t2,))))
    *_, expected = reference.run()
    assert torch.equal(second.result.tokens, expected.result.tokens)
    assert [t.task for t in chat.history] == [t1, "result", t2] and chat.results == []
    assert chat.state.length == chat.length == reference.state.length


def test_reset_drops_waiting_results_and_a_result_needs_a_json_value():
    model = tiny_model()
    chat = Conversation(model)
    chat.add_result("stop", None)
    chat.reset()
    assert chat.results == []
    with pytest.raises(InputError, match="is not JSON"):
        chat.add_result("light", {"bad": object()})


def test_results_follow_the_conversation_rows_and_the_declared_result_token():
    from omnivox.core.errors import ConfigError

    model = tiny_model(conversation={"result_token": 9})
    pair = Conversation(model, strategy="batch-parallel")
    [*pair.turn(task="A1A2", audio_features=torch.randn(4, 64), max_steps=6).run()]
    record = pair.add_result("stop", {"ok": True})
    assert record.prompt.ids.shape[0] == 2 and record.prompt.ids[0, -1, 0] == model.layout.eot + 9
    [*pair.turn(task="A1A2", audio_features=torch.randn(5, 64), max_steps=6).run()]
    assert [t.task for t in pair.history] == ["A1A2", "result", "A1A2"]
    assert pair.state.length == pair.length == pair.state.cache.length
    with pytest.raises(ConfigError, match="context_token and result_token are both 6"):
        tiny_model(conversation={"context_token": 6})


# ---- the LM stage consumes the conversation controls --------------------------------------------------------------
def spy_prompts(monkeypatch) -> dict:
    """Records each conversation turn's prefilled prompt ids by turn_id."""
    prompts, turn = {}, Conversation.turn

    def recording(self, **options):
        decoder = turn(self, **options)
        prompts[options.get("turn_id")] = decoder.setup.prompt.ids[0, -1].tolist()  # the text stream
        return decoder

    monkeypatch.setattr(Conversation, "turn", recording)
    return prompts


def contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i:i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


def test_the_lm_stage_applies_context_results_and_reset_between_turns(acting_model, monkeypatch):
    prompts = spy_prompts(monkeypatch)
    script = Scripted("text-delay", ANSWER, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1, memory=True)
    tok = acting_model.tokenizer.encode
    events = [SetContext("battery forty", turn_id=-1), *make_turn(0, [TextIn("light please")]),
              ActionResult("light", RESULT, index=0, turn_id=0), SetContext("battery ten", turn_id=-1),
              *make_turn(1, [TextIn("and now")]), ResetConversation(turn_id=-1), *make_turn(2, [TextIn("hi")])]
    out = asyncio.run(run_pipeline([lm], events, timeout=120))
    for turn in range(3):
        assert_turn_ended(out, turn)
    assert [(a.turn_id, a.name) for a in of_type(out, Action)] == [(0, "light"), (1, "light"), (2, "light")]
    assert not of_type(out, SetContext, ResetConversation, ActionResult)  # consumed by the LM stage
    eot = acting_model.layout.eot
    assert prompts[0][:len(tok("battery forty")) + 2] == [eot + 5, *tok("battery forty"), eot]
    assert prompts[1][:len(tok("battery ten")) + 2] == [eot + 5, *tok("battery ten"), eot]  # the new context
    assert contains(prompts[1], [eot + 6, *tok(FMT.render_result("light", RESULT)), eot])  # the result
    assert contains(prompts[1], tok("light please"))  # turn 0 is still in the history
    own = prepare(acting_model, strategy=script, task="T1T2", text_ids=tok("hi")).prompt.ids[0, -1].tolist()
    assert prompts[2] == [eot + 5, *tok("battery ten"), eot, *own]  # reset: the context and the turn alone
    assert [t.task for t in lm.conversations.sessions["default"].history] == ["T1T2"]


def test_played_keeps_only_the_delivered_columns_of_an_interrupted_turn(acting_model):
    """The LM finished the turn, but the client got only 3 columns before its interruption: Played cuts the
    history to those."""
    script = Scripted("text-delay", ANSWER, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1, memory=True)
    events = [*make_turn(0, [TextIn("light please")]), Played(3, turn_id=0)]
    asyncio.run(run_pipeline([lm], events, timeout=120))
    (record,) = lm.conversations.sessions["default"].history
    assert record.answer.shape[-1] == 3
    conversation = lm.conversations.sessions["default"]
    assert conversation.state.length == conversation.length == conversation.state.cache.length


def test_an_interrupted_turn_is_cut_at_what_the_lm_produced(acting_model):
    script = Scripted("text-delay", ANSWER, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1, memory=True)
    produced = []

    async def barge_in(event, bus):
        if isinstance(event, TextToken) and event.turn_id == 0:
            produced.append(event.step)
            if len(produced) == 2:
                await bus.publish(Interruption(turn_id=0))

    events = make_turn(0, [TextIn("hi")]) + make_turn(1, [TextIn("again")])  # turn 1 waits for turn 0's end
    out = asyncio.run(run_pipeline([lm], events, on_output=barge_in, timeout=120))
    assert_turn_ended(out, 0, "interrupted")
    cut, whole = lm.conversations.sessions["default"].history
    assert cut.answer.shape[-1] < whole.answer.shape[-1] == len(script.script)  # turn 0 kept only part


# ---- MQTT, on a real mosquitto ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    server = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield server
    server.kill()


def acting_stages(broker_url: str, model, answer: str = ANSWER, extra: int = 4, **lm):
    """mqtt in -> the LM with a scripted text stream (memory on) -> mqtt out: text answers that say an action."""
    from omnivox.plugins.mqtt.stages import MqttAudioInput, MqttAudioOutput

    script = Scripted("text-delay", answer, model.tokenizer)
    return [MqttAudioInput(broker_url, worker="conv"),
            LMStage(script, model=model, task="T1T2", max_steps=len(script.script) + extra, threads=1, memory=True,
                    **lm),
            MqttAudioOutput()]


async def running(stages):
    from omnivox.core.runtime.pipeline import Pipeline

    pipeline = Pipeline(stages)
    runner = asyncio.create_task(pipeline.run())
    while stages[0].service is None:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(stages[0].service.online.wait(), 10)
    return runner


def test_over_mqtt_actions_arrive_results_and_context_enter_the_next_turn_and_reset_empties(
        broker, acting_model, monkeypatch):
    from omnivox.mqtt import Client

    prompts = spy_prompts(monkeypatch)
    tok, eot = acting_model.tokenizer.encode, acting_model.layout.eot
    stages = acting_stages(broker.url, acting_model)
    lm = stages[1]
    called = []

    async def scenario():
        runner = await running(stages)
        try:
            async with Client(broker.url, site="robot") as client:
                session = await client.session(context="battery forty", on_action=called.append)
                sid = f"robot/{session.name}"
                first = await session.ask(text="turn on the kitchen light")
                await session.send_action_result(first.actions[0], RESULT)
                await session.set_context("battery ten")
                second = await session.ask(text="and now?")
                history = [t.task for t in lm.conversations.sessions[sid].history]
                await session.reset()
                third = await session.ask(text="hello")
                streamed = []

                async def collect():
                    async for action in session.actions():
                        streamed.append(action)

                collector = asyncio.create_task(collect())
                await session.close()
                await asyncio.wait_for(collector, 5)
                for _ in range(500):  # the session's Cancel reaches the LM stage
                    if sid not in lm.conversations.sessions:
                        break
                    await asyncio.sleep(0.01)
                return first, second, third, history, lm.conversations.sessions.get(sid), streamed
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    first, second, third, history, after_close, streamed = asyncio.run(scenario())
    for answer in (first, second, third):
        assert answer.ok, answer.errors
        assert answer.text == "turning on the kitchen light"  # the action never reaches the transcript
        assert [(a["turn"], a["index"], a["name"], a["arguments"]) for a in answer.actions] == [
            (answer.turn, 0, "light", {"room": "kitchen", "on": True})]
        events = [r.event for r in answer.replies]
        assert events.index("action") < events.index("turn-end")
    assert [a["turn"] for a in called] == [0, 1, 2] and streamed == called  # the callback and actions()
    assert prompts[0][:len(tok("battery forty")) + 2] == [eot + 5, *tok("battery forty"), eot]
    assert prompts[1][:len(tok("battery ten")) + 2] == [eot + 5, *tok("battery ten"), eot]  # mid-session update
    assert contains(prompts[1], [eot + 6, *tok(FMT.render_result("light", RESULT)), eot])  # the device's result
    assert history == ["T1T2", "result", "T1T2"]
    own = prepare(acting_model, strategy=lm.strategy, task="T1T2", text_ids=tok("hello")).prompt.ids[0, -1].tolist()
    assert prompts[2] == [eot + 5, *tok("battery ten"), eot, *own]  # after the reset: context and question only
    assert after_close is None  # the session ended: its conversation is freed


def test_over_mqtt_an_interrupted_turn_keeps_only_what_the_device_received(broker, acting_model):
    """The LM runs ahead of a slow link; the device interrupts after 3 transcript chunks: the output's Played cuts
    the history to the columns sent (the LM alone would keep all it wrote)."""
    from omnivox.mqtt import Client

    long_answer = "one two three four five six seven eight nine ten " * 8
    stages = acting_stages(broker.url, acting_model, answer=long_answer)
    lm = stages[1]
    stages.insert(2, slow_link_stage())

    async def scenario():
        runner = await running(stages)
        try:
            async with Client(broker.url, site="hall") as client:
                session = await client.session()
                turn = await session.send_text("tell me a long story")
                steps = []
                async for reply in turn:
                    if reply.event == "transcript-chunk":
                        steps.append(reply.data["step"])
                        if len(steps) == 3:
                            await session.interrupt()
                cut = turn.answer
                after = await session.ask(text="short")
                conversation = lm.conversations.sessions[f"hall/{session.name}"]
                return cut, max(steps), after, conversation
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    cut, last_step, after, conversation = asyncio.run(scenario())
    assert cut.reason == "interrupted" and after.ok
    first, second = conversation.history
    assert last_step + 1 < len(acting_model.tokenizer.encode(long_answer))  # it was cut
    assert last_step <= first.answer.shape[-1] <= last_step + 1  # what was sent, no more (the last may be unfed)
    assert conversation.state.length == conversation.length == conversation.state.cache.length


# ---- HTTP /v1/chat, on the real server --------------------------------------------------------------------------
def slow_link_stage(seconds: float = 0.02):
    from omnivox.core.runtime.stage import Stage

    async def slow_link(event):  # the answer leaves the server slower than the LM writes it
        await asyncio.sleep(seconds)
        return event

    return Stage.from_function(slow_link, consumes=(TextToken,), name="slow_link")


def chat(url: str, **body) -> tuple[int, list[dict]]:
    import requests

    response = requests.post(url + "/v1/chat", json=body, timeout=60)
    if response.status_code != 200:
        return response.status_code, [response.json()]
    return 200, [json.loads(line) for line in response.text.splitlines()]


def test_over_http_a_conversation_id_keeps_context_results_and_reset_and_actions_stream(acting_model, monkeypatch):
    import threading

    from http_support import serving, wait_until

    from omnivox.plugins.http.stages import HttpAudioInput, HttpAudioOutput

    prompts = spy_prompts(monkeypatch)
    tok, eot = acting_model.tokenizer.encode, acting_model.layout.eot
    script = Scripted("text-delay", ANSWER, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1, memory=True)
    stages = [HttpAudioInput(port=0, max_conversations=2), lm, slow_link_stage(), HttpAudioOutput()]
    with serving(stages=stages) as served:
        url, service = served.url, served.service
        status, first = chat(url, text="turn on the light", conversation="robot-1", context="battery forty")
        assert status == 200 and first[0] == {"event": "turn-start", "turn": 0, "conversation": "robot-1"}
        status, second = chat(url, text="and now", conversation="robot-1", context="battery ten",
                              action_results=[{"turn": 0, "index": 0, "name": "light", "result": RESULT}])
        sid = service.conversations["robot-1"].session_id
        history = served.call(lambda: [t.task for t in lm.conversations.sessions[sid].history])
        status, third = chat(url, text="hello", conversation="robot-1", reset=True)
        prompts = dict(prompts)  # robot-1's (the other conversations number their turns from 0 too)
        refused = {
            "bad-turn": chat(url, text="hi", conversation="robot-1", action_results=[
                {"turn": 3, "name": "light", "result": True}]),
            "bad-field": chat(url, text="hi", conversation="no spaces"),
            "needs-conversation": chat(url, text="hi", action_results=[]),
            "reset-not-bool": chat(url, text="hi", conversation="robot-1", reset="yes"),
        }
        # a conversation answering one request refuses another: 409 conversation-busy
        busy_answer = {}
        asking = threading.Thread(target=lambda: busy_answer.update(lines=chat(url, text="long", conversation="c2")))
        asking.start()
        assert wait_until(lambda: "c2" in service.conversations and service.conversations["c2"].busy)
        busy = chat(url, text="again", conversation="c2")
        asking.join(60)
        status_after_busy, _ = chat(url, text="now it is free", conversation="c2")
        # a one-off question with a context leaves nothing behind; a third conversation drops the least recent
        status_one_off, one_off = chat(url, text="hi", context="in the hall")
        chat(url, text="hi", conversation="c3")
        assert wait_until(lambda: served.call(lambda: sid not in lm.conversations.sessions))
        kept = list(service.conversations)
        assert wait_until(lambda: served.call(lambda: len(lm.conversations.sessions) == 2))
        leftover = served.call(lambda: sorted(lm.conversations.sessions))
        kept_sessions = sorted(service.conversations[name].session_id for name in kept)
        served.call(lambda: setattr(service.config, "conversation_idle_s", 1e-6))
        served.call(service._expire)
        expired = list(service.conversations)
    for lines in (first, second, third):
        events = [line["event"] for line in lines]
        assert "".join(line["text"] for line in lines if line["event"] == "text") == "turning on the kitchen light"
        (action,) = [line for line in lines if line["event"] == "action"]
        assert (action["name"], action["arguments"], action["turn"]) == ("light", {"room": "kitchen", "on": True},
                                                                         lines[0]["turn"])
        assert events.index("action") < events.index("turn-end")
    assert [lines[0]["turn"] for lines in (first, second, third)] == [0, 1, 2]  # turn ids go on per conversation
    assert prompts[1][:len(tok("battery ten")) + 2] == [eot + 5, *tok("battery ten"), eot]
    assert contains(prompts[1], [eot + 6, *tok(FMT.render_result("light", RESULT)), eot])
    assert history == ["T1T2", "result", "T1T2"]
    own = prepare(acting_model, strategy=script, task="T1T2", text_ids=tok("hello")).prompt.ids[0, -1].tolist()
    assert prompts[2] == [eot + 5, *tok("battery ten"), eot, *own]  # reset: the context stays
    assert {name: (status, lines[0]["error"]["code"]) for name, (status, lines) in refused.items()} == {
        "bad-turn": (400, "bad-turn"), "bad-field": (400, "bad-field"), "needs-conversation": (400, "bad-field"),
        "reset-not-bool": (400, "bad-field")}
    assert busy[0] == 409 and busy[1][0]["error"]["code"] == "conversation-busy"
    assert busy_answer["lines"][0] == 200 and status_after_busy == 200
    assert status_one_off == 200 and one_off[-1]["event"] in ("turn-end", "metrics")
    assert kept == ["c2", "c3"]  # robot-1, the least recently used, was dropped (max_conversations 2)
    assert leftover == kept_sessions  # the LM keeps only theirs: robot-1's and the one-off's context are freed
    assert expired == []  # idle conversations expire


# ---- `omnivox serve --memory` -----------------------------------------------------------------------------------
def test_serve_memory_follows_the_model_unless_asked(tmp_path):
    from omnivox.cli import serve
    from omnivox.cli.main import parse_args
    from omnivox.core.errors import ConfigError

    def lm_of(*argv):
        args = parse_args(["serve", "--broker", "mqtt://127.0.0.1:1", "--checkpoint", "random", *argv])
        pipeline = serve.build_pipeline(args, serve.settings(args), say=lambda line: None)
        return next(stage for stage in pipeline.stages if isinstance(stage, LMStage))

    assert lm_of().conversations.memory is None  # the default: what the model declares (random: nothing, so off)
    assert lm_of("--memory").conversations.memory is True
    assert lm_of("--no-memory").conversations.memory is False
    config = tmp_path / "serve.yaml"
    config.write_text("memory: true\n")
    assert lm_of("--config", str(config)).conversations.memory is True
    config.write_text("memory: sometimes\n")
    with pytest.raises(ConfigError, match="memory must be true or false"):
        serve.settings(parse_args(["serve", "--config", str(config)]))


def test_over_http_a_client_gone_mid_answer_interrupts_only_the_turn_and_the_history_keeps_what_was_written(
        acting_model):
    import requests
    from http_support import serving, wait_until

    from omnivox.plugins.http.stages import HttpAudioInput, HttpAudioOutput

    long_answer = "one two three four five six seven eight nine ten " * 8
    script = Scripted("text-delay", long_answer, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1, memory=True)
    with serving(stages=[HttpAudioInput(port=0), lm, slow_link_stage(0.05), HttpAudioOutput()]) as served:
        seen = []
        with requests.post(served.url + "/v1/chat", json={"text": "a story", "conversation": "c"}, stream=True,
                           timeout=60) as response:
            for line in response.iter_lines():
                event = json.loads(line)
                if event["event"] == "text":
                    seen.append(event["step"])
                    if len(seen) == 3:
                        break  # the client goes away
        assert wait_until(lambda: not served.service.conversations["c"].busy)
        status, after = chat(served.url, text="short", conversation="c")
        conversation = served.call(lambda: lm.conversations.sessions[served.service.conversations["c"].session_id])
        cut = served.call(lambda: conversation.history[0])
    assert status == 200 and after[0]["turn"] == 1  # the conversation went on
    assert max(seen) <= cut.answer.shape[-1] <= max(seen) + 6  # about what was written, far from the LM's lead
    assert cut.answer.shape[-1] < len(script.script)


def test_a_malformed_action_reaches_both_transports_as_an_action_warning_and_the_turn_goes_on(broker, acting_model):
    """MQTT `action-warning` and HTTP's `action-warning` line, before the turn's end; the text around it is
    delivered, no part of the action is."""
    import requests
    from http_support import serving

    from omnivox.mqtt import Client
    from omnivox.plugins.http.stages import HttpAudioInput, HttpAudioOutput

    answer = 'ok<act>light {"room": kitchen}</act> done'
    stages = acting_stages(broker.url, acting_model, answer=answer)

    async def over_mqtt():
        runner = await running(stages)
        try:
            async with Client(broker.url, site="warn") as client:
                session = await client.session()
                return await session.ask(text="lights")
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    mqtt = asyncio.run(over_mqtt())
    script = Scripted("text-delay", answer, acting_model.tokenizer)
    lm = LMStage(script, model=acting_model, task="T1T2", max_steps=len(script.script) + 4, threads=1)
    with serving(stages=[HttpAudioInput(port=0), lm, HttpAudioOutput()]) as served:
        lines = [json.loads(line) for line in requests.post(served.url + "/v1/chat", json={"text": "lights"},
                                                            timeout=60).text.splitlines()]
    assert mqtt.ok and mqtt.text == "ok done" and mqtt.actions == []
    assert [(w["turn"], w["code"]) for w in mqtt.action_warnings] == [(0, "bad-action-json")]
    events = [r.event for r in mqtt.replies]
    assert events.index("action-warning") < events.index("turn-end")
    assert "".join(line["text"] for line in lines if line["event"] == "text") == "ok done"
    (warning,) = [line for line in lines if line["event"] == "action-warning"]
    assert warning["code"] == "bad-action-json" and warning["turn"] == 0 and "kitchen" in warning["message"]
    assert [line["event"] for line in lines].index("action-warning") < [line["event"] for line in lines].index(
        "turn-end")
