"""The documented kinds of bad input (issue 22, "must hold"): docs/mqtt_protocol.md's table sent, kind by kind, to a
REAL mosquitto and `omnivox serve` subprocess (tests/mqtt_bad_inputs.py produces each); the HTTP table
(docs/http_api.md) is sent by tests/test_http_edge.py. Each kind gets its named error, the turn it involves
ends exactly once, the server answers a good question right after, and its log has no traceback at ERROR level.
The two tables together list at least 60 kinds."""

from __future__ import annotations

import pytest
from mqtt_bad_inputs import BAD_INPUTS, MQTT_DOC, SESSION_LOCAL, Probe, end_extra, table, turn_ends, wait_error
from mqtt_support import DOCS, Mosquitto, RawDevice, ServeProcess, documented_bad_inputs, documented_error_codes

HTTP_DOC = DOCS / "http_api.md"
# the server the MQTT table holds for: small quotas and limits, so that each kind takes few messages
MQTT_EDGE_LIMITS = {"max_sessions": 6, "max_sessions_per_site": 2, "max_turn_s": 2.0, "max_messages_per_s": 20.0,
                    "session_idle_s": 3.0}


def test_the_catalogue_and_the_document_list_the_same_kinds():
    documented = table()
    assert list(documented) == list(BAD_INPUTS), (
        f"only in {MQTT_DOC.name}: {sorted(set(documented) - set(BAD_INPUTS))}; only in tests/mqtt_bad_inputs.py: "
        f"{sorted(set(BAD_INPUTS) - set(documented))} (or the order differs)")


def test_the_tables_list_at_least_60_kinds_each_with_a_documented_code():
    mqtt, http = table(), documented_bad_inputs(HTTP_DOC)
    print(f"kinds of bad input: MQTT {len(mqtt)}, HTTP {len(http)}, together {len(mqtt) + len(http)}")
    assert len(mqtt) + len(http) >= 60, (len(mqtt), len(http))
    assert not set(mqtt) & set(http), "a kind id in both tables"
    for doc, kinds in ((MQTT_DOC, mqtt), (HTTP_DOC, http)):
        unknown = {kind: code for kind, code in kinds.items() if code not in documented_error_codes(doc)}
        assert not unknown, f"{doc.name}: kinds whose code is not in its error-code table: {unknown}"


@pytest.mark.slow
def test_each_kind_of_bad_mqtt_input_gets_its_named_error_then_a_good_answer(tmp_path):
    broker = Mosquitto(tmp_path).start()
    server = ServeProcess(tmp_path, broker.url, worker="catalogue", http=False, config={"limits": MQTT_EDGE_LIMITS})
    got, ends, answers, documented = {}, {}, {}, table()
    try:
        server.start()
        device = RawDevice(broker.port, "catalogue")
        for index, (kind, produce) in enumerate(BAD_INPUTS.items()):
            probe = Probe(device, site=kind[:64], session=f"k{index}")
            assert probe.start()["event"] == "session-started", kind
            mark = device.mark()
            expect = produce(probe)
            error = wait_error(probe, expect, mark, code=documented.get(kind))
            got[kind] = None if error is None else error["code"]
            if expect.turn is not None:
                ends[kind] = turn_ends(probe, expect.turn, mark)
            end_extra(probe)
            if kind in SESSION_LOCAL:  # the session goes on: the good question on it
                answers[kind] = probe.ask()
            else:
                good = Probe(device, site="good", session=f"g{index}")
                assert good.start()["event"] == "session-started", f"no session after {kind}"
                answers[kind] = good.ask()
                good.end()
            if not probe.ended:
                probe.end()
        device.close()
        alive = server.alive()
    finally:
        server.stop()
        broker.kill()
    wrong = {kind: (got.get(kind), code) for kind, code in documented.items() if got.get(kind) != code}
    assert not wrong, f"kinds whose error is not the documented one (got, documented): {wrong}"
    assert all(count == 1 for count in ends.values()), f"turn-ends per refused turn: {ends}"
    bad_answers = {kind: a for kind, a in answers.items() if a["reason"] != "done" or not a["audio"]}
    assert not bad_answers, f"good questions not answered after these kinds: {bad_answers}"
    assert alive
    found = server.error_tracebacks()
    assert not found, f"{len(found)} traceback(s) at ERROR level; the first:\n{found[0][:3000]}"
