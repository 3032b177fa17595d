"""Session memory (core/kernel/conversation.py, core/runtime/conversations.py, LMStage `memory`): a conversation's
next turn continues its cache and gives exactly the greedy tokens of a fresh prefill of the whole history, built
here by hand (context segment, each turn's single-turn prompt and the answer columns it fed back); alone and in a
BatchEngine, with each strategy; the context-full policy, truncation after an interruption, context updates, reset,
and the LM stage's wiring."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from omnivox.core.errors import ConfigError, InputError
from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.conversation import Conversation
from omnivox.core.kernel.conversation_format import ConversationFormat
from omnivox.core.kernel.generation import Done, TextPiece, TurnDecoder, generate, prepare
from omnivox.core.kernel.strategies import get_strategy
from omnivox.core.kernel.tokens import Prompt
from omnivox.core.runtime.events import Cancel, Features, TextIn, Withdrawn
from omnivox.core.runtime.model_stages import LMStage
from omnivox.plugins.random_models import never_emit_audio_specials, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

_g = torch.Generator().manual_seed(0)
AUDIO = {n: torch.randn(n, 64, generator=_g) for n in (4, 5, 6, 7, 9)}
CONTEXT = "battery forty percent"
TURNS = {  # strategy -> three turns (task, question): text and audio in, text and audio out
    "parallel": [("T1A2", [5, 9, 17, 3]), ("A1T2", AUDIO[5]), ("A1A2", AUDIO[7])],
    "text-delay": [("A1A2", AUDIO[6]), ("T1T2", [3, 4, 5, 6, 7]), ("T1A2", [7, 8])],
    "batch-parallel": [("A1A2", AUDIO[4]), ("T1A2", [5, 9, 17]), ("A1A2", AUDIO[5])],
}


def kwargs(task, question, max_steps=14) -> dict:
    source = {"audio_features": question} if isinstance(question, torch.Tensor) else {"text_ids": question}
    return dict(task=task, max_steps=max_steps, **source)


# ---- the reference: a fresh prefill of the whole history, laid out by hand ------------------------------------
def context_segment(layout, ids: list[int], rows: int) -> torch.Tensor:
    """(rows, S, n + 2): text [eot + 5, ids..., eot], audio pad_a (the default ConversationFormat)."""
    text = [layout.eot + 5, *ids, layout.eot]
    return torch.tensor([[layout.pad_a] * len(text)] * layout.audio_streams + [text]).expand(rows, -1, -1)


def fed_columns(layout, strategy: str, result) -> torch.Tensor:
    """(rows, S, n) what the turn fed back as the history keeps it: every column but a last one cut by max_steps /
    a cancel; batch parallel decoding fed row 1 pad_a on its audio streams, but both rows keep row 0's columns (the
    answer as spoken)."""
    n = result.steps if result.stop_reason in ("eoa", "eot") else result.steps - 1
    cols = result.tokens[:, :n]
    return cols.unsqueeze(0).expand(2 if strategy == "batch-parallel" else 1, -1, -1)


def fresh(model, strategy: str, context: list[int], past: list[tuple], task, question, max_steps=14):
    """Decodes (task, question) after `past` [(task, question, fed ids)] and the context, from one fresh prefill."""
    layout, strat = model.layout, get_strategy(strategy)
    rows = 2 if strategy == "batch-parallel" else 1
    parts = [context_segment(layout, context, rows)] if context else []
    feats, spans, at = [], [], parts[0].shape[-1] if parts else 0
    for t, q, fed in [*past, (task, question, None)]:
        audio = isinstance(q, torch.Tensor)
        own = strat.prompt(layout, t, n_frames=q.shape[0]) if audio else strat.prompt(layout, t, text_ids=q)
        if audio:
            feats.append(q)
            spans.append((at + 1, q.shape[0]))
        ids = own.ids if fed is None else own.ids[:1].expand(rows, -1, -1)  # a past turn: its spoken row, twice
        parts += [ids] + ([fed] if fed is not None else [])
        at += own.length + (fed.shape[-1] if fed is not None else 0)
    whole = Prompt(torch.cat(parts, dim=-1), None, (task,), tuple(tuple(spans) for _ in range(rows)) if feats else None)
    features = torch.cat(feats).unsqueeze(0).expand(rows, -1, -1) if feats else None
    setup = prepare(model, strategy=strategy, **kwargs(task, question, max_steps))
    decoder = TurnDecoder(replace(setup, prompt=whole, features=features))
    *_, done = decoder.run()
    return done.result, decoder


def context_ids(model, text=CONTEXT) -> list[int]:
    return model.tokenizer.encode(text)


# ---- alone ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", list(TURNS))
def test_a_three_turn_conversation_equals_a_fresh_prefill_of_its_history(strategy):
    model = tiny_model()
    conversation = Conversation(model, strategy=strategy, context=CONTEXT)
    past, state = [], None
    for i, (task, question) in enumerate(TURNS[strategy]):
        decoder = conversation.turn(**kwargs(task, question))
        own = prepare(model, strategy=strategy, **kwargs(task, question)).prompt
        if i:  # continued: the same state, and only the new turn's prompt is prefilled after it
            assert decoder.state is state and decoder.setup.prompt.length == own.length
        else:
            assert decoder.setup.prompt.length == len(context_ids(model)) + 2 + own.length
        *pieces, done = decoder.run()
        expected, reference = fresh(model, strategy, context_ids(model), past, task, question)
        assert torch.equal(done.result.tokens, expected.tokens), f"turn {i} ({task}) differs from a fresh prefill"
        assert done.result.stop_reason == expected.stop_reason
        assert [p.token for p in pieces if isinstance(p, TextPiece)] == expected.text_ids
        fed = fed_columns(model.layout, strategy, done.result).shape[-1]
        assert conversation.history[-1].length == own.length + fed
        assert decoder.state.length == reference.state.length == conversation.length
        past.append((task, question, fed_columns(model.layout, strategy, done.result)))
        state = decoder.state
    history = conversation.history
    assert [t.task for t in history] == [t for t, _ in TURNS[strategy]]
    for record, (_, _, fed) in zip(history, past, strict=True):
        assert torch.equal(record.answer, fed)
    assert conversation.state.length == conversation.length == conversation.state.cache.length


def test_turns_that_stop_on_eot_keep_every_appended_column():
    """A turn that stops on eot fed every column it appended (the eot column itself is never appended)."""
    model = tiny_model()
    eot = model.layout.eot
    with torch.no_grad():  # eot scores 3x the random model's favourite text id: text turns end after a few steps
        model.lm.lm_head.weight[eot] = 3 * model.lm.lm_head.weight[225]
    conversation, past = Conversation(model, strategy="parallel", context=CONTEXT), []
    for task, question in [("T1T2", [4, 8, 15]), ("A1T2", AUDIO[4]), ("T1A2", [16, 23, 42])]:
        decoder = conversation.turn(**kwargs(task, question))
        *_, done = decoder.run()
        expected, _ = fresh(model, "parallel", context_ids(model), past, task, question)
        assert torch.equal(done.result.tokens, expected.tokens), task
        fed = fed_columns(model.layout, "parallel", done.result)
        if task != "T1A2":
            assert done.result.stop_reason == "eot" and fed.shape[-1] == done.result.steps
        assert torch.equal(conversation.history[-1].answer, fed)
        past.append((task, question, fed))


def test_a_text_turn_on_a_post_adapter_model_fills_the_post_cache_for_the_next_turn():
    config = OmniConfig.tiny(codebook_size=4096, whisper_adapter_dim=64, post_adapter=True, post_adapter_layers=2)
    model = never_emit_audio_specials(OmniModel.random(config, seed=1))
    model.tokenizer = None
    conversation, past = Conversation(model, strategy="parallel"), []
    for task, question in [("T1T2", [4, 8, 15]), ("A1T2", AUDIO[4]), ("T1A2", [16, 23, 42])]:
        decoder = conversation.turn(**kwargs(task, question))
        *_, done = decoder.run()
        post = decoder.state.cache.post.layers[0].keys.shape[2]
        assert post == decoder.state.cache.backbone.layers[0].keys.shape[2] == decoder.state.length
        expected, _ = fresh(model, "parallel", [], past, task, question)
        assert torch.equal(done.result.tokens, expected.tokens), task
        past.append((task, question, fed_columns(model.layout, "parallel", done.result)))


# ---- in a batch -------------------------------------------------------------------------------------------------
def test_two_conversations_interleaved_in_one_batch_each_equal_their_fresh_prefill():
    model = tiny_model()
    plans = {"a": ("text-delay", TURNS["text-delay"], 0), "b": ("batch-parallel", TURNS["batch-parallel"], 3)}
    conversations = {k: Conversation(model, strategy=s, context=CONTEXT if k == "a" else None)
                     for k, (s, _, _) in plans.items()}
    engine, events, loose = BatchEngine(model), {k: [] for k in plans}, []  # events: per turn, its events
    step, budgets, interleaved = 0, {"a": [14, 9, 17], "b": [11, 16, 7]}, False  # turns join mid-way
    while step < 500:
        for k, (_, turns, start) in plans.items():
            n = len(events[k])
            if step >= start and n < len(turns) and not conversations[k].decoding:
                task, question = turns[n]
                events[k].append([])
                engine.submit(events[k][-1].append, conversation=conversations[k],
                              **kwargs(task, question, budgets[k][n]))
        if step == 5:
            engine.submit(loose.append, task="T1A2", text_ids=[1, 2, 3], strategy="parallel", max_steps=20)
        shared = len(engine.active)
        engine.step()
        step += 1
        if shared > 1:
            interleaved = True
        if engine.idle and all(len(events[k]) == len(p[1]) and not conversations[k].decoding
                               for k, p in plans.items()):
            break
    assert interleaved and isinstance(loose[-1], Done) and engine.batch.valid.shape[0] == 0
    for k, (strategy, turns, _) in plans.items():
        past, ctx = [], context_ids(model) if k == "a" else []
        for i, ((task, question), turn_events) in enumerate(zip(turns, events[k], strict=True)):
            assert isinstance(turn_events[-1], Done)
            got = turn_events[-1].result
            expected, _ = fresh(model, strategy, ctx, past, task, question, budgets[k][i])
            assert torch.equal(got.tokens, expected.tokens), f"conversation {k} turn {i} differs from a fresh prefill"
            past.append((task, question, fed_columns(model.layout, strategy, got)))


def test_a_failed_batched_step_makes_the_next_turn_prefill_the_history_afresh(monkeypatch):
    model = tiny_model()
    conversation, engine, got = Conversation(model, context=CONTEXT), BatchEngine(model), []
    (t1, q1), (t2, q2), (t3, q3) = TURNS["text-delay"]
    engine.submit(got.append, conversation=conversation, **kwargs(t1, q1))
    while not engine.idle:
        engine.step()
    first = got[-1].result
    real_step, calls = model.lm.step, []

    def failing_step(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real_step(*args, **kw)

    monkeypatch.setattr(model.lm, "step", failing_step)
    engine.submit(got.append, conversation=conversation, **kwargs(t2, q2))
    while not engine.idle:
        engine.step()
    assert isinstance(got[-1], RuntimeError) and not conversation.decoding
    monkeypatch.setattr(model.lm, "step", real_step)
    decoder = engine.submit(got.append, conversation=conversation, **kwargs(t3, q3))
    own = prepare(model, **kwargs(t3, q3)).prompt
    assert decoder.setup.prompt.length == conversation.length + own.length > own.length  # re-prefilled
    while not engine.idle:
        engine.step()
    fed = fed_columns(model.layout, "text-delay", first)
    expected, _ = fresh(model, "text-delay", context_ids(model), [(t1, q1, fed)], t3, q3)
    assert torch.equal(got[-1].result.tokens, expected.tokens)  # the failed turn left no trace
    assert [t.task for t in conversation.history] == [t1, t3]


# ---- policies ---------------------------------------------------------------------------------------------------
def test_when_the_context_is_full_the_oldest_whole_turns_go_and_the_rest_is_prefilled_once():
    model = tiny_model(block_size=64)
    ctx = context_ids(model, "kitchen")  # 9 positions
    conversation = Conversation(model, strategy="text-delay", context="kitchen")
    questions = [[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26], [31, 32, 33, 34, 35, 36]]  # prompts of 9
    results = []
    for question in questions[:2]:
        *_, done = conversation.turn(**kwargs("T1A2", question, 12)).run()
        results.append(done.result)
    assert conversation.length == 9 + 2 * (9 + 11) == 49  # 49 + 9 + 12 > 64: turn 1 must go
    state = conversation.state
    decoder = conversation.turn(**kwargs("T1A2", questions[2], 12))
    assert decoder.state is not state and decoder.state.length == 0  # a fresh cache
    assert decoder.setup.prompt.length == 9 + 20 + 9  # context + turn 2 + the new prompt, prefilled once
    *_, done = decoder.run()
    fed2 = fed_columns(model.layout, "text-delay", results[1])
    expected, _ = fresh(model, "text-delay", ctx, [("T1A2", questions[1], fed2)], "T1A2", questions[2], 12)
    assert torch.equal(done.result.tokens, expected.tokens)
    assert [int(t.prompt.ids[0, -1, 1]) for t in conversation.history] == [21, 31]
    assert conversation.state.length == conversation.length == 49


def test_a_full_context_is_cut_to_the_low_water_mark_so_the_next_turns_continue_the_cache():
    """low_water 1.0 (drop only what must go) re-prefills every turn once the context is full; 0.5 cuts the history
    to half the block (the newest turns stay), so the next turns continue that cache. A turn after a cut decodes
    exactly as a fresh prefill of the kept turns."""
    model = tiny_model(block_size=64)
    questions = [[11 + 10 * i, 12 + 10 * i, 13 + 10 * i] for i in range(10)]
    refills = {}
    for low_water in (1.0, 0.5):
        conversation = Conversation(model, strategy="text-delay", low_water=low_water)
        refills[low_water] = []
        for i, question in enumerate(questions):
            decoder = conversation.turn(**kwargs("T1T2", question, 6), turn_id=i)
            kept = conversation.history  # the earlier turns this one sees
            if i and decoder.state.length == 0:  # a fresh cache: turns were cut
                refills[low_water].append(i)
                ids = [t.turn_id for t in kept]
                assert ids == list(range(i - len(ids), i)) and ids  # the newest turns stay, the latest always
                assert low_water == 1.0 or len(ids) == 1 or sum(t.length for t in kept) <= 0.5 * 64
                *_, done = decoder.run()
                past = [("T1T2", questions[t.turn_id], t.answer) for t in kept]
                expected, _ = fresh(model, "text-delay", [], past, "T1T2", question, 6)
                assert torch.equal(done.result.tokens, expected.tokens)
            else:
                [*decoder.run()]
    assert len(refills[0.5]) < len(refills[1.0]) and refills[0.5], refills
    assert refills[1.0] == list(range(refills[1.0][0], len(questions)))  # full: every turn re-prefills
    with pytest.raises(InputError, match="low_water must be a share"):
        Conversation(model, low_water=0)


def test_a_declared_answer_reserve_keeps_the_history_beside_a_large_max_steps():
    """max_steps 600 in a 64-position model would push every earlier turn out; the model's declared answer_reserve
    (ConversationFormat) bounds what a turn keeps free, and an answer longer than that stops at the context's end."""
    model = tiny_model(block_size=64)
    for reserve, kept in ((None, 0), (12, 1)):
        conversation = Conversation(model, strategy="text-delay", format=ConversationFormat(answer_reserve=reserve))
        *_, first = conversation.turn(**kwargs("T1A2", [11, 12, 13, 14, 15, 16], 12)).run()
        decoder = conversation.turn(**kwargs("T1A2", [21, 22, 23], 600))
        *_, done = decoder.run()
        assert len(conversation.history) == kept + 1
        assert done.result.stop_reason == "context" and decoder.state.length == 64
    with pytest.raises(ConfigError, match="answer_reserve 0 is not a positive number"):
        ConversationFormat.from_dict({"answer_reserve": 0})


def test_a_prompt_that_cannot_fit_beside_the_context_is_refused():
    model = tiny_model(block_size=64)
    conversation = Conversation(model, context="kitchen")
    with pytest.raises(InputError, match="the context .* and the prompt .* exceed"):
        conversation.turn(**kwargs("T1A2", list(range(1, 60))))
    decoder = Conversation(model).turn(**kwargs("T1A2", list(range(1, 40)), 20))
    *_, done = decoder.run()
    assert decoder.state.length == 42 + 19
    with pytest.raises(InputError, match="history .61 positions. and the prompt .32. exceed the model's context"):
        TurnDecoder(prepare(model, **kwargs("T1A2", list(range(1, 30)))), decoder.state)


def test_after_an_interruption_the_history_holds_only_the_delivered_columns():
    model = tiny_model()
    conversation = Conversation(model, strategy="text-delay", context=CONTEXT)
    (t1, q1), (t2, q2), (t3, q3) = TURNS["text-delay"][0], ("T1A2", [40, 41, 42]), TURNS["text-delay"][2]
    *_, first = conversation.turn(**kwargs(t1, q1), turn_id=1).run()
    pieces = []
    for piece in conversation.turn(**kwargs(t2, q2, 20), turn_id=2).run():
        pieces.append(piece)
        if len(pieces) == 9:
            break  # the listener went away: the turn ends as cancelled
    assert pieces[-1].step < 19
    assert conversation.history[-1].columns > 6
    conversation.truncate(6, turn_id=2)  # six answer columns were played
    assert conversation.history[-1].answer.shape[-1] == 6
    cut_answer = conversation.history[-1].answer
    assert conversation.state.length == conversation.length == conversation.state.cache.length
    assert conversation.state.cache.backbone.layers[0].keys.shape[2] == conversation.length
    with pytest.raises(InputError, match="not the conversation's last turn"):
        conversation.truncate(2, turn_id=1)
    decoder = conversation.turn(**kwargs(t3, q3), turn_id=3)
    assert decoder.setup.prompt.length == prepare(model, **kwargs(t3, q3)).prompt.length  # continued, not re-prefilled
    *_, third = decoder.run()
    full, _ = fresh(model, "text-delay", context_ids(model), [(t1, q1, fed_columns(model.layout, "text-delay",
                                                                                     first.result))], t2, q2, 20)
    kept = fed_columns(model.layout, "text-delay", full)[..., :6]
    assert torch.equal(cut_answer, kept)  # the first six columns, as the full turn has them
    past = [(t1, q1, fed_columns(model.layout, "text-delay", first.result)), (t2, q2, kept)]
    expected, _ = fresh(model, "text-delay", context_ids(model), past, t3, q3)
    assert torch.equal(third.result.tokens, expected.tokens)
    untruncated, _ = fresh(model, "text-delay", context_ids(model), past[:1] + [(t2, q2, fed_columns(
        model.layout, "text-delay", full)[..., :8])], t3, q3)
    assert not torch.equal(untruncated.tokens, third.result.tokens)  # the cut columns would have mattered


@pytest.mark.parametrize("while_decoding", [False, True])
def test_a_withdrawn_turn_leaves_the_history_and_the_next_turn_continues_as_if_never_asked(while_decoding):
    """A question taken back (asked on a guess, the speaker went on): forgotten after it ended, or while it decoded
    (applied at its end); the next turn continues the cache and equals a fresh prefill without it."""
    model = tiny_model()
    conversation = Conversation(model, strategy="text-delay", context=CONTEXT)
    (t1, q1), (t2, q2), (t3, q3) = TURNS["text-delay"]
    *_, first = conversation.turn(**kwargs(t1, q1), turn_id=1).run()
    length = conversation.length
    guess = conversation.turn(**kwargs(t2, q2), turn_id=2)
    if while_decoding:
        pieces = guess.run()
        next(pieces)
        assert conversation.forget(2) and not conversation.forget(1)  # only the last turn can go
        for _ in pieces:
            pass
    else:
        for _ in guess.run():
            pass
        assert not conversation.forget(1) and conversation.forget(2)
    assert [t.turn_id for t in conversation.history] == [1]
    assert conversation.state.length == conversation.length == length == conversation.state.cache.length
    decoder = conversation.turn(**kwargs(t3, q3), turn_id=3)
    assert decoder.setup.prompt.length == prepare(model, **kwargs(t3, q3)).prompt.length  # continued
    *_, third = decoder.run()
    expected, _ = fresh(model, "text-delay", context_ids(model),
                        [(t1, q1, fed_columns(model.layout, "text-delay", first.result))], t3, q3)
    assert torch.equal(third.result.tokens, expected.tokens)


def test_a_context_update_changes_the_next_turn_prompt_and_only_then():
    model = tiny_model()
    conversation = Conversation(model, strategy="parallel", context="battery forty percent")
    (t1, q1), (t2, q2), (t3, q3) = TURNS["parallel"]
    d1 = conversation.turn(**kwargs(t1, q1))
    old = context_segment(model.layout, context_ids(model), 1)
    assert torch.equal(d1.setup.prompt.ids[..., :old.shape[-1]], old)
    *_, first = d1.run()
    length, state = conversation.state.length, conversation.state
    conversation.set_context("battery ten percent, in the kitchen")
    assert conversation.state is state and state.length == length and len(conversation.history) == 1  # not yet
    d2 = conversation.turn(**kwargs(t2, q2))
    new_ctx = context_ids(model, "battery ten percent, in the kitchen")
    new = context_segment(model.layout, new_ctx, 1)
    assert torch.equal(d2.setup.prompt.ids[..., :new.shape[-1]], new)  # re-prefilled: context, turn 1, turn 2
    assert d2.setup.prompt.length == new.shape[-1] + conversation.history[0].length + prepare(
        model, **kwargs(t2, q2)).prompt.length
    *_, second = d2.run()
    past = [(t1, q1, fed_columns(model.layout, "parallel", first.result))]
    expected, _ = fresh(model, "parallel", new_ctx, past, t2, q2)
    assert torch.equal(second.result.tokens, expected.tokens)
    d3 = conversation.turn(**kwargs(t3, q3))
    assert d3.setup.prompt.length == prepare(model, **kwargs(t3, q3)).prompt.length  # continued again
    *_, third = d3.run()
    past.append((t2, q2, fed_columns(model.layout, "parallel", second.result)))
    expected, _ = fresh(model, "parallel", new_ctx, past, t3, q3)
    assert torch.equal(third.result.tokens, expected.tokens)
    before, _ = fresh(model, "parallel", context_ids(model), past, t3, q3)
    assert not torch.equal(before.tokens, third.result.tokens)  # the context changed the (spoken) answer


def test_reset_drops_the_history_and_keeps_the_context():
    model = tiny_model()
    conversation = Conversation(model, strategy="text-delay", context=CONTEXT)
    for task, question in TURNS["text-delay"][:2]:
        [*conversation.turn(**kwargs(task, question)).run()]
    assert len(conversation.history) == 2
    conversation.reset()
    assert conversation.history == [] and conversation.context_ids == context_ids(model)
    task, question = TURNS["text-delay"][2]
    decoder = conversation.turn(**kwargs(task, question))
    *_, done = decoder.run()
    expected, _ = fresh(model, "text-delay", context_ids(model), [], task, question)
    own = prepare(model, **kwargs(task, question)).prompt
    assert decoder.setup.prompt.length == len(context_ids(model)) + 2 + own.length
    assert torch.equal(done.result.tokens, expected.tokens)


def test_without_memory_a_conversation_keeps_only_its_context():
    model = tiny_model()
    conversation = Conversation(model, strategy="text-delay", context=CONTEXT, memory=False)
    for task, question in TURNS["text-delay"]:
        decoder = conversation.turn(**kwargs(task, question))
        *_, done = decoder.run()
        expected, _ = fresh(model, "text-delay", context_ids(model), [], task, question)
        assert torch.equal(done.result.tokens, expected.tokens), task
        assert conversation.history == [] and conversation.state.length == len(context_ids(model)) + 2


# ---- the declared format and bad input -----------------------------------------------------------------------------
def test_the_model_declares_the_conversation_format():
    assert ConversationFormat.of(OmniModel.random(OmniConfig.tiny(), seed=0)) == ConversationFormat()
    assert ConversationFormat().memory is False  # Mini-Omni checkpoints declare nothing: memory is opt-in
    model = tiny_model(conversation={"memory": True, "context_token": 9})
    fmt = ConversationFormat.of(model)
    assert fmt.memory and fmt.context_token == 9
    decoder = Conversation(model, context=[1, 2]).turn(**kwargs("T1A2", [3]))
    assert decoder.setup.prompt.ids[0, -1, :4].tolist() == [model.layout.eot + 9, 1, 2, model.layout.eot]
    with pytest.raises(ConfigError, match="unknown field.*memmory"):
        tiny_model(conversation={"memmory": True})
    with pytest.raises(ConfigError, match="context_token 2 is not a free text special"):
        tiny_model(conversation={"context_token": 2})
    with pytest.raises(ConfigError, match="history 'chatml' is unknown"):
        tiny_model(conversation={"history": "chatml"})


def test_bad_conversation_use_raises_naming_the_fix():
    model = tiny_model()
    pair = Conversation(model, strategy="batch-parallel")
    *_, done = pair.turn(**kwargs("A1A2", AUDIO[4])).run()
    with pytest.raises(InputError, match="keep one strategy per conversation"):
        pair.turn(strategy="text-delay", **kwargs("A1A2", AUDIO[5]))
    with pytest.raises(InputError, match="holds 2 rows but this turn's prompt has 1"):
        TurnDecoder(prepare(model, **kwargs("A1A2", AUDIO[5])), pair.state)
    open_turn = Conversation(model)
    open_turn.turn(**kwargs("T1A2", [1, 2]))
    with pytest.raises(InputError, match="previous turn is still decoding"):
        open_turn.turn(**kwargs("T1A2", [3, 4]))
    with pytest.raises(InputError, match="columns must be a non-negative integer"):
        open_turn.truncate(-1)
    with pytest.raises(InputError, match="no turn to truncate"):
        Conversation(model).truncate(3)
    with pytest.raises(InputError, match="outside the text vocabulary"):
        Conversation(model, context=[model.layout.eot + 1])
    ids = model.layout.audio_prompt(4, "A1T2").ids  # 7 positions
    with pytest.raises(InputError, match=r"audio spans \[\[\(5, 4\)\]\] do not fit 1 rows of 7 positions"):
        model.lm(ids, AUDIO[4].unsqueeze(0), audio_spans=[[(5, 4)]])


# ---- the LM stage -----------------------------------------------------------------------------------------------
def _event(session: str, turn: int, question):
    if isinstance(question, torch.Tensor):
        return Features(features=question.numpy(), session_id=session, turn_id=turn)
    return TextIn(text=question, session_id=session, turn_id=turn)


async def _turn(stage, event, stop_after: int | None = None) -> list:
    out = []
    async for produced in stage.process(event):
        out.append(produced)
        if stop_after is not None and len(out) == stop_after:
            break  # the turn's consumer goes away (what an interruption does)
    return out


def test_the_lm_stage_keeps_one_conversation_per_session():
    model = tiny_model()
    sessions = {"s0": [("T1A2", "what is the time"), ("A1A2", AUDIO[5]), ("T1A2", "and after that")],
                "s1": [("A1A2", AUDIO[9]), ("T1A2", "hello there"), ("A1A2", AUDIO[4])]}

    async def session(stage, name):
        for turn, (_, question) in enumerate(sessions[name], start=1):
            await _turn(stage, _event(name, turn, question))

    async def main():
        stage = LMStage("text-delay", model=model, max_steps=12, memory=True, context=CONTEXT)
        await stage.setup()
        await asyncio.gather(*(session(stage, name) for name in sessions))
        await stage.teardown()
        return stage

    stage = asyncio.run(main())
    for name, turns in sessions.items():
        alone = Conversation(model, strategy="text-delay", context=CONTEXT)
        for turn, (task, question) in enumerate(turns, start=1):
            source = {"audio_features": question} if isinstance(question, torch.Tensor) else {"text_ids": question}
            *_, done = alone.turn(task=task, max_steps=12, **source).run()
            assert torch.equal(stage.results[(name, turn)].tokens, done.result.tokens), f"{name} turn {turn}"
        assert len(stage.conversations.sessions[name].history) == 3


def test_the_lm_stage_truncates_a_cut_turn_frees_on_cancel_and_offers_reset_and_context():
    model = tiny_model()
    questions = ["turn on the light", "what else", "thanks"]

    async def main():
        stage = LMStage("parallel", model=model, max_steps=16, memory=True)
        await stage.setup()
        stage.set_context("s", "in the kitchen")
        await _turn(stage, _event("s", 1, questions[0]))
        cut = await _turn(stage, _event("s", 2, questions[1]), stop_after=4)
        await _turn(stage, _event("s", 3, questions[2]))
        conversation = stage.conversations.sessions["s"]
        history = conversation.history
        assert conversation.state.length == conversation.length == conversation.state.cache.length  # cropped
        stage.reset_conversation("s")
        after_reset = conversation.history, conversation.context_ids
        await stage.on_interrupt(Cancel(session_id="s", turn_id=None))
        await stage.teardown()
        return stage, cut, history, after_reset

    stage, cut, history, (after_reset, ctx_after_reset) = asyncio.run(main())
    delivered = max(e.step for e in cut) + 1
    kept = history[1].answer.shape[-1]
    assert kept == min(delivered, history[1].columns - 1) and kept < 15  # cut: far fewer than the 15 fed in full
    alone = Conversation(model, strategy="parallel", context="in the kitchen")
    *_, first = alone.turn(**kwargs("T1A2", questions[0], 16)).run()
    [*alone.turn(**kwargs("T1A2", questions[1], 16)).run()]
    alone.truncate(kept)
    *_, third = alone.turn(**kwargs("T1A2", questions[2], 16)).run()
    assert torch.equal(stage.results[("s", 1)].tokens, first.result.tokens)
    assert torch.equal(stage.results[("s", 3)].tokens, third.result.tokens)
    assert after_reset == [] and ctx_after_reset == context_ids(model, "in the kitchen")
    assert "s" not in stage.conversations.sessions  # the session ended: its conversation is freed


def test_the_lm_stage_forgets_a_withdrawn_turn():
    """Withdrawn (a transport's `interrupt` with `withdraw`) after the guess was cut: the next turn continues the
    history without it."""
    model = tiny_model()
    questions = ["turn on the light", "what is", "what is the time"]

    async def main():
        stage = LMStage("text-delay", model=model, max_steps=12, memory=True)
        await stage.setup()
        await _turn(stage, _event("s", 1, questions[0]))
        await _turn(stage, _event("s", 2, questions[1]), stop_after=3)  # the guess, interrupted
        assert await _turn(stage, Withdrawn(session_id="s", turn_id=2)) == []  # consumed, nothing produced
        await _turn(stage, _event("s", 3, questions[2]))
        history = [t.turn_id for t in stage.conversations.sessions["s"].history]
        await stage.teardown()
        return stage, history

    stage, history = asyncio.run(main())
    assert history == [1, 3]
    alone = Conversation(model, strategy="text-delay")
    [*alone.turn(**kwargs("T1A2", questions[0], 12)).run()]
    *_, third = alone.turn(**kwargs("T1A2", questions[2], 12)).run()
    assert torch.equal(stage.results[("s", 3)].tokens, third.result.tokens)


def test_the_lm_stage_without_memory_keeps_no_conversation():
    model = tiny_model()

    async def main():
        stage = LMStage("text-delay", model=model, max_steps=10)
        await stage.setup()
        for turn, question in enumerate(["one", "two"], start=1):
            await _turn(stage, _event("s", turn, question))
        await stage.teardown()
        return stage

    stage = asyncio.run(main())
    assert stage.conversations.sessions == {}
    alone = generate(model, task="T1A2", text_ids="two", max_steps=10)
    assert torch.equal(stage.results[("s", 2)].tokens, alone.tokens)


def test_a_model_that_reads_numbers_as_words_gets_its_context_spelled():
    """A model declaring `context_numbers: words` (the demo model) reads "45%" as "forty five percent"; others
    read the context as given; an unknown choice is refused by name."""
    model = tiny_model()
    spelled = Conversation(model, strategy="text-delay", context="battery: 45%",
                           format=ConversationFormat(context_numbers="words"))
    assert spelled.context_ids == model.tokenizer.encode("battery: forty five percent")
    spelled.set_context("battery: 5%")
    assert spelled.context_ids == model.tokenizer.encode("battery: five percent")
    plain = Conversation(model, strategy="text-delay", context="battery: 45%")
    assert plain.context_ids == model.tokenizer.encode("battery: 45%")
    with pytest.raises(ConfigError, match="context_numbers 'digits' is unknown"):
        ConversationFormat.from_dict({"context_numbers": "digits"})
