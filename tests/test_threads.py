"""A thread's torch thread budget holds when another thread sets a different one (torch initialises each thread
lazily from the count set last by any thread), for a bare thread, the stages' executors and the LM's engine; the
engine's steps take every core until a turn has a codec frame; numpy's BLAS runs on one thread once an engine
starts (core/kernel/threads.py says why)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import Done
from omnivox.core.kernel.threads import set_threads, using_threads
from omnivox.core.runtime.model_stages import _in_own_thread, torch_executor
from omnivox.plugins.random_models import tiny_model


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


def _engine_thread_counts(model, **turn) -> tuple[int, list[tuple[int, int]]]:
    """One turn on an engine (its thread: 1 torch thread; prefills: 2): the torch count of its prefill, and per
    batched forward (the count, the codec frames the turn had when it ran)."""
    engine, forwards, first, done = BatchEngine(model, prefill_threads=2), [], [], threading.Event()
    step = engine.lm.step

    def counted(*args, **kwargs):
        forwards.append((torch.get_num_threads(), engine.active[0].decoder.n_frames))
        return step(*args, **kwargs)

    def emit(piece):  # runs in the engine's thread, the first time inside the prefill
        if not first:
            first.append(torch.get_num_threads())
        if isinstance(piece, (Done, Exception)):
            done.set()

    engine.lm.step = counted
    engine.start(1)
    engine.submit(emit, **turn)
    assert done.wait(30)
    engine.stop()
    return first[0], forwards


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
        torch.set_num_threads(3)
        # a text answer: the codec never has work, so its prefill and every step take every core
        prefill, forwards = _engine_thread_counts(model, task="T1T2", text_ids=[5, 6, 7], max_steps=6)
        assert prefill == 2 and len(forwards) == 5 and {n for n, _ in forwards} == {2}
        # a spoken answer: every core until it has a codec frame (the prefill and the frames' delay), then 1
        prefill, forwards = _engine_thread_counts(tiny_model(), task="T1A2", text_ids=[5, 6, 7], max_steps=12)
        assert prefill == 2 and {n for n, frames in forwards if frames == 0} == {2}
        assert {n for n, frames in forwards if frames > 0} == {1}
    finally:
        torch.set_num_threads(before)


def test_numpys_blas_runs_on_one_thread_once_an_engine_starts_and_torchs_count_is_kept():
    """numpy's OpenBLAS workers busy-wait after each call (faster-whisper's log-mel), taking a core from the LM."""
    import numpy  # noqa: F401 - its OpenBLAS is loaded
    from threadpoolctl import ThreadpoolController

    def numpys() -> list[int]:
        return [lib.num_threads for lib in ThreadpoolController().lib_controllers
                if lib.internal_api == "openblas" and "numpy" in lib.filepath]

    controller = ThreadpoolController()
    controller.select(internal_api="openblas").limit(limits=2)  # as a fresh process on 2 cores has them
    if numpys() != [2]:
        pytest.skip("numpy here does not use a wheel's OpenBLAS")
    torch_before = torch.get_num_threads()
    engine = BatchEngine(OmniModel.random(OmniConfig.tiny(), seed=0))
    engine.start(1)
    engine.stop()
    assert numpys() == [1]
    assert torch.get_num_threads() == torch_before


def test_an_encoding_runs_in_a_thread_of_its_own_that_ends_with_it():
    """EncoderStage's jobs (and the LM stage's load): every core, in a thread whose OpenMP team goes with it."""
    seen = []

    def job(x):
        seen.append((threading.current_thread(), torch.get_num_threads()))
        return 2 * x

    assert asyncio.run(_in_own_thread("omnivox-encoder", 2, job, 21)) == 42
    thread, count = seen[0]
    assert count == 2 and thread is not threading.main_thread()
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(ValueError, match="invalid literal"):  # the job's error reaches the awaiting coroutine
        asyncio.run(_in_own_thread("omnivox-encoder", 1, int, "x"))


def test_an_encoding_whose_turn_is_interrupted_ends_quietly(monkeypatch):
    """A turn interrupted while its encoding runs (a withdrawn guess): the awaiting coroutine is cancelled, the
    thread finishes its job and hands the result to no one, without an error in the thread."""
    import time

    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    threads = []

    def job():
        threads.append(threading.current_thread())
        time.sleep(0.05)
        return 1

    async def interrupted():
        task = asyncio.create_task(_in_own_thread("omnivox-encoder", 1, job))
        await asyncio.sleep(0.01)  # the job is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    threads[0].join(5)
    assert errors == [] and not threads[0].is_alive()
