"""A transport added from this one file: typed questions over TCP, one line each, answered by one JSON line
`{"text": <the LM's text>, "end": <the turn's TurnEnd reason>}`. Each connection is a session, each line a turn.
Registered through `register_transports`; `omnivox serve --line-port PORT` serves it (port 0: a free one, said in
the announcement "line transport on HOST:PORT")."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.runtime.events import Event, TextIn, TextToken, TurnEnd, TurnStart
from omnivox.core.runtime.transport import ServeOptions, Transport, TransportInput, TransportOutput


class LineService:
    """The TCP server: a line in becomes TurnStart, TextIn, TurnEnd; `answer` writes the reply line back."""

    def __init__(self, host: str, port: int, feed):
        self.host, self.port, self.feed = host, port, feed
        self.waiting: dict[tuple[str, int], asyncio.Future] = {}  # (session, turn) -> its reply
        self.sessions = itertools.count(1)
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.client, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = f"line-{next(self.sessions)}"
        try:
            for turn in itertools.count(1):
                line = (await reader.readline()).decode().strip()
                if not line:
                    return
                ids = {"session_id": session, "turn_id": turn}
                reply = self.waiting[(session, turn)] = asyncio.get_running_loop().create_future()
                for event in (TurnStart(**ids), TextIn(line, **ids), TurnEnd(reason="done", **ids)):
                    self.feed(event)
                writer.write(json.dumps(await reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    def answer(self, turn: tuple[str, int], text: str, reason: str) -> None:
        reply = self.waiting.pop(turn, None)
        if reply is not None and not reply.done():
            reply.set_result({"text": text, "end": reason})


class LineInput(TransportInput):
    transport = "line"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, service: str = "line", name: str | None = None):
        super().__init__(service, name)
        self.host, self.port = host, port

    async def open_service(self, feed) -> LineService:
        service = LineService(self.host, self.port, feed)
        await service.start()
        return service

    async def close_service(self) -> None:
        await self.service.stop()

    def announcement(self) -> str:
        return f"line transport on {self.host}:{self.service.port}"


class LineOutput(TransportOutput):
    consumes = (TextToken, TurnEnd)
    transport = "line"

    def __init__(self, service: str = "line", name: str | None = None):
        super().__init__(service, name)
        self.texts: dict[tuple[str, int], str] = {}

    async def process(self, event: Event) -> None:
        if event.turn not in self.service.waiting:
            return  # another transport's session
        if isinstance(event, TextToken):
            self.texts[event.turn] = self.texts.get(event.turn, "") + event.text
        else:
            self.service.answer(event.turn, self.texts.pop(event.turn, ""), event.reason)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("line (typed questions over TCP)").add_argument(
        "--line-port", type=int, metavar="PORT", help="serve the line transport on 127.0.0.1:PORT")


@hookimpl
def register_transports(registry):
    options = ServeOptions(keys=("line_port",), add=add_options, params=lambda values: {"port": values["line_port"]},
                           enabled=lambda values: values.get("line_port") is not None)
    registry.add("line", lambda: Transport(LineInput, LineOutput, options), description="typed questions over TCP")
