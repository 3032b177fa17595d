"""Bus benchmark: events/s and hop latency through a 6-stage pipeline of no-op stages.

    python benchmarks/bench_bus.py [--events 20000] [--pings 2000]

Two runs on the same pipeline shape:
- saturated: one turn of N events fed as fast as backpressure allows -> events/s (each event crosses
  6 hops) and hop latency under load (mostly time spent queued);
- paced: one event at a time, the next fed when the previous reached the sink -> unloaded hop latency.
A baseline in the same process: 6 tasks chained by plain asyncio.Queue(64) doing the same per-hop work,
so the figures come with a ratio that does not depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from omnivox.core import progress
from omnivox.core.runtime.events import TextToken, TurnEnd, TurnStart, same_turn
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage

STAGES = 6


class Hop(Stage):
    """No-op stage: records how long the event took to get here, re-emits a fresh one (new timestamp)."""

    consumes = (TextToken,)

    def __init__(self, name, latencies, last=False, arrived=None):
        super().__init__(name)
        self.latencies, self.last, self.arrived = latencies, last, arrived

    async def process(self, event):
        self.latencies.append(time.monotonic() - event.timestamp)
        if self.last:
            if self.arrived is not None:
                self.arrived.set()
            return
        yield TextToken(event.token_id, step=event.step, **same_turn(event))


def _pipeline(latencies, arrived=None) -> Pipeline:
    hops = [Hop(f"hop{i}", latencies, last=i == STAGES - 1, arrived=arrived) for i in range(STAGES)]
    return Pipeline(hops)


async def saturated(n: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    pipeline = _pipeline(latencies)
    await pipeline.start()
    start = time.perf_counter()
    await pipeline.feed(TurnStart(turn_id=1))
    for i in range(n):
        await pipeline.feed(TextToken(i, step=i, turn_id=1))
    await pipeline.feed(TurnEnd(turn_id=1))
    await pipeline.drain()
    elapsed = time.perf_counter() - start
    await pipeline.stop()
    assert len(latencies) == n * STAGES
    return n / elapsed, latencies


async def paced(n: int) -> tuple[list[float], list[float]]:
    latencies: list[float] = []
    arrived = asyncio.Event()
    pipeline = _pipeline(latencies, arrived)
    await pipeline.start()
    end_to_end = []
    for i in range(n):
        arrived.clear()
        start = time.monotonic()
        await pipeline.feed(TextToken(i, step=i, turn_id=1))
        await arrived.wait()
        end_to_end.append(time.monotonic() - start)
    await pipeline.drain()
    await pipeline.stop()
    return latencies, end_to_end


async def baseline(n: int) -> tuple[float, list[float]]:
    """6 tasks chained by asyncio.Queue(64), same per-hop work (timestamp check, new event)."""
    latencies: list[float] = []
    queues = [asyncio.Queue(64) for _ in range(STAGES)]

    async def hop(i):
        while True:
            event = await queues[i].get()
            if event is None:
                if i + 1 < STAGES:
                    await queues[i + 1].put(None)
                return
            latencies.append(time.monotonic() - event.timestamp)
            if i + 1 < STAGES:
                await queues[i + 1].put(TextToken(event.token_id, step=event.step, **same_turn(event)))

    tasks = [asyncio.create_task(hop(i)) for i in range(STAGES)]
    start = time.perf_counter()
    for i in range(n):
        await queues[0].put(TextToken(i, step=i, turn_id=1))
    await queues[0].put(None)
    await asyncio.gather(*tasks)
    return n / (time.perf_counter() - start), latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1e6  # microseconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="events in the saturated run")
    parser.add_argument("--pings", type=int, default=2000, help="events in the paced run")
    args = parser.parse_args()

    cases = {"saturated": lambda: saturated(args.events), "baseline": lambda: baseline(args.events),
             "paced": lambda: paced(args.pings)}
    results = {}
    # one step per case, shown only when stderr is a terminal
    for name in progress.bar(cases, desc="bench_bus", unit="case", leave=False):
        results[name] = asyncio.run(cases[name]())
    (rate, loaded), (base_rate, base_loaded), (hop_lat, e2e) = results.values()
    print(f"bus benchmark: {STAGES} no-op stages, queue bound 64, block policy")
    print(
        f"saturated ({args.events} events): {rate:,.0f} events/s through the pipeline "
        f"({rate * STAGES:,.0f} hops/s); baseline asyncio.Queue chain {base_rate:,.0f} events/s "
        f"(bus/baseline = {rate / base_rate:.2f})"
    )
    print(
        f"  hop latency under load: p50 {_pct(loaded, 50):,.0f} us, p99 {_pct(loaded, 99):,.0f} us "
        f"(baseline p50 {_pct(base_loaded, 50):,.0f} us, p99 {_pct(base_loaded, 99):,.0f} us)"
    )
    print(
        f"paced ({args.pings} events, one in flight): hop latency p50 {_pct(hop_lat, 50):.1f} us, "
        f"p99 {_pct(hop_lat, 99):.1f} us; end-to-end ({STAGES} hops) p50 {_pct(e2e, 50):.1f} us, "
        f"p99 {_pct(e2e, 99):.1f} us"
    )


if __name__ == "__main__":
    main()
