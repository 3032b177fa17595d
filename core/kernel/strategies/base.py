"""The decoding-strategy contract: a token layout plus a step rule, shared by training and inference.

Grid and alignment conventions (all ids LOCAL per stream, streams = A audio streams then text, see tokens.py):

* The ANSWER grid (S, L): column j holds what the model emits at generated step j (step 0 comes from the
  prompt's last position, i.e. the prefill). Inference appends each step's column and feeds it back as the
  input of the next position; `extract` reads text and codec frames back from such a grid.
* `layout_target` lays a training answer out on this grid. For audio-output tasks (A1A2, T1A2), with the
  strategy's delays d_0..d_{A-1} (D = max), N codec frames (N, A) and n text ids:
    text stream:   ids[0..n-1], eot at n, pad_t after
    audio stream i: pad_a for j < d_i, frame[j - d_i][i] for d_i <= j < d_i + N, pad_a up to its eoa at
                   e_i = E - (D - d_i), pad_a after,
  with E = max(D + N, n + 1) the column where the LAST stream emits eoa (the stop rule), so L = E + 1 and
  every stream's eoa lies on one diagonal; the text's eot always precedes the stop column; loss_mask is True
  everywhere. For text-output tasks (A1T2, A1T1, T1T2): text ids then eot (L = n + 1, the stop column);
  audio streams carry pad_a (what inference feeds) with loss_mask False (audio is not sampled there).
* Training alignment (`teacher_forcing`): inputs = prompt ++ answer[:, :-1], labels at positions
  prompt_len - 1 ... = answer (where loss_mask), -100 elsewhere. Position t's logits predict the label at t,
  so label column j sits at position T - 1 + j, exactly the position whose logits sampled step j.
* A complete codec frame k is the column set {(i, d_i + k)}: it exists once column D + k is generated and is
  valid when every slot holds a code (< codebook size); frames end at the first invalid one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from omnivox.core.errors import InputError, unknown_name
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS, AUDIO_OUT_TASKS, TASKS, Prompt, TokenLayout, check_task

IGNORE_INDEX = -100  # label of positions that are not trained (torch cross_entropy's default ignore_index)


@dataclass
class Target:
    """A training answer laid out on the grid: `ids` (S, L) local ids, `loss_mask` (S, L) bool."""

    ids: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def length(self) -> int:
        return self.ids.shape[-1]


def teacher_forcing(prompt_ids: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_ids (S, T) + target (S, L) -> input_ids (S, T + L - 1), labels (S, T + L - 1) with -100 where
    not trained. Each stream's labels are scored against that stream's logits (text: text logits; audio
    stream i: audio logits of stream i)."""
    S, T = prompt_ids.shape
    if target.ids.shape[0] != S:
        raise InputError(f"target has {target.ids.shape[0]} streams but the prompt has {S}",
                         "build both with the same TokenLayout")
    if target.length < 1:
        raise InputError("the target is empty", "lay the answer out with strategy.layout_target")
    input_ids = torch.cat([prompt_ids, target.ids[:, :-1].to(prompt_ids)], dim=1)  # (S, T + L - 1)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, T - 1:] = torch.where(target.loss_mask, target.ids.to(prompt_ids), IGNORE_INDEX)
    return input_ids, labels


class StepRule:
    """Per-generation state of the step rule (upstream `generate_AA`/`generate_AT`/... loop bodies).

    `apply(position, audio, text)` takes the ids sampled at answer column `position` (audio: A ids, None for
    text-output tasks, where audio is not sampled) and returns the column to append and feed back, or None to
    stop before appending (`stop_reason` says why). Upstream semantics: the prefill column (position 0) is
    appended unchecked; audio tasks force pad_t after the text emitted eot (eot itself is kept) and stop when
    the last audio stream emits eoa; text tasks feed pad_a on every audio stream and stop on eot.

    `force_layout` (beyond upstream) forces the strategy's layout: pad_a on stream i before its delay d_i;
    once any stream i emits eoa for frame k, every stream emits eoa at its frame k and pad_a after, so the
    turn ends on one diagonal; it also applies the stop/eot checks to the prefill column."""

    rows = 1  # prompt rows decoded together
    audio_row = 0  # row whose audio logits are sampled
    text_row = 0  # row whose text logits are sampled

    def __init__(self, layout: TokenLayout, task: str, delays: Sequence[int], force_layout: bool = False):
        self.layout = layout
        self.audio_output = task in AUDIO_OUT_TASKS
        self.delays = tuple(delays)
        self.force_layout = force_layout
        self.text_end = False
        self.end_frame: int | None = None  # first frame index that is no longer audio (force_layout)
        self.stop_reason: str | None = None
        self.pads = [layout.pad_a] * layout.audio_streams

    def apply(self, position: int, audio: list[int] | None, text: int) -> list[int] | None:
        L = self.layout
        checked = position > 0 or self.force_layout
        if not self.audio_output:
            if checked and text == L.eot:
                self.stop_reason = "eot"
                return None
            return self.pads + [text]
        if self.text_end:
            text = L.pad_t
        if self.force_layout:
            audio = self._force(position, audio)
        if checked and audio[-1] == L.eoa:
            self.stop_reason = "eoa"
            return None
        if checked and text == L.eot:
            self.text_end = True
        return audio + [text]

    def _force(self, position: int, audio: list[int]) -> list[int]:
        L = self.layout
        audio = [L.pad_a if position < d else a for a, d in zip(audio, self.delays, strict=True)]
        for a, d in zip(audio, self.delays, strict=True):
            if a == L.eoa and position >= d and (self.end_frame is None or position - d < self.end_frame):
                self.end_frame = position - d
        if self.end_frame is None:
            return audio
        out = []
        for a, d in zip(audio, self.delays, strict=True):
            k = position - d
            out.append(a if k < self.end_frame else L.eoa if k == self.end_frame else L.pad_a)
        return out

    def feed(self, column: list[int]) -> torch.Tensor:
        """Column of S ids -> next input ids (rows, S, 1)."""
        return torch.tensor(column).view(1, -1, 1)


class DecodingStrategy:
    """Base class of the decoding schemes. Subclasses declare `name`, `delays`, and may restrict `tasks`
    (generation) or change the prompt rows and the step rule (batch parallel decoding)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = TASKS  # tasks this strategy can generate

    def delays(self, layout: TokenLayout) -> tuple[int, ...]:
        """Per audio stream: how many columns stream i lags the text stream."""
        raise NotImplementedError

    def check_task(self, task: str) -> None:
        check_task(task)
        if task not in self.tasks:
            raise unknown_name(f"{self.name} task", task, self.tasks)

    # ---- (b) prompts ---------------------------------------------------------------------------------
    def prompt(self, layout: TokenLayout, task: str, n_frames: int | None = None,
               text_ids: Sequence[int] | None = None) -> Prompt:
        """The inference prompt: audio-in tasks need `n_frames` encoder frames, text-in tasks `text_ids`."""
        self.check_task(task)
        return task_prompt(layout, task, n_frames, text_ids)

    # ---- (a) training layout -------------------------------------------------------------------------
    def layout_target(self, layout: TokenLayout, text_ids: Sequence[int], frames: torch.Tensor | None,
                      task: str) -> Target:
        """Lays text ids (without eot) and codec frames (N, A) out as the answer grid of `task` (see the
        module docstring). Text-output tasks take frames=None."""
        check_task(task)
        text = _check_text(layout, text_ids)
        S, n = layout.n_streams, len(text)
        if task not in AUDIO_OUT_TASKS:
            if frames is not None:
                raise InputError(f"task {task} answers in text, but codec frames were given",
                                 "pass frames=None, or use an audio-output task (A1A2, T1A2)")
            ids = torch.full((S, n + 1), layout.pad_a, dtype=torch.long)
            ids[-1] = torch.tensor(text + [layout.eot])
            mask = torch.zeros(S, n + 1, dtype=torch.bool)
            mask[-1] = True
            return Target(ids, mask)
        frames = _check_frames(layout, frames, task)
        N, delays = frames.shape[0], self.delays(layout)
        D = max(delays)
        E = max(D + N, n + 1)  # stop column: the last stream's eoa
        ids = torch.full((S, E + 1), layout.pad_a, dtype=torch.long)
        for i, d in enumerate(delays):
            ids[i, d:d + N] = frames[:, i]
            ids[i, E - (D - d)] = layout.eoa
        ids[-1] = layout.pad_t
        ids[-1, :n] = torch.tensor(text, dtype=torch.long)
        ids[-1, n] = layout.eot
        return Target(ids, torch.ones(S, E + 1, dtype=torch.bool))

    # ---- (d) extraction ------------------------------------------------------------------------------
    def extract(self, layout: TokenLayout, grid: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Answer grid (S, L) -> (text ids before the first eot without specials, complete frames (N, A))."""
        if grid.dim() != 2 or grid.shape[0] != layout.n_streams:
            raise InputError(f"grid has shape {tuple(grid.shape)}, expected ({layout.n_streams}, steps)",
                             "pass one answer grid (streams, steps), text stream last")
        columns = grid.T.tolist()
        frames = []
        while (codes := self.complete_frame(layout, columns, len(frames))) is not None:
            frames.append(codes)
        text = answer_text(layout, grid[-1].tolist())
        return text, torch.tensor(frames, dtype=torch.long).view(len(frames), layout.audio_streams)

    def complete_frame(self, layout: TokenLayout, columns: Sequence[Sequence[int]],
                       k: int) -> tuple[int, ...] | None:
        """Codes of frame k (one per audio stream) from generated columns, or None if a slot is missing or
        is not a code."""
        codes = []
        for i, d in enumerate(self.delays(layout)):
            if d + k >= len(columns):
                return None
            code = columns[d + k][i]
            if not 0 <= code < layout.codebook_size:
                return None
            codes.append(code)
        return tuple(codes)

    # ---- (c) step rule -------------------------------------------------------------------------------
    def step_rule(self, layout: TokenLayout, task: str, force_layout: bool = False) -> StepRule:
        self.check_task(task)
        return StepRule(layout, task, self.delays(layout), force_layout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def task_prompt(layout: TokenLayout, task: str, n_frames: int | None = None,
                text_ids: Sequence[int] | None = None) -> Prompt:
    """The single-row prompt of `task` (tokens.py): over `n_frames` encoder frames or over `text_ids`."""
    if task in AUDIO_IN_TASKS:
        if n_frames is None:
            raise InputError(f"task {task} takes audio, but no encoder frame count was given",
                             "pass n_frames (the audio features' length)")
        return layout.audio_prompt(n_frames, task)
    if text_ids is None:
        raise InputError(f"task {task} takes text, but no text ids were given", "pass text_ids")
    return layout.text_prompt(text_ids, task)


def answer_text(layout: TokenLayout, text_stream: Sequence[int]) -> list[int]:
    """Text ids of a generated text stream: everything before the first eot, specials dropped."""
    out = []
    for token in text_stream:
        if token == layout.eot:
            break
        if token < layout.eot:
            out.append(int(token))
    return out


def _check_text(layout: TokenLayout, text_ids: Sequence[int]) -> list[int]:
    text = [int(t) for t in text_ids]
    bad = [t for t in text if not 0 <= t < layout.eot]
    if bad:
        raise InputError(f"answer text ids {bad[:5]} are outside the text vocabulary 0..{layout.eot - 1}",
                         "tokenize the answer with the model's tokenizer, without special tokens")
    return text


def _check_frames(layout: TokenLayout, frames: torch.Tensor | None, task: str) -> torch.Tensor:
    A = layout.audio_streams
    if frames is None:
        raise InputError(f"task {task} answers in speech, but no codec frames were given",
                         f"pass frames as a (frames, {A}) tensor of codec ids")
    frames = torch.as_tensor(frames)
    if frames.dim() != 2 or frames.shape[1] != A or frames.is_floating_point():
        raise InputError(f"codec frames have shape {tuple(frames.shape)} and dtype {frames.dtype}, expected "
                         f"integer ids of shape (frames, {A})",
                         f"encode the answer audio with the codec whose frames have {A} slots")
    if frames.numel() and not (0 <= int(frames.min()) and int(frames.max()) < layout.codebook_size):
        raise InputError(f"codec ids outside 0..{layout.codebook_size - 1}",
                         "use the codec the model was trained with (codebook_size in the config)")
    return frames.long()
