"""The page's live mode (plugins/http/page/live.js) in Debian's chromium, driven by Playwright, over HTTPS with a
self-signed certificate and a token, against the default model: a fake microphone plays a WAV of spoken
questions, the page streams it to /v1/live from its AudioWorklet, the server cuts it into turns, and the ASR
yardstick hears the right answers in the audio the page received. Barge-in: a question spoken over the first
answer stops that answer's playback on the page, and is answered itself."""

from __future__ import annotations

import pytest
from browser_live import (
    answer_audio,
    browser_page,
    demo_server,
    microphone_wav,
    slow_session_start,
    wait_for_turns,
)

pytestmark = [pytest.mark.slow, pytest.mark.weights]

TOKEN = "live-3b9d21"
QUESTIONS = [("What is the capital of France?", "capital", "the capital of france is paris"),
             ("What is the day after friday?", "day_after", "saturday comes after friday")]
# Over a cut answer the demo model's day questions depend on where the VAD ends the question: "what is the day
# after friday?" after "the capital of france is p..." is right in 33 of 45 cuts (answer cut at 3 places, the
# question's audio starting and ending +-50 ms apart; "august comes after july" otherwise), "what is the capital
# of germany?" in 45 of 45 (docs/demo_model.md). The barge-in test asks that one.
BARGE_IN = [QUESTIONS[0], ("What is the capital of Germany?", "capital", "the capital of germany is berlin")]


def heard_right(page, turns: list[int], questions=QUESTIONS) -> list[tuple[str, bool]]:
    """Per turn, what the yardstick heard in the answer the page received and whether it is the right answer."""
    from omnivox.plugins.fw_transcriber import Transcriber
    from omnivox.training.demo_domain import score_answer

    asr, out = Transcriber(), []
    for turn, (_, intent, expected) in zip(turns, questions, strict=True):
        got = answer_audio(page, turn)
        heard = asr.transcribe(*got) if got is not None else ""
        out.append((heard, score_answer(intent, expected, heard)))
    return out


def test_one_live_session_in_the_browser_answers_two_spoken_questions_aloud(tmp_path):
    # the first question starts 0.2 s after the microphone opens, and the session is made to start 1 s after it
    # opens, as on a busy machine: the page holds what it hears meanwhile and sends it once the session starts
    microphone, ends = microphone_wav(tmp_path, [q for q, _, _ in QUESTIONS], [4.0, 4.0], lead_s=0.2)
    with demo_server(tmp_path, token=TOKEN) as server, browser_page(microphone, server) as page:
        slow_session_start(page, 1.0)
        page.goto(server.url + "/")
        page.click("#live")  # the server wants a token: the page finds out and asks for it
        page.wait_for_function("!document.querySelector('#auth').hidden", timeout=30_000)
        refused = page.text_content("#live-status")
        page.fill("#token", TOKEN)
        page.click("#use-token")
        page.click("#live")
        live = wait_for_turns(page, 2)
        heard = heard_right(page, [1, 2])
        shown = page.eval_on_selector_all("#live-transcript li", "rows => rows.map((row) => row.textContent)")
        secure = page.evaluate("window.isSecureContext")
        page.screenshot(path=str(tmp_path / "live_page.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'live_page.png'}")
    assert "token" in refused and secure
    assert live["errors"] == [] and live["state"] == "listening", (live, page.console)
    assert [t["reason"] for t in live["turns"].values()] == ["done", "done"], live["turns"]
    # nothing the page held was lost: the server heard each question end where it ends in the microphone's WAV
    # (+0.10 to +0.14 s measured; 0.3 s earlier when the held frames are dropped)
    assert live["startMs"] >= 1000 and live["heldFrames"] >= 50
    assert all(abs(t["speechEndS"] - end) < 0.25 for t, end in zip(live["turns"].values(), ends, strict=True)), \
        ([t["speechEndS"] for t in live["turns"].values()], ends)
    print(heard, [t["text"] for t in live["turns"].values()], f"started after {live['startMs']:.0f} ms",
          f"{live['heldFrames']} frames held")
    assert all(right for _, right in heard), heard  # the yardstick hears both right answers
    for turn, row in zip(live["turns"].values(), shown, strict=True):
        assert turn["text"] in row and f"{turn['latencyMs']:.0f} ms" in row  # transcript and latency shown
        assert turn["latencyMs"] > 0 and turn["underruns"] == 0
        assert turn["split"]["bufferMs"] >= 0 and turn["serverFirstAudioMs"] > 0


def test_a_question_over_the_answer_stops_its_playback_in_the_browser_and_is_answered(tmp_path):
    # the second question starts 1 s after the first ends: while the first answer (about 3 s) plays
    microphone, _ = microphone_wav(tmp_path, [q for q, _, _ in BARGE_IN], [1.0, 4.0])
    with demo_server(tmp_path) as server, browser_page(microphone, server) as page:
        page.goto(server.url + "/")
        page.click("#live")
        live = wait_for_turns(page, 2)
        _, (heard, right) = heard_right(page, [1, 2], BARGE_IN)
    first, second = live["turns"]["1"], live["turns"]["2"]
    assert live["errors"] == [], (live, page.console)
    assert first["interrupted"] and [b["turn"] for b in live["bargeIns"]] == [1], live
    print({k: first.get(k) for k in ("latencyMs", "audioSeconds", "playedSeconds", "speechEndS", "split")},
          live["bargeIns"], f"started after {live['startMs']:.0f} ms", f"{live['heldFrames']} frames held")
    assert 0 < first["playedSeconds"] < first["audioSeconds"] - 0.5, live  # its playback stopped early
    assert not second["interrupted"] and second["reason"] == "done" and right, (second, heard)
