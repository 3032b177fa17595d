"""Conversation lines in training (training/data.py `history` / `context`, collate.build_sequence): a line with a
history is laid out exactly as a Conversation prefills its turn (context segment, each earlier turn's prompt and
the answer columns it fed back, the new prompt, audio spans), with loss on its own answer only; lines without
them train as before; bad histories are named; a batch mixing conversation and single-turn rows trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.conversation import Conversation
from omnivox.core.kernel.conversation_format import ConversationFormat
from omnivox.core.kernel.generation import prepare
from omnivox.core.kernel.strategies import get_strategy, teacher_forcing
from omnivox.plugins.random_models import tiny_model
from omnivox.training.collate import IGNORE, build_sequence, collate
from omnivox.training.data import read_manifest
from omnivox.training.recipe import load_recipe
from omnivox.training.trainer import TrainingRecipe, train

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
CONTEXT = "battery: 40%, location: kitchen"
_g = torch.Generator().manual_seed(0)
AUDIO = {n: torch.randn(n, 64, generator=_g) for n in (5, 6, 7)}
QUESTION = "what now"
CASES = {  # name -> strategy, turn 1 task, turn 2 task
    "text-delay A1A2 A1A2": ("text-delay", "A1A2", "A1A2"),
    "text-delay A1T2 T1A2": ("text-delay", "A1T2", "T1A2"),
    "text-delay T1T2 A1T1": ("text-delay", "T1T2", "A1T1"),
    "parallel T1A2 A1T2": ("parallel", "T1A2", "A1T2"),
    "batch-parallel A1A2 A1A2": ("batch-parallel", "A1A2", "A1A2"),
    "batch-parallel T1A2 A1A2": ("batch-parallel", "T1A2", "A1A2"),
}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def question(task: str, frames: int, tokenizer) -> dict:
    """The turn's `Conversation.turn` arguments."""
    if task.startswith("A1"):
        return {"audio_features": AUDIO[frames]}
    return {"text_ids": tokenizer.encode(QUESTION)}


def manifest_line(directory: Path, line_id: str, task: str, frames: int, answer_text: str,
                  answer_frames: torch.Tensor | None, **extra) -> dict:
    """A prepared manifest line asking what `question` gives (features saved as .npy)."""
    row = {"id": line_id, "task": task, "answer_text": answer_text, **extra}
    if task.startswith("A1"):
        np.save(directory / f"{line_id}.npy", AUDIO[frames].numpy())
        row["question_features"] = f"{line_id}.npy"
    else:
        row["question_text"] = QUESTION
    if answer_frames is not None:
        row["answer_frames"] = answer_frames.tolist()
    return row


def write(directory: Path, rows: list[dict]) -> Path:
    path = directory / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scripted_turn(decoder, target, audio_output: bool, audio_streams: int):
    """Makes the decoder's model "generate" exactly `target`'s columns (S, L), then runs the turn."""
    columns = iter(target.ids.T.tolist())

    def sample(out):
        column = next(columns)
        return (column[:audio_streams] if audio_output else None), column[-1]

    decoder._sample = sample
    *_, done = decoder.run()
    return done


@pytest.mark.parametrize("context", [None, CONTEXT], ids=["no-context", "context"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_history_line_is_laid_out_as_the_conversation_prefills_its_next_turn(case, context, model, tmp_path):
    strategy_name, task1, task2 = CASES[case]
    strategy, layout, tokenizer = get_strategy(strategy_name), model.layout, model.tokenizer
    audio_out1 = task1.endswith("A2")
    # turn 1: the model's generated ids are a target (its text and codec frames), run through the Conversation
    answer_ids = tokenizer.encode("ok, done")
    frames = torch.randint(0, layout.codebook_size, (4, layout.audio_streams), generator=_g) if audio_out1 else None
    target1 = strategy.layout_target(layout, answer_ids, frames, task1)
    conversation = Conversation(model, strategy=strategy_name, context=context)
    decoder = conversation.turn(task=task1, max_steps=64, **question(task1, 6, tokenizer))
    done = scripted_turn(decoder, target1, audio_out1, layout.audio_streams)
    assert done.result.stop_reason == ("eoa" if audio_out1 else "eot")
    text_ids, generated = done.result.text_ids, done.result.frames  # what turn 1 produced
    assert text_ids == answer_ids and (not audio_out1 or torch.equal(generated, frames))
    answer_text = tokenizer.decode(text_ids)
    assert tokenizer.encode(answer_text) == text_ids  # round-trips: the manifest line holds the same target
    # turn 2: what a (re-)prefill of the conversation feeds, then the turn itself on the continued cache
    own = prepare(model, strategy=strategy_name, task=task2, **question(task2, 7, tokenizer))
    expected, expected_features = conversation.prompt(own.prompt, own.features)
    decoder = conversation.turn(task=task2, max_steps=2, **question(task2, 7, tokenizer))
    *_, done2 = decoder.run()
    first_column = done2.result.tokens[:, 0]  # (S,) sampled from the logits at the end of turn 2's prompt

    answer2 = torch.randint(0, layout.codebook_size, (3, layout.audio_streams)) if task2.endswith("A2") else None
    rows = [manifest_line(tmp_path, "t1", task1, 6, answer_text, generated if audio_out1 else None),
            manifest_line(tmp_path, "t2", task2, 7, "fine", answer2, history=["t1"],
                          **({"context": context} if context else {}))]
    examples = {e.id: e for e in read_manifest(write(tmp_path, rows))}
    fmt = ConversationFormat.of(model)
    seq = build_sequence(examples["t2"], tokenizer, strategy, layout, model.lm.config.block_size,
                         model.lm.config.whisper_adapter_dim, format=fmt)
    T = expected.length
    assert torch.equal(seq.input_ids[:, :T], expected.ids[0])  # context + turn 1 as recorded + turn 2's prompt
    history = conversation.history[0]
    start = conversation.context_length + history.prompt.length
    assert torch.equal(seq.input_ids[:, start:start + history.answer.shape[-1]], history.answer[0])
    spans = [tuple(s) for s in expected.audio_spans[0]] if expected.audio_spans else []
    assert seq.audio_spans == spans
    if expected_features is None:
        assert seq.features is None
    else:
        assert torch.equal(seq.features, expected_features[0])
    # labels: only turn 2's answer, as teacher forcing lays it out after the prompt
    target2 = strategy.layout_target(layout, tokenizer.encode("fine"), answer2, task2)
    assert (seq.labels[:, :T - 1] == IGNORE).all()
    assert torch.equal(seq.labels[:, T - 1:], torch.where(target2.loss_mask, target2.ids, IGNORE))
    assert seq.length == T + target2.length - 1
    # the training forward (the trainer's path) predicts at the prompt's end what the conversation sampled
    batch = collate([seq], layout)
    recipe = TrainingRecipe.__new__(TrainingRecipe)
    recipe.wrapped = model.lm
    with torch.no_grad():
        out = recipe.model_forward(batch)
    if expected.audio_spans and spans != [(1, spans[0][1])]:
        assert batch.spans == [spans]
    if strategy_name != "batch-parallel":  # batch parallel decoding samples its text from row 1 (not trained)
        assert int(out.text_logits[0, T - 1].argmax()) == int(first_column[-1])
    if task2.endswith("A2"):
        assert out.audio_logits[0, :, T - 1].argmax(-1).tolist() == first_column[:layout.audio_streams].tolist()


@pytest.mark.parametrize("strategy_name", ["text-delay", "batch-parallel"])
def test_a_cut_history_is_laid_out_as_the_conversation_keeps_an_interrupted_turn(strategy_name, model, tmp_path):
    """`history_cut`: the last history turn as a barge-in leaves it (Conversation.truncate: the columns played)."""
    strategy, layout, tokenizer = get_strategy(strategy_name), model.layout, model.tokenizer
    answer_ids = tokenizer.encode("the answer was long")
    frames = torch.randint(0, layout.codebook_size, (9, layout.audio_streams), generator=_g)
    conversation = Conversation(model, strategy=strategy_name)
    decoder = conversation.turn(task="A1A2", max_steps=64, turn_id=1, **question("A1A2", 6, tokenizer))
    done = scripted_turn(decoder, strategy.layout_target(layout, answer_ids, frames, "A1A2"), True,
                         layout.audio_streams)
    whole = conversation.history[0].answer.shape[-1]
    conversation.truncate(round(whole * 0.4), turn_id=1)  # 40% of the answer was played when the user spoke
    own = prepare(model, strategy=strategy_name, task="T1A2", **question("T1A2", 5, tokenizer))
    expected, _ = conversation.prompt(own.prompt, own.features)
    answer2 = torch.randint(0, layout.codebook_size, (3, layout.audio_streams), generator=_g)
    rows = [manifest_line(tmp_path, "t1", "A1A2", 6, tokenizer.decode(done.result.text_ids), done.result.frames),
            manifest_line(tmp_path, "t2", "T1A2", 5, "fine", answer2, history=["t1"], history_cut=0.4)]
    examples = {e.id: e for e in read_manifest(write(tmp_path, rows))}
    seq = build_sequence(examples["t2"], tokenizer, strategy, layout, model.lm.config.block_size,
                         model.lm.config.whisper_adapter_dim, format=ConversationFormat.of(model))
    assert conversation.history[0].answer.shape[-1] == round(whole * 0.4) < whole
    assert torch.equal(seq.input_ids[:, :expected.length], expected.ids[0])
    assert seq.labels[:, expected.length - 1:].ne(IGNORE).any()  # the loss is on this line's answer


@pytest.mark.parametrize("cut", [0, 1, 1.5, "half", True, None])
def test_a_bad_history_cut_names_the_line(cut, tmp_path):
    rows = [manifest_line(tmp_path, "t1", "T1T2", 5, "one", None),
            manifest_line(tmp_path, "t2", "T1T2", 5, "two", None, history_cut=cut,
                          **({"history": ["t1"]} if cut is not None else {}))]
    if cut is None:  # a share without a history
        rows[1]["history_cut"] = 0.5
    with pytest.raises(InputError, match=r"manifest.jsonl:2: history_cut .* is not a share") as info:
        read_manifest(write(tmp_path, rows))
    assert info.value.fix


def test_a_line_without_history_or_context_gives_the_single_turn_sequence(model, tmp_path):
    layout, tokenizer, strategy = model.layout, model.tokenizer, get_strategy("text-delay")
    frames = torch.randint(0, layout.codebook_size, (3, layout.audio_streams), generator=_g)
    rows = [manifest_line(tmp_path, "a", "A1A2", 5, "yes", frames),
            manifest_line(tmp_path, "b", "T1T2", 5, "no", None, history=[], context="")]
    a, b = read_manifest(write(tmp_path, rows))
    config = model.lm.config
    sequences = []
    for example, task in ((a, "A1A2"), (b, "T1T2")):
        seq = build_sequence(example, tokenizer, strategy, layout, config.block_size, config.whisper_adapter_dim)
        if task == "A1A2":
            prompt = strategy.prompt(layout, task, n_frames=5)
            target = strategy.layout_target(layout, tokenizer.encode("yes"), frames, task)
            assert torch.equal(seq.features, AUDIO[5]) and seq.audio_spans == [(1, 5)]
        else:
            prompt = strategy.prompt(layout, task, text_ids=tokenizer.encode(QUESTION))
            target = strategy.layout_target(layout, tokenizer.encode("no"), None, task)
            assert seq.features is None and seq.audio_spans == []
        input_ids, labels = teacher_forcing(prompt.ids[0], target)
        assert torch.equal(seq.input_ids, input_ids) and torch.equal(seq.labels, labels)
        sequences.append(seq)
    batch = collate(sequences, layout)
    assert batch.audio_lengths == [5, 0] and batch.spans is None  # the model gets audio_lengths, as before
    assert batch.audio_spans == [[(1, 5)], []]


def test_history_lines_resolve_across_the_tasks_filter_and_may_chain(model, tmp_path):
    rows = [manifest_line(tmp_path, "t1", "T1T2", 5, "one", None),
            manifest_line(tmp_path, "t2", "T1T2", 5, "two", None, history=["t1"]),
            manifest_line(tmp_path, "t3", "A1T2", 6, "three", None, history=["t1", "t2"], context=CONTEXT)]
    (t3,) = read_manifest(write(tmp_path, rows), tasks=["A1T2"])
    assert [h.id for h in t3.history] == ["t1", "t2"] and t3.context == CONTEXT
    config = model.lm.config
    seq = build_sequence(t3, model.tokenizer, get_strategy("text-delay"), model.layout, config.block_size,
                         config.whisper_adapter_dim)
    assert (seq.labels[:, :-6] == IGNORE).all() and (seq.labels[-1, -6:] != IGNORE).all()  # "three" + eot
    with pytest.raises(InputError, match="block_size"):
        build_sequence(t3, model.tokenizer, get_strategy("text-delay"), model.layout, 40,
                       config.whisper_adapter_dim)
    t3.task, t3.answer_frames = "A1A2", [[1] * 7] * 3
    with pytest.raises(InputError, match=r"manifest.jsonl:3: history line 't1' .* is a T1T2 turn, which strategy "
                       "batch-parallel does not decode"):
        build_sequence(t3, model.tokenizer, get_strategy("batch-parallel"), model.layout, config.block_size,
                       config.whisper_adapter_dim)


@pytest.mark.parametrize(("history", "message"), [
    (["nope"], r"manifest.jsonl:2: history id 'nope' is not a line"),
    (["t2"], r"manifest.jsonl:2: history lists the line's own id 't2'"),
    (["t1", "t1"], r"manifest.jsonl:2: history lists 't1' twice"),
    ("t1", r"manifest.jsonl:2: history must be a list"),
])
def test_bad_history_ids_name_the_line(history, message, tmp_path):
    rows = [manifest_line(tmp_path, "t1", "T1T2", 5, "one", None),
            manifest_line(tmp_path, "t2", "T1T2", 5, "two", None, history=history)]
    with pytest.raises(InputError, match=message) as info:
        read_manifest(write(tmp_path, rows))
    assert info.value.fix


def test_a_history_line_with_another_history_is_refused(tmp_path):
    rows = [manifest_line(tmp_path, "t0", "T1T2", 5, "zero", None),
            manifest_line(tmp_path, "t1", "T1T2", 5, "one", None, history=["t0"]),
            manifest_line(tmp_path, "t2", "T1T2", 5, "two", None, history=["t1"])]
    with pytest.raises(InputError, match=r"manifest.jsonl:3: history line 't1' .*has its own history \['t0'\]"):
        read_manifest(write(tmp_path, rows))
    rows[0]["context"] = 5
    with pytest.raises(InputError, match=r"manifest.jsonl:1: context must be text"):
        read_manifest(write(tmp_path, rows))


def test_a_batch_of_a_two_audio_turn_row_and_a_single_turn_row_trains_a_step(tmp_path, monkeypatch):
    """One step of the tiny stage-3 recipe over [turn 1 (single turn), turn 2 (history: turn 1, a context)]."""
    rng = np.random.default_rng(0)
    for k, n in ((1, 9), (2, 11)):
        np.save(tmp_path / f"f{k}.npy", rng.standard_normal((n, 32)).astype(np.float32))
    rows = [{"id": f"t{k}", "task": "A1A2", "question_features": f"f{k}.npy", "answer_text": f"answer {k}",
             "answer_frames": rng.integers(0, 64, (5, 7)).tolist()} for k in (1, 2)]
    rows[1].update(history=["t1"], context=CONTEXT)
    manifest = write(tmp_path, rows)
    seen = []
    forward = TrainingRecipe.model_forward

    def recording(self, batch):
        seen.append(batch.spans)
        return forward(self, batch)

    monkeypatch.setattr(TrainingRecipe, "model_forward", recording)
    out = tmp_path / "run"
    settings = {"data.path": manifest, "output_dir": out, "init_from": "null", "logger.tensorboard": "false",
                "logger.plot": "false", "training.max_steps": 1, "training.batch_size": 2,
                "training.checkpoint_every": 0, "training.log_every": 1}
    recipe = load_recipe(REPO / "recipes" / "tiny_stage3_finetune.yaml", [f"{k}={v}" for k, v in settings.items()])
    train(recipe)
    assert len(seen) == 1 and seen[0] is not None
    context_length = len(CONTEXT.encode()) + 2
    assert sorted(len(row) for row in seen[0]) == [1, 2]
    two = next(row for row in seen[0] if len(row) == 2)
    assert two[0] == (context_length + 1, 9) and two[1][1] == 11
    header, values = (out / "metrics.csv").read_text().splitlines()[:2]
    loss = float(values.split(",")[header.split(",").index("loss")])
    assert math.isfinite(loss)


def test_prepare_passes_history_and_context_through(tmp_path):
    from omnivox.training.prepare import prepare

    rows = [manifest_line(tmp_path, "t1", "T1T2", 5, "one", None),
            manifest_line(tmp_path, "t2", "A1T2", 5, "two", None, history=["t1"], context=CONTEXT, history_cut=0.3)]
    recipe = load_recipe(REPO / "recipes" / "tiny_stage3_finetune.yaml", [f"output_dir={tmp_path / 'run'}"])
    out = prepare(recipe, write(tmp_path, rows), log=lambda _: None, progress=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[1]["history"] == ["t1"] and written[1]["context"] == CONTEXT and "history" not in written[0]
    assert [h.id for h in read_manifest(out)[1].history] == ["t1"] and read_manifest(out)[1].history_cut == 0.3


def test_a_context_is_laid_out_as_the_models_format_reads_it(model, tmp_path):
    """With `context_numbers: words` the training line's context "battery: 40%, ..." is spelled as Conversation
    spells it at run time, so training and serving see the same ids."""
    fmt = ConversationFormat(context_numbers="words")
    rows = [manifest_line(tmp_path, "c", "T1T2", 5, "yes", None, context=CONTEXT)]
    (example,) = read_manifest(write(tmp_path, rows))
    config, strategy = model.lm.config, get_strategy("text-delay")
    seq = build_sequence(example, model.tokenizer, strategy, model.layout, config.block_size,
                         config.whisper_adapter_dim, format=fmt)
    conversation = Conversation(model, strategy="text-delay", context=CONTEXT, format=fmt)
    own = prepare(model, strategy="text-delay", task="T1T2", text_ids=model.tokenizer.encode(QUESTION))
    expected, _ = conversation.prompt(own.prompt)
    assert torch.equal(seq.input_ids[:, :expected.length], expected.ids[0])
    assert model.tokenizer.decode(conversation.context_ids) == "battery: forty percent, location: kitchen"
