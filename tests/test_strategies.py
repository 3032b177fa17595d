"""Decoding strategies: layout <-> extraction round trips, declared delays, the training alignment, the step
rule's upstream semantics and its forced layout, and registration through the plugin hook."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from omnivox.core.contracts import manager as plugins
from omnivox.core.errors import ConfigError, InputError, PluginError
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.strategies import (
    IGNORE_INDEX,
    BatchParallelStrategy,
    ParallelStrategy,
    Target,
    TextDelayStrategy,
    get_strategy,
    teacher_forcing,
)
from omnivox.core.kernel.tokens import AUDIO_OUT_TASKS, TASKS, TokenLayout

pytestmark = pytest.mark.usefixtures("single_thread")


NAMES = ("parallel", "text-delay", "batch-parallel")
EXPECTED_DELAYS = {"parallel": lambda A: (0,) * A, "text-delay": lambda A: tuple(range(1, A + 1)),
                   "batch-parallel": lambda A: tuple(range(1, A + 1))}


def layout_for(audio_streams: int, codebook: int = 50) -> TokenLayout:
    return TokenLayout(text_vocab_size=100 + 64, audio_vocab_size=codebook + 64, audio_streams=audio_streams)


@st.composite
def answers(draw):
    A = draw(st.integers(1, 9))
    layout = layout_for(A)
    task = draw(st.sampled_from(TASKS))
    text = draw(st.lists(st.integers(0, layout.eot - 1), max_size=15))
    frames = None
    if task in AUDIO_OUT_TASKS:
        N = draw(st.integers(0, 15))
        codes = draw(st.lists(st.integers(0, layout.codebook_size - 1), min_size=N * A, max_size=N * A))
        frames = torch.tensor(codes, dtype=torch.long).view(N, A)
    return layout, task, text, frames


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(answer=answers())
def test_layout_then_extract_returns_the_answer(name, answer):
    layout, task, text, frames = answer
    strategy = get_strategy(name)
    target = strategy.layout_target(layout, text, frames, task)
    assert target.ids.shape == target.loss_mask.shape and target.ids.shape[0] == layout.n_streams
    got_text, got_frames = strategy.extract(layout, target.ids)
    assert got_text == text
    expected = frames if frames is not None else torch.empty(0, layout.audio_streams, dtype=torch.long)
    assert torch.equal(got_frames, expected)
    if task in AUDIO_OUT_TASKS:  # generation stops before appending the stop column: nothing is lost
        got_text, got_frames = strategy.extract(layout, target.ids[:, :-1])
        assert got_text == text and torch.equal(got_frames, frames)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(answer=answers())
def test_layout_places_streams_at_the_declared_delays(name, answer):
    layout, task, text, frames = answer
    strategy = get_strategy(name)
    A = layout.audio_streams
    delays = strategy.delays(layout)
    assert delays == EXPECTED_DELAYS[name](A)
    ids = strategy.layout_target(layout, text, frames, task).ids
    L, n = ids.shape[1], len(text)
    assert ids[-1, :n].tolist() == text and ids[-1, n] == layout.eot
    if task not in AUDIO_OUT_TASKS:
        assert L == n + 1 and (ids[:-1] == layout.pad_a).all()
        return
    N = frames.shape[0]
    assert (ids[-1, n + 1:] == layout.pad_t).all()
    assert ids[A - 1, L - 1] == layout.eoa  # the stop column: the last stream's eoa
    assert L - 1 == max(max(delays) + N, n + 1)
    for i, d in enumerate(delays):
        row = ids[i].tolist()
        assert row[:d] == [layout.pad_a] * d
        assert row[d:d + N] == frames[:, i].tolist()
        assert row.count(layout.eoa) == 1 and row.index(layout.eoa) == L - 1 - (max(delays) - d)


def test_text_delay_frame_k_completes_at_column_A_plus_k():
    layout = layout_for(7)
    frames = torch.arange(21).view(3, 7)
    strategy = TextDelayStrategy()
    columns = strategy.layout_target(layout, [1, 2], frames, "A1A2").ids.T.tolist()
    assert strategy.complete_frame(layout, columns[:7], 0) is None
    assert strategy.complete_frame(layout, columns[:8], 0) == tuple(range(7))
    assert strategy.complete_frame(layout, columns[:10], 2) == tuple(range(14, 21))
    assert strategy.complete_frame(layout, columns, 3) is None  # eoa / pad: no fourth frame


def test_text_answer_masks_audio_streams():
    layout = layout_for(3)
    target = TextDelayStrategy().layout_target(layout, [5, 6], None, "A1T2")
    assert target.loss_mask.tolist() == [[False] * 3] * 3 + [[True] * 3]


def test_layout_target_rejects_bad_answers():
    layout = layout_for(3)
    strategy = TextDelayStrategy()
    with pytest.raises(InputError, match="no codec frames"):
        strategy.layout_target(layout, [1], None, "A1A2")
    with pytest.raises(InputError, match="expected integer ids of shape"):
        strategy.layout_target(layout, [1], torch.zeros(4, 5, dtype=torch.long), "A1A2")
    with pytest.raises(InputError, match="codec ids outside"):
        strategy.layout_target(layout, [1], torch.full((2, 3), layout.eoa), "A1A2")
    with pytest.raises(InputError, match="outside the text vocabulary"):
        strategy.layout_target(layout, [layout.eot], None, "T1T2")
    with pytest.raises(InputError, match="answers in text"):
        strategy.layout_target(layout, [1], torch.zeros(2, 3, dtype=torch.long), "A1T1")
    with pytest.raises(PluginError, match="unknown task 'TTS'.*A1A2, A1T1, A1T2, T1A2, T1T2"):
        strategy.layout_target(layout, [1], None, "TTS")


def test_teacher_forcing_alignment():
    layout = layout_for(2)
    prompt = layout.text_prompt([7, 8], "T1A2").ids[0]  # (3, 5)
    target = TextDelayStrategy().layout_target(layout, [9], torch.tensor([[1, 2], [3, 4]]), "T1A2")
    target.loss_mask[0, 0] = False
    inputs, labels = teacher_forcing(prompt, target)
    T, L = prompt.shape[1], target.length
    assert inputs.shape == labels.shape == (3, T + L - 1)
    assert torch.equal(inputs[:, :T], prompt) and torch.equal(inputs[:, T:], target.ids[:, :-1])
    assert (labels[:, :T - 1] == IGNORE_INDEX).all()
    assert labels[0, T - 1] == IGNORE_INDEX
    expected = torch.where(target.loss_mask, target.ids, IGNORE_INDEX)
    assert torch.equal(labels[:, T - 1:], expected)


@pytest.mark.parametrize("task", ["A1A2", "T1A2", "A1T2", "T1T2"])
def test_teacher_forcing_reproduces_greedy_generation(task):
    """Training and inference agree on alignment: teacher-forcing a greedy answer gives logits whose argmax
    at every trained position is that answer's label (same inputs at the same positions)."""
    from omnivox import generate

    model = OmniModel.random(OmniConfig.tiny(), seed=4)
    kwargs = (dict(audio_features=torch.randn(5, 32, generator=torch.Generator().manual_seed(0)))
              if task.startswith("A1") else dict(text_ids=[3, 4, 5]))
    with torch.inference_mode():
        result = generate(model, task=task, max_steps=12, **kwargs)
    strategy = TextDelayStrategy()
    prompt = strategy.prompt(model.layout, task, n_frames=5, text_ids=kwargs.get("text_ids"))
    grid = result.tokens
    mask = torch.ones_like(grid, dtype=torch.bool)
    if task in AUDIO_OUT_TASKS:  # after eot the text is forced, not sampled
        eot = grid[-1].tolist().index(model.layout.eot) if model.layout.eot in grid[-1] else grid.shape[1]
        mask[-1, eot + 1:] = False
    else:
        mask[:-1] = False
    inputs, labels = teacher_forcing(prompt.ids[0], Target(grid, mask))
    features = kwargs.get("audio_features")
    with torch.inference_mode():
        out = model.lm(inputs[None], None if features is None else features[None], prompt.audio_lengths)
    text_pred = out.text_logits[0].argmax(-1)  # (T + L - 1,)
    trained = labels[-1] != IGNORE_INDEX
    assert torch.equal(text_pred[trained], labels[-1][trained])
    if task in AUDIO_OUT_TASKS:
        audio_pred = out.audio_logits[0].argmax(-1)  # (A, T + L - 1)
        trained = labels[:-1] != IGNORE_INDEX
        assert trained.any() and torch.equal(audio_pred[trained], labels[:-1][trained])


# ---- the step rule ---------------------------------------------------------------------------------------
def run_rule(rule, columns):
    """Feeds scripted sampled (audio, text) columns; returns the appended columns until the rule stops."""
    out = []
    for position, (audio, text) in enumerate(columns):
        column = rule.apply(position, audio, text)
        if column is None:
            break
        out.append(column)
    return out


def test_rule_forces_pad_t_after_eot_and_stops_before_eoa():
    L = layout_for(2)
    rule = TextDelayStrategy().step_rule(L, "A1A2")
    script = [([1, L.eoa], L.eot), ([2, 3], 5), ([4, 5], L.eot), ([6, 7], 9), ([8, L.eoa], 10), ([0, 0], 1)]
    out = run_rule(rule, script)
    # prefill column unchecked (eoa and eot kept, no pad forcing); eot at step 2 kept, pad_t after; stop at 4
    assert out == [[1, L.eoa, L.eot], [2, 3, 5], [4, 5, L.eot], [6, 7, L.pad_t]]
    assert rule.stop_reason == "eoa"


def test_rule_for_text_answers_feeds_pad_a_and_stops_on_eot():
    L = layout_for(3)
    rule = ParallelStrategy().step_rule(L, "T1T2")
    out = run_rule(rule, [(None, L.eot), (None, 4), (None, L.eot), (None, 7)])
    assert out == [[L.pad_a] * 3 + [L.eot], [L.pad_a] * 3 + [4]]
    assert rule.stop_reason == "eot"
    assert rule.feed(out[1]).tolist() == [[[L.pad_a]] * 3 + [[4]]]


def test_batch_rule_feeds_text_to_both_rows_and_pads_row_one():
    L = layout_for(2)
    rule = BatchParallelStrategy().step_rule(L, "A1A2")
    assert (rule.audio_row, rule.text_row, rule.rows) == (0, 1, 2)
    assert rule.feed([3, 4, 9]).view(2, 3).tolist() == [[3, 4, 9], [L.pad_a, L.pad_a, 9]]


def test_force_layout_pads_before_delays_and_ends_every_stream_on_one_diagonal():
    L = layout_for(3)
    strategy = TextDelayStrategy()  # delays 1, 2, 3
    code = 7
    # stream 1 emits eoa for frame 2 (column 4); the model never learned pads before the delays
    script = [([code] * 3, 1)] * 4 + [([code, L.eoa, code], 2)] + [([code] * 3, 3)] * 10
    out = run_rule(strategy.step_rule(L, "T1A2", force_layout=True), script)
    grid = torch.tensor(out).T
    assert grid[:3].tolist() == [
        [L.pad_a, code, code, code, L.pad_a],  # frame 2's slot was sampled before the eoa: kept
        [L.pad_a, L.pad_a, code, code, L.eoa],
        [L.pad_a, L.pad_a, L.pad_a, code, code],
    ]  # stream 2's forced eoa (column 5, frame 2) is the stop column
    _, frames = strategy.extract(L, grid)
    assert frames.tolist() == [[code] * 3] * 2
    plain = run_rule(strategy.step_rule(L, "T1A2"), script)
    assert len(plain) == len(script)  # without forcing, only the last stream's own eoa stops


def test_force_layout_checks_the_prefill_column():
    L = layout_for(2)
    rule = ParallelStrategy().step_rule(L, "A1T1", force_layout=True)
    assert rule.apply(0, None, L.eot) is None and rule.stop_reason == "eot"


# ---- registration ----------------------------------------------------------------------------------------
def test_strategies_are_registered_by_the_builtin_plugin():
    registry = plugins.PluginManager().registry("strategies")
    assert {n: type(registry.create(n)) for n in NAMES} == {
        "parallel": ParallelStrategy, "text-delay": TextDelayStrategy, "batch-parallel": BatchParallelStrategy}
    assert all(registry.get(n).plugin == "strategies" for n in NAMES)


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(PluginError, match="unknown strategy 'delay'.*batch-parallel, parallel, text-delay"):
        get_strategy("delay")


def test_batch_parallel_generates_speech_answers_only():
    with pytest.raises(PluginError, match="unknown batch-parallel task 'T1T2'; valid choices: A1A2, T1A2\n"):
        BatchParallelStrategy().prompt(layout_for(2), "T1T2", text_ids=[1])


def test_batch_parallel_typed_prompt_pairs_t1a2_with_t1t2():
    L = layout_for(2)
    prompt = BatchParallelStrategy().prompt(L, "T1A2", text_ids=[4, 5])
    assert prompt.tasks == ("T1A2", "T1T2") and prompt.audio_lengths is None
    assert torch.equal(prompt.ids[0], L.text_prompt([4, 5], "T1A2").ids[0])
    assert torch.equal(prompt.ids[1], L.text_prompt([4, 5], "T1T2").ids[0])


def test_a_model_declares_the_strategy_used_where_none_is_named():
    """A model config's `decoding` is what generate, a conversation and the LM stage decode with when the caller
    names no strategy; a task that strategy cannot decode (T1T2) falls back to text-delay; a named one wins."""
    import asyncio

    from omnivox import generate
    from omnivox.core.kernel.conversation import Conversation
    from omnivox.core.runtime.model_stages import LMStage

    model = OmniModel.random(OmniConfig.tiny(decoding="batch-parallel"), seed=4)
    plain = OmniModel.random(OmniConfig.tiny(), seed=4)
    features = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        declared = generate(model, task="A1A2", audio_features=features, max_steps=12)
        batch = generate(model, task="A1A2", audio_features=features, max_steps=12, strategy="batch-parallel")
        named = generate(model, task="A1A2", audio_features=features, max_steps=12, strategy="text-delay")
        typed = generate(model, task="T1T2", text_ids=[3, 4, 5], max_steps=8)
        undeclared = generate(plain, task="A1A2", audio_features=features, max_steps=12)
    assert declared.strategy == "batch-parallel" and torch.equal(declared.tokens, batch.tokens)
    assert (named.strategy, typed.strategy, undeclared.strategy) == ("text-delay",) * 3
    assert Conversation(model).strategy.name == "batch-parallel"
    with pytest.raises(InputError, match="decodes with batch-parallel, which cannot answer T1T2") as info:
        Conversation(model).turn(task="T1T2", text_ids=[3, 4])
    assert "strategy='text-delay'" in info.value.fix
    assert Conversation(plain).strategy.name == Conversation(model, strategy="text-delay").strategy.name == "text-delay"

    async def stage_strategy(**params):
        stage = LMStage(model=model, threads=1, **params)
        await stage.setup()
        await stage.teardown()
        return stage.strategy.name

    assert asyncio.run(stage_strategy()) == "batch-parallel"
    assert asyncio.run(stage_strategy(task="T1T2")) == "text-delay"
    assert asyncio.run(stage_strategy(strategy="parallel")) == "parallel"


def test_a_declared_strategy_must_exist():
    with pytest.raises(ConfigError, match="field 'decoding'.*'batch' names no decoding strategy") as info:
        OmniConfig.tiny(decoding="batch")
    assert "batch-parallel" in info.value.fix
