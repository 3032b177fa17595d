"""The training manifest: JSONL, one example per line. Paths are relative to the manifest's folder.

    {"id": "q0001",                       unique name of the example
     "task": "A1A2",                      A1A2 | A1T2 | A1T1 | T1A2 | T1T2 (core/tokens.py)
     "question_audio": "audio/q0001.wav", audio-in tasks (A1*): the spoken question
     "question_features": "cache/f.npy",  float32 (T, feature_dim) encoder features, written by `omnivox prepare`
     "question_text": "what is ...",      text-in tasks (T1*): the question (for T1A2: the text to speak)
     "answer_text": "it is ...",          every task: the text answer (for A1T1: the transcript)
     "answer_audio": "audio/a0001.wav",   audio-out tasks (*A2): the spoken answer
     "answer_frames": "cache/c.npy"}      int (N, codec slots) codec frames: a .npy path or an inline list
                                          of lists; written by `omnivox prepare` from answer_audio

Training needs the prepared fields (question_features for audio in, answer_frames for audio out); the raw
audio fields are what `omnivox prepare` reads. Every error names the manifest file and line number.

Conversations (both fields optional; a line without them is a single turn):

     "history": ["t1", "t2"],             ids of other lines of this manifest: the earlier turns of this line's
                                          conversation, oldest first. Each is a full example (its own task,
                                          question, answer); here it is a past turn: its prompt, then its answer
                                          as inference feeds it back (collate.build_sequence). Ids are looked up
                                          among ALL lines, whatever `tasks` keeps. A line may not list itself or
                                          an id twice; a history line may have a history of its own only if it
                                          is exactly the ids listed before it here (so each turn of a
                                          conversation can be a line listing all the turns before it)
     "context": "battery: 40%, ..."       context text: the model's context segment (ConversationFormat) before
                                          the history; this line's own context is the one used (a history
                                          line's context is not), as a conversation re-prefills after a change
     "history_cut": 0.4                   the last history turn was cut (a barge-in): this share (0 < x < 1)
                                          of its answer columns as fed is kept, as a conversation keeps what
                                          was played (Conversation's cut); needs a history

The loss covers this line's answer only; the history and context are input."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS, AUDIO_OUT_TASKS, TASKS

FIELDS = ("id", "task", "question_audio", "question_features", "question_text", "answer_text", "answer_audio",
          "answer_frames", "history", "context", "history_cut")
PATH_FIELDS = ("question_audio", "question_features", "answer_audio")


@dataclass
class Example:
    """One manifest line; paths are absolute. `source` is 'FILE:LINE' for error messages."""

    id: str
    task: str
    source: str
    answer_text: str
    question_text: str | None = None
    question_audio: Path | None = None
    question_features: Path | None = None
    answer_audio: Path | None = None
    answer_frames: Path | list | None = None
    context: str | None = None  # context text (None: no context segment)
    history_ids: tuple[str, ...] = ()  # the `history` field as written
    history_cut: float | None = None  # the share of the last history turn's answer columns kept (None: whole)
    history: list[Example] = dataclasses.field(default_factory=list)  # those lines (read_manifest), oldest first

    @property
    def audio_in(self) -> bool:
        return self.task in AUDIO_IN_TASKS

    @property
    def audio_out(self) -> bool:
        return self.task in AUDIO_OUT_TASKS

    def feature_shape(self) -> tuple[int, int]:
        """(T, feature_dim) of the question features, read from the .npy header only."""
        arr = _load_npy(self.question_features, self, "question_features", mmap_mode="r")
        if arr.ndim != 2 or arr.shape[0] < 1:
            raise InputError(f"{self.source}: question_features {self.question_features} has shape {arr.shape}",
                             "store (frames, feature_dim) features; rerun omnivox prepare")
        return arr.shape

    def features(self) -> torch.Tensor:
        """(T, feature_dim) float32 encoder features of the question."""
        self.feature_shape()
        arr = _load_npy(self.question_features, self, "question_features")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def frames(self) -> torch.Tensor:
        """(N, slots) int64 codec frames of the answer."""
        if isinstance(self.answer_frames, list):
            try:
                arr = np.asarray(self.answer_frames, dtype=np.int64)
            except (ValueError, TypeError):
                raise InputError(f"{self.source}: answer_frames is not a list of equal-length integer lists",
                                 "write [[slot0, slot1, ...], ...] (one list per codec frame)") from None
        else:
            arr = _load_npy(self.answer_frames, self, "answer_frames")
        if arr.ndim != 2 or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{self.source}: answer_frames must be integer (frames, slots), got {arr.dtype} "
                             f"{arr.shape}", "rerun omnivox prepare with the codec of the model")
        return torch.from_numpy(arr.astype(np.int64))


def _load_npy(path: Path, example: Example, field: str, mmap_mode: str | None = None) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (OSError, ValueError) as exc:
        raise InputError(f"{example.source}: cannot read {field} {path} ({exc})", "rerun omnivox prepare") from None


def read_manifest(path: str | Path, tasks: list[str] | None = None, require_prepared: bool = True) -> list[Example]:
    """Parse and check a manifest; `tasks` keeps only those tasks. With `require_prepared`, audio-in lines
    need question_features and audio-out lines answer_frames (what training reads)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} not found", "run omnivox synth-data / omnivox prepare, or fix data.path")
    if tasks is not None:
        for task in tasks:
            if task not in TASKS:
                raise InputError(f"data.tasks names unknown task {task!r}", f"use some of: {', '.join(TASKS)}")
    every: dict[str, Example] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        example = _parse_line(line, path, number, require_prepared)
        if example.id in every:
            raise InputError(f"{example.source}: id {example.id!r} already used at {every[example.id].source}",
                             "give every example a unique id")
        every[example.id] = example
    for example in every.values():  # histories resolve against every line, whatever `tasks` keeps
        example.history = _resolve_history(example, every)
    examples = [e for e in every.values() if tasks is None or e.task in tasks]
    if not examples:
        raise InputError(f"manifest {path} has no examples" + (f" of tasks {tasks}" if tasks else ""),
                         "add examples, or change data.tasks")
    return examples


def _resolve_history(example: Example, every: dict[str, Example]) -> list[Example]:
    """The lines `example.history_ids` names, oldest first (see the module docstring for the rules)."""
    ids, where = example.history_ids, example.source
    for k, hid in enumerate(ids):
        if hid == example.id:
            raise InputError(f"{where}: history lists the line's own id {hid!r}",
                             "list only the earlier turns of the conversation")
        if hid in ids[:k]:
            raise InputError(f"{where}: history lists {hid!r} twice", "list each earlier turn once, oldest first")
        if hid not in every:
            raise InputError(f"{where}: history id {hid!r} is not a line of this manifest",
                             f"add a line with id {hid!r} (the earlier turn), or remove it from history")
        own = every[hid].history_ids
        if own and own != ids[:k]:
            raise InputError(f"{where}: history line {hid!r} ({every[hid].source}) has its own history "
                             f"{list(own)}, not the ids listed before it here {list(ids[:k])}",
                             "list a conversation's turns in one order: each line's history is every turn "
                             "before it (or give the history line no history)")
    return [every[hid] for hid in ids]


def _parse_line(line: str, path: Path, number: int, require_prepared: bool) -> Example:
    where = f"{path}:{number}"
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})", "write one JSON object per line") from None
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object", f"fields: {', '.join(FIELDS)}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r}", f"valid fields: {', '.join(FIELDS)}")
    for field in ("id", "task", "answer_text"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise InputError(f"{where}: field {field!r} is missing or empty", f"give every line a {field}")
    task = row["task"]
    if task not in TASKS:
        raise InputError(f"{where}: unknown task {task!r}", f"use one of: {', '.join(TASKS)}")
    paths: dict[str, Path] = {}
    for field in PATH_FIELDS:
        if row.get(field) is not None:
            if not isinstance(row[field], str):
                raise InputError(f"{where}: {field} must be a path string", "write a path relative to the manifest")
            file = (path.parent / row[field]).resolve()
            if not file.is_file():
                raise InputError(f"{where}: {field} file {row[field]} not found (looked at {file})",
                                 "fix the path (relative to the manifest's folder) or create the file")
            paths[field] = file
    frames = row.get("answer_frames")
    if isinstance(frames, str):
        file = (path.parent / frames).resolve()
        if not file.is_file():
            raise InputError(f"{where}: answer_frames file {frames} not found (looked at {file})",
                             "rerun omnivox prepare, or fix the path")
        frames = file
    elif frames is not None and not isinstance(frames, list):
        raise InputError(f"{where}: answer_frames must be a .npy path or a list of lists", "fix the field")
    history = row.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, str) and h for h in history):
        raise InputError(f"{where}: history must be a list of example ids", 'write e.g. "history": ["q0001"]')
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise InputError(f"{where}: context must be text", 'write e.g. "context": "battery: 40%"')
    cut = row.get("history_cut")
    if cut is not None and (isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0 < cut < 1
                            or not history):
        raise InputError(f"{where}: history_cut {cut!r} is not a share in (0, 1) of a history's last answer",
                         'write e.g. "history_cut": 0.4 on a line with a history, or leave it out')
    example = Example(id=row["id"], task=task, source=where, answer_text=row["answer_text"],
                      question_text=row.get("question_text"), answer_frames=frames, context=context or None,
                      history_ids=tuple(history), history_cut=cut, **paths)
    if example.audio_in and not (example.question_audio or example.question_features):
        raise InputError(f"{where}: task {task} needs question_audio", "add the question's audio file")
    if not example.audio_in and not (isinstance(example.question_text, str) and example.question_text.strip()):
        raise InputError(f"{where}: task {task} needs question_text", "add the question's text")
    if example.audio_out and example.answer_frames is None and example.answer_audio is None:
        raise InputError(f"{where}: task {task} needs answer_audio or answer_frames", "add the answer's audio")
    if require_prepared:
        if example.audio_in and example.question_features is None:
            raise InputError(f"{where}: question_features missing (the question audio is not encoded yet)",
                             "run: omnivox prepare RECIPE.yaml, and train on the manifest it writes")
        if example.audio_out and example.answer_frames is None:
            raise InputError(f"{where}: answer_frames missing (the answer audio is not encoded yet)",
                             "run: omnivox prepare RECIPE.yaml, and train on the manifest it writes")
    return example


class ManifestDataset:
    """The `manifest` dataset plugin: the examples of one JSONL manifest (see this module's docstring)."""

    def __init__(self, path: str, tasks: list[str] | None = None, limit: int | None = None):
        self.path = Path(path)
        self.examples = read_manifest(self.path, tasks)
        if limit is not None:
            self.examples = self.examples[:limit]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]
