"""Continuous batching (core/kernel/batching.py, LMStage): turns of different prompt lengths, strategies and
tasks joining at different steps decode in one batched forward per step and give exactly the tokens of the
same turns decoded alone (greedy); an interrupted turn leaves without disturbing the others."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import Done, FramePiece, TextPiece, TurnDecoder, generate, prepare
from omnivox.core.runtime.events import Features, TextIn
from omnivox.core.runtime.model_stages import LMStage
from omnivox.plugins.random_models import never_emit_audio_specials, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

_g = torch.Generator().manual_seed(0)
TURNS = [  # (joins before batched step, stream kwargs): prompts of 4 to 13 frames, 1- and 2-row turns
    (0, dict(task="A1A2", strategy="text-delay", frames=5)),
    (0, dict(task="A1A2", strategy="batch-parallel", frames=9)),
    (2, dict(task="A1T2", strategy="text-delay", frames=4)),
    (5, dict(task="T1A2", strategy="parallel", text=[5, 9, 17, 3, 88, 41])),
    (9, dict(task="A1A2", strategy="batch-parallel", frames=13)),
]
FEATURES = {k["frames"]: torch.randn(k["frames"], 64, generator=_g) for _, k in TURNS if "frames" in k}


def kwargs_of(spec: dict, max_steps: int = 24) -> dict:
    out = dict(task=spec["task"], strategy=spec["strategy"], max_steps=max_steps)
    if "frames" in spec:
        out["audio_features"] = FEATURES[spec["frames"]]
    else:
        out["text_ids"] = spec["text"]
    return out


def run_engine(model, turns, interrupt: dict[int, int] | None = None, max_rows: int = 16):
    """Drives the engine step by step; turn i joins before step `joins_at`; interrupt {turn: after n events}.
    Returns the events per turn and the engine (`engine.decoders`: the turns' decoders)."""
    engine, events, flags = BatchEngine(model, max_rows=max_rows), {}, {}
    engine.decoders = {}
    interrupt = interrupt or {}
    for i, _ in enumerate(turns):
        flags[i] = threading.Event()
    pending = sorted(range(len(turns)), key=lambda i: turns[i][0])

    def emitter(i):
        def emit(event):
            events.setdefault(i, []).append(event)
            if i in interrupt and len(events[i]) >= interrupt[i]:
                flags[i].set()
        return emit

    step = 0
    while pending or not engine.idle:
        while pending and turns[pending[0]][0] <= step:
            i = pending.pop(0)
            engine.decoders[i] = engine.submit(emitter(i), cancel=flags[i], **kwargs_of(turns[i][1]))
        engine.step()
        step += 1
    return events, engine


def test_batched_turns_give_the_tokens_of_the_same_turns_decoded_alone():
    model = tiny_model()
    alone = [generate(model, **kwargs_of(spec)) for _, spec in TURNS]
    events, engine = run_engine(model, TURNS)
    for i, expected in enumerate(alone):
        *pieces, done = events[i]
        assert isinstance(done, Done) and not any(isinstance(e, Done | Exception) for e in pieces)
        got = done.result
        assert got.stop_reason == expected.stop_reason == "max_steps"
        assert torch.equal(got.tokens, expected.tokens), f"turn {i} ({TURNS[i][1]}) differs from decoding alone"
        assert torch.equal(got.frames, expected.frames) and got.text_ids == expected.text_ids
        assert [p.codes for p in pieces if isinstance(p, FramePiece)] == [tuple(f) for f in got.frames.tolist()]
        assert [p.token for p in pieces if isinstance(p, TextPiece)] == got.text_ids
    # one forward per step for all rows: far fewer forwards than the turns' steps added up
    assert engine.steps < sum(a.steps for a in alone) - len(alone)
    assert engine.batch.valid.shape[0] == 0  # every row left


def test_each_turn_leaves_its_decode_state_as_decoded_alone():
    """A turn's DecodeState outlives it: the KV cache of its prompt and every fed column (the last sampled one is
    never fed), handed back from the batch without the left padding, as the same turn decoded alone leaves it;
    a batch of one gives `generate`'s tokens."""
    model = tiny_model()
    _, engine = run_engine(model, TURNS)
    for i, (_, spec) in enumerate(TURNS):
        alone = TurnDecoder(prepare(model, **kwargs_of(spec)))
        *_, done = alone.run()
        batched = engine.decoders[i].state
        assert batched.length == alone.state.length == alone.setup.prompt.length + done.result.steps - 1
        for mine, theirs in zip(batched.cache.backbone.layers, alone.state.cache.backbone.layers, strict=True):
            assert mine.keys.shape == theirs.keys.shape and mine.keys.shape[::2] == (alone.rows, batched.length)
            assert torch.allclose(mine.keys, theirs.keys, atol=1e-5)
            assert torch.allclose(mine.values, theirs.values, atol=1e-5)
        assert batched.cache.length == batched.length
    one, got = BatchEngine(model), []
    one.submit(got.append, **kwargs_of(TURNS[1][1]))
    while not one.idle:
        one.step()
    assert torch.equal(got[-1].result.tokens, generate(model, **kwargs_of(TURNS[1][1])).tokens)


def test_an_interrupted_turn_leaves_mid_way_and_the_others_keep_their_tokens():
    model = tiny_model()
    alone = [generate(model, **kwargs_of(spec)) for _, spec in TURNS]
    events, engine = run_engine(model, TURNS, interrupt={1: 6})  # the 2-row turn in the middle of the batch
    cut, state = events[1][-1].result, engine.decoders[1].state
    assert cut.stop_reason == "cancelled" and 0 < cut.steps < alone[1].steps
    assert state.length == engine.decoders[1].setup.prompt.length + cut.steps - 1 == state.cache.length
    assert torch.equal(cut.tokens, alone[1].tokens[:, :cut.steps])
    for i in (0, 2, 3, 4):
        assert torch.equal(events[i][-1].result.tokens, alone[i].tokens), f"turn {i} disturbed by the interruption"


def test_turns_beyond_max_rows_wait_for_free_rows_and_still_match():
    model = tiny_model()
    alone = [generate(model, **kwargs_of(spec)) for _, spec in TURNS]
    events, _ = run_engine(model, TURNS, max_rows=3)
    for i, expected in enumerate(alone):
        assert torch.equal(events[i][-1].result.tokens, expected.tokens)


def test_a_model_with_a_post_adapter_batches_exactly():
    config = OmniConfig.tiny(codebook_size=4096, whisper_adapter_dim=64, post_adapter=True, post_adapter_layers=2)
    model = never_emit_audio_specials(OmniModel.random(config, seed=1))
    turns = TURNS[:4]
    alone = [generate(model, **kwargs_of(spec)) for _, spec in turns]
    events, _ = run_engine(model, turns)
    for i, expected in enumerate(alone):
        assert torch.equal(events[i][-1].result.tokens, expected.tokens)


def test_bad_input_raises_at_submit_and_the_engine_goes_on():
    model = tiny_model()
    engine = BatchEngine(model)
    with pytest.raises(InputError, match="takes audio"):
        engine.submit(lambda e: None, task="A1A2", strategy="text-delay")
    assert engine.idle


def test_the_lm_stage_decodes_concurrent_sessions_as_alone():
    """Four sessions through one LMStage (its engine thread) at once, one of them interrupted after a few
    frames: the others' tokens equal decoding each turn alone, the interrupted one's are a prefix."""
    model = tiny_model()
    questions = [FEATURES[5], FEATURES[9], "Hello there", FEATURES[13]]
    alone = [generate(model, task="A1A2", audio_features=q, max_steps=24) if isinstance(q, torch.Tensor)
             else generate(model, task="T1A2", text_ids=q, max_steps=24) for q in questions]

    async def session(stage, i, question):
        if isinstance(question, torch.Tensor):
            event = Features(features=question.numpy(), session_id=f"s{i}", turn_id=1)
        else:
            event = TextIn(text=question, session_id=f"s{i}", turn_id=1)
        out = []
        async for produced in stage.process(event):
            out.append(produced)
            if i == 1 and len(out) == 3:
                break  # the turn's consumer goes away (what an interruption does): it leaves the batch
        return out

    async def main():
        stage = LMStage("text-delay", model=model, max_steps=24)
        await stage.setup()
        outputs = await asyncio.gather(*(session(stage, i, q) for i, q in enumerate(questions)))
        for _ in range(200):  # the cut turn's Done arrives at the engine's next step
            if stage.engine.idle:
                break
            await asyncio.sleep(0.01)
        await stage.teardown()
        return stage, outputs

    stage, outputs = asyncio.run(main())
    for i in (0, 2, 3):
        assert torch.equal(stage.results[(f"s{i}", 1)].tokens, alone[i].tokens), f"session {i}"
        frames = [e.codes for e in outputs[i] if hasattr(e, "codes")]
        assert frames == [tuple(f) for f in alone[i].frames.tolist()]
    assert len(outputs[1]) == 3 and stage.engine.idle and (("s1", 1) not in stage.results)
