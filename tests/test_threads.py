"""A thread's torch thread budget holds when another thread sets a different one (torch initialises each thread
lazily from the count set last by any thread), for a bare thread, the stages' executors and the LM's engine."""

from __future__ import annotations

import threading

import torch

from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import Done
from omnivox.core.kernel.threads import set_threads, using_threads
from omnivox.core.runtime.model_stages import torch_executor


def _count_after_another_thread_sets(setter, other: int) -> int:
    """`setter()` in a new thread; then this thread sets `other`; then the new thread reports its count."""
    ready, go, seen = threading.Event(), threading.Event(), []

    def run():
        setter()
        ready.set()
        go.wait()
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=run)
    worker.start()
    ready.wait()
    torch.set_num_threads(other)
    go.set()
    worker.join()
    return seen[0]


def test_set_threads_holds_where_torch_set_num_threads_is_overridden():
    before = torch.get_num_threads()
    try:
        assert _count_after_another_thread_sets(lambda: torch.set_num_threads(1), 3) == 3  # torch's own: lost
        assert _count_after_another_thread_sets(lambda: set_threads(1), 3) == 1
        with using_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_executors_and_the_engine_keep_their_budget():
    before = torch.get_num_threads()
    try:
        with torch_executor("one", 1) as pool:
            pool.submit(lambda: None).result()  # the worker exists and has set its budget
            torch.set_num_threads(3)
            assert pool.submit(torch.get_num_threads).result() == 1
        model = OmniModel.random(OmniConfig.tiny(), seed=0)
        engine, counts, done = BatchEngine(model, prefill_threads=2), [], threading.Event()

        def emit(piece):  # runs in the engine's thread, in each step (the first in the prefill)
            counts.append(torch.get_num_threads())
            if isinstance(piece, (Done, Exception)):
                done.set()

        torch.set_num_threads(3)
        engine.start(1)
        engine.submit(emit, task="T1T2", text_ids=[5, 6, 7], max_steps=4)
        assert done.wait(30)
        engine.stop()
        assert counts[0] == 2 and set(counts[1:]) == {1}  # the prefill (alone) on 2 threads, then the steps on 1
    finally:
        torch.set_num_threads(before)
