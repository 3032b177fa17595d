"""torch's intra-op thread count of the calling OS thread, set so that it holds; and numpy's BLAS kept to one.

torch keeps the count per thread (OpenMP's nthreads-var), but a thread that has not yet run a parallel op is
initialised lazily, at its first one, from the count most recently set by ANY thread: `torch.set_num_threads(1)`
in a new thread is silently replaced by 2 if another thread sets 2 before this one's first parallel op. That is
how the LM's one-thread decode thread sometimes ran two OpenMP threads next to the codec's thread on a 2-core
machine (the same pipeline run gave RTF 0.55 or 0.75). `set_threads` runs the lazy initialisation first.

A process that answers keeps ONE thread with a multi-thread team: the LM's engine thread (core/kernel/batching.py).
libgomp spins between parallel regions only while the process has no more OpenMP threads than cores; once a
second thread has run a team of its own (the main thread loading the model on every core, an encoder's thread),
every team sleeps and wakes on a futex at each parallel region. An int8 step at Mini-Omni shape has ~200 small
ones: on 2 threads it took 56 ms instead of 38 (1 thread: 61; 2 cores, torch 2.13). So the commands that answer (chat,
listen, run, serve) run their main thread on 1 thread, the VAD runs on 1 wherever it is called, the codec's thread
on 1, and the encoder's jobs and the LM stage's load take every core in threads that end with them
(core/runtime/model_stages.py).

numpy's and scipy's OpenBLAS (their wheels') keep worker threads that busy-wait for ~100-200 ms after each
multi-thread call. faster-whisper's log-mel is such a call (the end-of-turn detector's and the default model's
encoder's): on 2 cores the spinning thread took a core from whatever came next; a Whisper-small window encoded
right after the detector took 149 ms instead of 73. `single_thread_blas` (run when the LM's engine starts and when
a faster-whisper front end is made: the thread count also changes the log-mel's last bits, so every process that
encodes sets the same) keeps them on the calling thread; torch's own BLAS is not touched."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def set_threads(n: int) -> None:
    """This OS thread's torch intra-op threads become `n`, whatever other threads set later."""
    torch.get_num_threads()  # the thread's lazy initialisation, from the global count: done now, not later
    torch.set_num_threads(n)


@contextmanager
def using_threads(n: int) -> Iterator[None]:
    """`n` torch threads in this OS thread for the block, its own count after."""
    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_thread_blas() -> None:
    """numpy's and scipy's OpenBLAS (any loaded OpenBLAS but torch's) compute on the calling thread from now on
    (see the module docstring); the matrices they multiply here are small."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    theirs = [lib.filepath for lib in controller.lib_controllers
              if lib.internal_api == "openblas" and f"{os.sep}torch" not in lib.filepath]
    if theirs:
        controller.select(filepath=theirs).limit(limits=1)
