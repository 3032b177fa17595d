"""The HTTP server's edge against careless and hostile clients: every kind of bad input of docs/http_api.md, sent
to a real HTTPS server with a token, gets its named error quickly and frees its slot; the server then answers a
good question and logs nothing at ERROR. A client that stops reading its answer is disconnected and its turn
cancelled."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from urllib.parse import urlsplit

import pytest
import requests
from aiohttp import web
from http_support import BAD_INPUTS, EDGE_SERVER, EDGE_TOKEN, Edge, bad_input_table, self_signed, serving, wait_until

pytest.importorskip("aiohttp")


def idle(served):
    """Wait until no request of `served` holds a session slot."""
    def wait() -> None:
        assert wait_until(lambda: not served.call(lambda: len(served.service.engine.sessions))), "a slot stayed taken"
    return wait


def test_each_kind_of_bad_input_gets_its_named_error_then_a_good_question_is_answered(tmp_path, caplog):
    table = bad_input_table()
    assert len(table) >= 20 and list(table) == list(BAD_INPUTS), "docs/http_api.md's table and BAD_INPUTS differ"
    cert = self_signed(tmp_path)
    got, took = {}, {}
    tls = {"tls_cert": str(cert.cert), "tls_key": str(cert.key)}
    with caplog.at_level(logging.INFO), serving(**tls, **EDGE_SERVER) as served:
        assert served.url.startswith("https://")
        edge = Edge(served.url, cert.cert, tmp_path, idle=idle(served))
        for kind, send in BAD_INPUTS.items():
            start = time.monotonic()
            got[kind] = send(edge)
            took[kind] = time.monotonic() - start
            edge.idle()
        with pytest.raises(requests.ConnectionError):  # plain HTTP to the HTTPS port: no answer, no harm
            requests.post(served.url.replace("https:", "http:") + "/chat", json={}, timeout=10)
        with tls_socket(served.url, cert.cert) as loris:
            loris.sendall(b"POST /chat HTTP/1.1\r\nHost: omnivox\r\nX-Slow: ")  # half its headers, then nothing
            start = time.monotonic()
            assert loris.recv(1024) == b""
            headers_closed_after = time.monotonic() - start
        unparsed = []  # requests aiohttp cannot parse: its plain-text 400
        head = b"POST /v1/chat HTTP/1.1\r\nHost: omnivox\r\n"
        for junk in (b"GARBAGE\r\n\r\n", head + b"Content-Length: -5\r\n\r\n",
                     head + b"X-Long: " + b"x" * 20_000 + b"\r\n\r\n",
                     head + b"Content-Encoding: zstd\r\nContent-Length: 2\r\n\r\n{}"):
            with tls_socket(served.url, cert.cert) as sock:
                sock.sendall(junk)
                unparsed.append(sock.recv(1024).split(b"\r\n")[0])
        lines = edge.post("/v1/chat", json={"audio": edge.audio()}).text.splitlines()
        page = edge.request("GET", "/")  # the page's files need no token
    print({kind: f"{seconds:.2f} s" for kind, seconds in took.items()})
    assert got == table
    assert all(seconds < 3.0 for seconds in took.values()), took  # the slow upload: the 1 s request timeout
    assert took["http-slow-upload"] >= EDGE_SERVER["request_timeout_s"]
    assert all(line.split()[1] == b"400" for line in unparsed), unparsed
    assert headers_closed_after < 3.0  # the request timeout closes a connection whose request never arrives
    assert '"event": "turn-end", "reason": "done"' in lines[-2]
    assert page.status_code == 200 and page.text.startswith("<!doctype html>")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "the server logged an error"


def tls_socket(url: str, ca) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", urlsplit(url).port), timeout=10)
    return ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_client_that_stops_reading_is_disconnected_and_its_turn_cancelled(tmp_path, monkeypatch):
    async def stalled(self, data):  # the client's window stays shut: every write waits
        await asyncio.Event().wait()

    with serving(max_steps=64, request_timeout_s=0.5) as served:
        monkeypatch.setattr(web.StreamResponse, "write", stalled)
        start = time.monotonic()
        with pytest.raises(requests.RequestException):
            requests.post(f"{served.url}/v1/chat", json={"text": "hello"}, timeout=30).text.splitlines()
        assert time.monotonic() - start < 10
        assert wait_until(lambda: served.call(lambda: (served.service.turns_cancelled,
                                                       len(served.service.engine.sessions))) == (1, 0))
        monkeypatch.undo()
        answer = requests.post(f"{served.url}/v1/chat", json={"text": "hello"}, timeout=30).text.splitlines()
    assert '"reason": "done"' in answer[-2]


def test_the_token_is_compared_whole_and_the_scheme_in_any_case():
    with serving(token=EDGE_TOKEN) as served:
        for header in (f"Bearer {EDGE_TOKEN}x", f"Bearer {EDGE_TOKEN[:-1]}", f"bearer {EDGE_TOKEN}"):
            response = requests.post(f"{served.url}/v1/chat", json={"text": "hi"}, headers={"Authorization": header})
            assert response.status_code == (200 if header.startswith("bearer ") else 401), header
