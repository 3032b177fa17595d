"""Helpers of the HTTP tests: the tiny omnivox HTTP pipeline (tiny whisper encoder, tiny random LM, tiny SNAC)
served in-process on a free loopback port from a background thread, so plain `requests` clients (as upstream
Mini-Omni's Streamlit and Gradio front ends) and a real browser can talk to it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

from mqtt_support import TINY_SNAC, write_question


@dataclass
class Served:
    url: str
    pipeline: object
    loop: asyncio.AbstractEventLoop

    @property
    def service(self):
        return self.pipeline.stages[0].service

    @property
    def lm(self):
        return next(stage for stage in self.pipeline.stages if stage.name == "lm")

    def call(self, fn):
        """Run `fn()` on the server's event loop and return its result (to read state safely)."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


def tiny_http_stages(*, max_steps: int = 24, limits: dict | None = None, **http):
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.plugins.http.stages import HttpAudioInput, HttpAudioOutput
    from omnivox.plugins.snac_codec import SnacCodec

    kit = SpeechKit.random(seed=1, speak=False)  # a tiny SNAC instead of the kit's full-size one
    return [HttpAudioInput(port=0, limits=limits, **http), EncoderStage(kit.encoder),
            LMStage("text-delay", model=kit.model, task="A1A2", max_steps=max_steps, name="lm"),
            CodecStage(SnacCodec.load(config=TINY_SNAC, seed=0)), HttpAudioOutput()]


@contextlib.contextmanager
def serving(**kwargs):
    """The tiny HTTP pipeline running in a thread; yields a Served (its `url` is http://127.0.0.1:<port>)."""
    from omnivox.core.runtime.pipeline import Pipeline

    loop = asyncio.new_event_loop()
    pipeline = Pipeline(tiny_http_stages(**kwargs))
    ready = threading.Event()

    async def main():
        runner = asyncio.create_task(pipeline.run())
        while pipeline.stages[0].service is None or pipeline.stages[0].service.port is None:
            if runner.done():
                runner.result()
            await asyncio.sleep(0.01)
        ready.set()
        await runner

    def thread_main():
        asyncio.set_event_loop(loop)
        task = loop.create_task(main())
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the HTTP pipeline did not start within 60 s")
    try:
        yield Served(pipeline.stages[0].service.url, pipeline, loop)
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(30)


def question_b64(folder: Path, seconds: float = 0.6, rate: int = 16000) -> str:
    """What upstream's clients post in `audio`: base64 of a WAV file."""
    path = write_question(folder / "question.wav", seconds=seconds, rate=rate)
    return base64.b64encode(path.read_bytes()).decode()
