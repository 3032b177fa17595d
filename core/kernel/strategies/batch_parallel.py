"""Scheme 3 (paper 3.2, batch parallel decoding) for speech answers: two rows over the same input. Row 0 is the
speech task's prompt (A1A2, or T1A2 for typed input) and produces the audio; row 1 is its text twin's prompt (A1T2,
T1T2) and produces the text. Each step, row 1's text id is fed to BOTH rows, row 0's audio ids to row 0, and row 1
gets pad_a on every audio stream (upstream `generate_TA_BATCH` / `run_AT_batch_stream`, which does this for A1A2;
T1A2 is the same trick on a typed question). Row 1 is fed exactly what its task alone would be fed, so the text is
the text twin's greedy text. The answer grid (row 0's audio + row 1's text) uses the text-delay layout, as upstream
reconstructs it with `reconscruct_snac`.

Training: each row is an ordinary sequence; row 0 trains as A1A2/T1A2 and row 1 as A1T2/T1T2 with the text-delay
targets of `layout_target` (the batch trick needs no special training data)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnivox.core.kernel.strategies.base import StepRule, task_prompt
from omnivox.core.kernel.strategies.text_delay import TextDelayStrategy
from omnivox.core.kernel.tokens import Prompt, TokenLayout

TEXT_TWIN = {"A1A2": "A1T2", "T1A2": "T1T2"}  # speech task -> the text task whose row writes its text


class BatchStepRule(StepRule):
    rows = 2
    audio_row = 0
    text_row = 1

    def feed(self, column: list[int]) -> torch.Tensor:
        """Row 0: the sampled audio + text; row 1: pad_a on every audio stream + the same text."""
        return torch.tensor([column, self.pads + column[-1:]]).view(2, -1, 1)


class BatchParallelStrategy(TextDelayStrategy):
    name = "batch-parallel"
    description = "two rows: the text-only row's text drives the audio row (scheme 3, A1A2 and T1A2)"
    tasks = ("A1A2", "T1A2")

    def prompt(self, layout: TokenLayout, task: str, n_frames: int | None = None,
               text_ids: Sequence[int] | None = None) -> Prompt:
        """Row 0: `task`'s prompt; row 1: its text twin's (A1T2 / T1T2) over the same input (equal lengths: only
        the last audio column differs)."""
        self.check_task(task)
        speech = task_prompt(layout, task, n_frames, text_ids)
        text = task_prompt(layout, TEXT_TWIN[task], n_frames, text_ids)
        lengths = None if speech.audio_lengths is None else speech.audio_lengths * 2
        return Prompt(ids=torch.cat([speech.ids, text.ids]), audio_lengths=lengths, tasks=(task, TEXT_TWIN[task]))

    def step_rule(self, layout: TokenLayout, task: str, force_layout: bool = False) -> StepRule:
        self.check_task(task)
        return BatchStepRule(layout, task, self.delays(layout), force_layout)
