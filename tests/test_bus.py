"""Bus: routing, priority of system events, overflow policies, interruption, join."""

import asyncio

import pytest

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.bus import Bus
from omnivox.core.runtime.events import (
    AudioChunk,
    Cancel,
    Error,
    Interruption,
    Shutdown,
    TextToken,
    TurnEnd,
    TurnStart,
)


def tok(i, turn=1, session="default"):
    return TextToken(i, str(i), step=i, session_id=session, turn_id=turn)


def chunk(turn=1):
    return AudioChunk(b"\0\0" * 160, rate=16000, turn_id=turn)


async def take(sub, n):
    out = []
    for _ in range(n):
        out.append(await sub.get())
        sub.task_done()
    return out


def test_routes_by_type_and_sender_and_broadcasts_system_events():
    async def main():
        bus = Bus()
        text = bus.subscribe("text", types=(TextToken,), senders=["lm"])
        anything = bus.subscribe("all")
        await bus.publish(tok(1), sender="lm")
        await bus.publish(tok(2), sender="other")
        await bus.publish(chunk(), sender="lm")
        await bus.publish(Error("codec", "boom"))
        assert [type(e).__name__ for e in await take(text, len(text))] == ["Error", "TextToken"]
        assert len(anything) == 4

    asyncio.run(main())


def test_system_events_jump_the_queue():
    async def main():
        bus = Bus()
        sub = bus.subscribe("s", maxsize=8)
        for i in range(3):
            await bus.publish(tok(i, turn=5))
        await bus.publish(Error("x", "late but urgent"))
        got = await take(sub, 4)
        assert isinstance(got[0], Error)
        assert [e.token_id for e in got[1:]] == [0, 1, 2]

    asyncio.run(main())


def test_drop_oldest_keeps_the_newest_counts_drops_and_spares_control_events():
    async def main():
        bus = Bus()
        sub = bus.subscribe("vad", maxsize=3, overflow="drop_oldest")
        await bus.publish(TurnStart(turn_id=1))
        for i in range(5):
            await bus.publish(tok(i))  # never waits
        got = await take(sub, 3)
        assert isinstance(got[0], TurnStart)
        assert [e.token_id for e in got[1:]] == [3, 4]
        assert sub.dropped == 3 and sub.high_water == 3

    asyncio.run(main())


def test_block_makes_the_publisher_wait_for_room():
    async def main():
        bus = Bus()
        sub = bus.subscribe("out", maxsize=2, overflow="block")
        await bus.publish(tok(0))
        await bus.publish(tok(1))
        third = asyncio.create_task(bus.publish(tok(2)))
        await asyncio.sleep(0.01)
        assert not third.done() and len(sub) == 2
        await take(sub, 1)
        await asyncio.wait_for(third, 1)
        assert [e.token_id for e in await take(sub, 2)] == [1, 2]
        assert sub.high_water == 2

    asyncio.run(main())


def test_interruption_purges_that_turn_only_cancels_work_and_refuses_late_data():
    async def main():
        bus = Bus()
        calls = []
        a = bus.subscribe("a", maxsize=16, on_interrupt=lambda s, t: calls.append((s, t)))
        b = bus.subscribe("b", maxsize=16, overflow="drop_oldest")
        await bus.publish(tok(0, turn=1))
        await bus.publish(tok(1, turn=2))
        await bus.publish(tok(2, turn=1, session="other"))
        await bus.publish(TurnEnd(turn_id=1))
        await bus.publish(Interruption(turn_id=1))
        await bus.publish(tok(3, turn=1))  # produced after the interruption: refused
        assert calls == [("default", 1)]
        assert bus.is_interrupted("default", 1) and not bus.is_interrupted("default", 2)
        assert bus.discarded == 1
        for sub in (a, b):
            got = await take(sub, len(sub))
            assert isinstance(got[0], Interruption)
            kept = [(type(e).__name__, e.session_id, e.turn_id) for e in got[1:]]
            assert kept == [
                ("TextToken", "default", 2),
                ("TextToken", "other", 1),
                ("TurnEnd", "default", 1),
            ]
            assert sub.purged == 1

    asyncio.run(main())


def test_publisher_blocked_on_an_interrupted_turn_does_not_deliver():
    async def main():
        bus = Bus()
        sub = bus.subscribe("out", maxsize=1)
        await bus.publish(tok(0, turn=1))
        waiting = asyncio.create_task(bus.publish(tok(1, turn=1)))
        await asyncio.sleep(0.01)
        await bus.publish(Interruption(turn_id=1))  # purges tok 0, which frees room for the waiter
        await asyncio.wait_for(waiting, 1)
        got = await take(sub, len(sub))
        assert [type(e) for e in got] == [Interruption]
        assert bus.discarded == 1

    asyncio.run(main())


def test_cancel_drops_every_turn_of_the_session():
    async def main():
        bus = Bus()
        sub = bus.subscribe("s", maxsize=16)
        await bus.publish(tok(0, turn=1, session="gone"))
        await bus.publish(tok(1, turn=2, session="gone"))
        await bus.publish(tok(2, turn=1, session="stays"))
        await bus.publish(Cancel(session_id="gone"))
        await bus.publish(tok(3, turn=9, session="gone"))
        got = await take(sub, len(sub))
        assert [(type(e).__name__, e.session_id) for e in got] == [("Cancel", "gone"), ("TextToken", "stays")]

    asyncio.run(main())


def test_join_waits_until_every_event_is_handled():
    async def main():
        bus = Bus()
        sub = bus.subscribe("s")
        for i in range(3):
            await bus.publish(tok(i))
        joined = asyncio.create_task(bus.join())
        await take(sub, 2)
        await asyncio.sleep(0)
        assert not joined.done()
        await take(sub, 1)
        await asyncio.wait_for(joined, 1)

    asyncio.run(main())


def test_bad_subscription_settings_name_the_valid_choices():
    bus = Bus()
    with pytest.raises(ConfigError, match="overflow policy 'drop_newest'") as info:
        bus.subscribe("s", overflow="drop_newest")
    assert "block, drop_oldest" in info.value.fix
    with pytest.raises(ConfigError, match="queue size 0"):
        bus.subscribe("s", maxsize=0)


def test_shutdown_releases_blocked_publishers_and_closes_the_bus():
    async def main():
        bus = Bus()
        sub = bus.subscribe("out", maxsize=1)
        await bus.publish(tok(0))
        blocked = asyncio.create_task(bus.publish(tok(1)))
        await asyncio.sleep(0.01)
        await bus.publish(Shutdown())
        await asyncio.wait_for(blocked, 1)
        await bus.publish(tok(2))
        got = await take(sub, len(sub))
        assert [type(e) for e in got] == [Shutdown, TextToken]
        assert bus.discarded == 2

    asyncio.run(main())
