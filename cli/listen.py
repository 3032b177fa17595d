"""`omnivox listen`: the local microphone assistant. Microphone -> Silero VAD (one turn per utterance) ->
encoder -> LM + strategy -> codec -> speaker, with half- or full-duplex barge-in, and a console view: state
(listening / hearing / thinking / speaking), input level, the answer text as it streams, and per turn the
latency from the end of the user's speech to the first audio played, and the actions the model asks for. Plain
lines when stdout is no TTY. With memory, the turns form one conversation until --conversation-silence seconds
pass without speech (docs/conversations.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

from omnivox.cli import model_options
from omnivox.cli.chat import action_line, displayable
from omnivox.cli.report import report_stage_errors
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import (
    Action,
    ActionWarning,
    AudioStop,
    CodecFrame,
    Event,
    ResetConversation,
    TextToken,
    TurnEnd,
    VoiceStopped,
)
from omnivox.core.runtime.playback import shared_playback
from omnivox.core.runtime.stage import Stage
from omnivox.plugins.silero_vad import TURN_END_SILENCE_MS, TURN_END_THRESHOLD
from omnivox.plugins.sounddevice_io import JITTER_MS

DEFAULT_SPECULATE = 0.0  # the guess bar with the detector: each pause's first ask (docs/turn_taking.md)
NO_TURN = -1  # the turn_id of a conversation control that belongs to no turn (as the MQTT and HTTP services)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="talk to the assistant through the microphone and speaker",
                       description="The local microphone assistant: speak, hear the answer start while the model "
                                   "is still thinking; in full duplex, talk over it to interrupt. Ctrl-C stops.")
    model_options.add_model_options(p)
    p.add_argument("--duplex", choices=("half", "full"), default="half",
                   help="half: the microphone is ignored while the assistant speaks (open speakers); "
                        "full: speaking over the answer interrupts it (headset)")
    p.add_argument("--no-echo-gate", action="store_true",
                   help="full duplex: also barge in on speech that is mostly the assistant's own voice heard back "
                        "(by default such onsets, found by correlating with the played audio, are ignored)")
    p.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    p.add_argument("--input-device", metavar="NAME|INDEX", help="microphone (default: the system default)")
    p.add_argument("--output-device", metavar="NAME|INDEX", help="speaker (default: the system default)")
    p.add_argument("--input-rate", type=int, metavar="HZ", help="open the microphone at this rate "
                   "(default: the device's own; resampled to 16 kHz)")
    p.add_argument("--threshold", type=float, default=0.5, help="VAD speech probability threshold")
    p.add_argument("--min-speech-ms", type=int, default=250, help="speech shorter than this starts no turn")
    p.add_argument("--silence-ms", type=int, default=600, help="silence that ends the user's turn (without an "
                   "end-of-turn detector, or before it is asked)")
    p.add_argument("--turn-end", metavar="DIR|default|off", default="default",
                   help="end-of-turn detector (plugins/turn_end.py): after --turn-end-silence-ms of silence it "
                   "judges whether the sentence is complete; 'default': the shipped models/turn_end; 'off': the "
                   "silence rule alone (--silence-ms)")
    p.add_argument("--turn-end-silence-ms", type=int, nargs="+", default=list(TURN_END_SILENCE_MS), metavar="MS",
                   help="silences at which the detector is asked in a pause (default: 64 160)")
    p.add_argument("--turn-end-threshold", type=float, nargs="+", metavar="P", default=[TURN_END_THRESHOLD],
                   help="P(complete) that ends the turn at an ask: one for all, or one per ask (default 0.9999)")
    p.add_argument("--hold-silence-ms", type=int, default=1000,
                   help="silence that ends a turn the detector judged unfinished")
    p.add_argument("--speculate", type=speculation, metavar="P|off",
                   help="start answering at a pause the detector finds complete with P(complete) >= P, before it "
                        "decides (0: at each pause's first ask, before the detector answers); nothing is played "
                        "before the decision, and a guess the speaker talks on after is dropped "
                        f"(docs/turn_taking.md). Default: {DEFAULT_SPECULATE:g} with the end-of-turn detector, "
                        "off without it; 'off': answer only once the turn is decided")
    p.add_argument("--pre-roll-ms", type=int, default=300, help="audio kept from before the detected speech")
    p.add_argument("--jitter-ms", type=int, default=JITTER_MS, help="audio buffered before an answer starts playing "
                   "(raise it for a model slower than real time: fewer underruns, later first audio)")
    p.add_argument("--max-turns", type=int, metavar="N", help="exit after N finished turns (answered or interrupted)")
    p.add_argument("--record", metavar="FILE", help="also write everything played to FILE (WAV)")
    p.add_argument("--trace", metavar="FILE", help="write one JSON line per finished turn (timings, positions)")
    p.add_argument("--max-steps", type=int, help="answer length bound in LM steps (default 600; random 96)")
    p.add_argument("--strategy", help="decoding strategy (see `omnivox plugins`; default: the model's own, "
                   "its config's `decoding`, else text-delay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the LM (CPU)")
    talk = p.add_argument_group("conversation (docs/conversations.md)")
    talk.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                      help="the turns form one conversation: each answer sees the ones before (default: as the "
                           "model's config declares, `conversation: {memory: true}`; off for Mini-Omni checkpoints, "
                           "trained on single turns)")
    talk.add_argument("--conversation-silence", type=float, default=120.0, metavar="SECONDS",
                      help="with memory: the conversation ends (its history goes, the context stays) after this "
                           "long without speech once the last answer has played (default 120); 0: every turn "
                           "stands alone (memory off)")
    talk.add_argument("--context", metavar="TEXT",
                      help="the conversation's context text, seen by every turn and kept across resets (e.g. "
                           "'battery forty percent, in the kitchen')")
    p.set_defaults(answers=True, func=listen)


@dataclass
class TurnReport:
    """One answered (or interrupted) turn. Times in ms; *_frame are positions in the played output stream."""

    turn: int
    reason: str = "done"
    text: str = ""
    voice_started_frame: int | None = None  # output position when the VAD confirmed the voice
    lm_done_frame: int | None = None  # output position when the LM had finished the turn
    first_frame: int | None = None  # output position of the turn's first played sample
    last_frame: int | None = None  # one past its last played sample
    latency_ms: float | None = None  # end of the user's speech -> first audio played
    vad_ms: float | None = None  # end of speech -> end of turn decided (the end-of-turn silence)
    model_ms: float | None = None  # -> first codec frame (encoder, prefill, decode steps)
    codec_ms: float | None = None  # -> first AudioOut
    playback_ms: float | None = None  # -> first sample handed to the device (jitter buffer)
    underruns: int = 0
    actions: list[dict] = field(default_factory=list)  # the Actions of the turn: name, arguments


class TurnView(Stage):
    """Sits after the LM: collects each turn's text, actions and timings (passing everything on); output positions
    come from the pipeline's PlaybackState called `playback`. `notes`: console lines not printed yet."""

    consumes = (TextToken, CodecFrame, VoiceStopped, AudioStop, TurnEnd, Action, ActionWarning)

    def __init__(self, playback: str = "default", name: str = "view"):
        super().__init__(name)
        self.playback_name = playback
        self.playback = shared_playback(self.shared, playback)  # the pipeline's, once attached
        self.reports: dict[int, TurnReport] = {}
        self.times: dict[int, dict[str, float]] = {}  # turn -> speech_end, decided, first_frame_at
        self.lm_done: set[int] = set()
        self.notes: deque[str] = deque()

    def attach(self, bus, inputs, shared: dict | None = None):
        sub = super().attach(bus, inputs, shared)
        self.playback = shared_playback(self.shared, self.playback_name)
        return sub

    async def process(self, event: Event):
        report = self.reports.setdefault(event.turn_id, TurnReport(event.turn_id))
        times = self.times.setdefault(event.turn_id, {})
        if isinstance(event, TextToken):
            report.text += event.text
            yield event
        elif isinstance(event, CodecFrame):
            times.setdefault("first_frame_at", event.timestamp)
            yield event
        elif isinstance(event, VoiceStopped):
            times["speech_end"] = event.timestamp
        elif isinstance(event, AudioStop):
            times["decided"] = event.timestamp
        elif isinstance(event, Action):
            arguments = dict(event.arguments)
            report.actions.append({"name": event.name, "arguments": arguments})
            self.notes.append(f"turn {event.turn_id}: {action_line(event.name, arguments)}")
            yield event
        elif isinstance(event, ActionWarning):  # a control event: passed on by the stage itself
            self.notes.append(f"turn {event.turn_id}: warning: action dropped ({event.code}): "
                              f"{displayable(event.message, [])}")
        else:  # TurnEnd: the LM is done with this turn
            report.lm_done_frame, report.reason = self.playback.position(), event.reason
            self.lm_done.add(event.turn_id)


class ConversationTimeout:
    """When listen's conversation ends: no speech for `silence_s` seconds after its last turn ended (pure logic on
    monotonic timestamps). Call `update(now, busy)` regularly, `busy` while speech is heard or a turn is answered
    (until its answer has played); it returns True once per conversation, at the first idle call `silence_s` or more
    after the last busy one. A conversation starts at the first busy call: nothing expires before anyone spoke."""

    def __init__(self, silence_s: float):
        if not silence_s > 0:  # also refuses NaN
            raise ConfigError(f"conversation silence must be > 0 seconds, got {silence_s}",
                              "pass e.g. 120 (without a timeout, leave memory off: every turn stands alone)")
        self.silence_s = float(silence_s)
        self.last_busy: float | None = None  # when the open conversation was last busy; None: none open

    def update(self, now: float, busy: bool) -> bool:
        """True when the open conversation has just ended (then none is open until the next busy call)."""
        if busy:
            self.last_busy = now
            return False
        if self.last_busy is not None and now - self.last_busy >= self.silence_s:
            self.last_busy = None
            return True
        return False


class Console:
    """Draws the console view from the stages' state, and reports each turn once its answer has played."""

    def __init__(self, vad, view: TurnView, speaker, out=sys.stdout, trace=None):
        self.vad, self.view, self.speaker, self.out, self.trace = vad, view, speaker, out, trace
        self.tty = out.isatty()
        self.finished = 0  # turns whose answer has played out, or was interrupted
        self.reported: set[int] = set()
        self._said_voice: set[int] = set()

    def state(self) -> str:
        if self.vad.speaking:
            return "hearing"
        if not self.speaker.playback.open_turns():
            return "listening"
        return "speaking" if self.speaker.playback.busy() and self._audible() else "thinking"

    def _audible(self) -> bool:
        return any(t.playing and t.finished_at is None for t in self.speaker.turns.values())

    def tick(self, level_db: float) -> None:
        while self.view.notes:
            self.line(self.view.notes.popleft())
        for turn, frame in sorted(self.vad.voice_started_at.items()):
            if turn not in self._said_voice:
                self._said_voice.add(turn)
                self.view.reports.setdefault(turn, TurnReport(turn)).voice_started_frame = frame
                if not self.tty:
                    self.line(f"turn {turn}: voice started")
        for key, played in list(self.speaker.turns.items()):
            turn = key[1]
            if played.finished_at is not None and turn not in self.reported and turn in self.view.lm_done:
                self.reported.add(turn)
                guesses = getattr(self.vad, "guesses", None)
                if guesses is None or not guesses.withdrawn(key):  # (a guess taken back: nothing was said)
                    self._report(turn, played)
        if self.tty:
            report = self.view.reports.get(self.vad.turn_id)
            text = (report.text if report else "").replace("\n", " ")[-60:]
            meter = "#" * max(0, min(20, int((level_db + 60) / 3)))
            self.out.write(f"\r\033[K[{self.state():9}] in {level_db:6.1f} dB {meter:<20} | {text}")
            self.out.flush()

    def _report(self, turn: int, played) -> None:
        report, times = self.view.reports[turn], self.view.times.get(turn, {})
        report.first_frame, report.last_frame, report.underruns = played.first_frame, played.last_frame, \
            played.underruns
        if played.dropped:
            report.reason = "interrupted"

        def ms(a: str | float | None, b: str | float | None) -> float | None:
            a = times.get(a) if isinstance(a, str) else a
            b = times.get(b) if isinstance(b, str) else b
            return None if a is None or b is None else round((b - a) * 1000.0, 1)

        report.latency_ms = ms("speech_end", played.first_played_at)
        report.vad_ms, report.model_ms = ms("speech_end", "decided"), ms("decided", "first_frame_at")
        report.codec_ms = ms("first_frame_at", played.first_audio_at)
        report.playback_ms = ms(played.first_audio_at, played.first_played_at)
        self.finished += 1
        latency = "no audio" if report.latency_ms is None else (
            f"first audio {report.latency_ms:.0f} ms after end of speech (vad {report.vad_ms} + model "
            f"{report.model_ms} + codec {report.codec_ms} + playback {report.playback_ms})")
        self.line(f"turn {turn} [{report.reason}]: {report.text.strip()!r}; {latency}")
        if self.trace is not None:
            self.trace.write(json.dumps(asdict(report)) + "\n")
            self.trace.flush()

    def line(self, text: str) -> None:
        """One line of its own (clearing the live status line on a TTY)."""
        self.out.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.out.flush()


def list_devices() -> int:
    from omnivox.plugins.sounddevice_io import list_devices as devices

    for kind in ("input", "output"):
        found = devices(kind)
        print(f"{kind} devices:" + ("" if found else " none (is a sound card or PulseAudio/PipeWire there?)"))
        for d in found:
            mark = "*" if d["default"] else " "
            print(f" {mark}{d['index']:>3} {d['name']}  ({d['channels']} ch, {d['rate']} Hz)")
    return 0


def build(args: argparse.Namespace, say=print):
    """The assistant's stages as a Pipeline, plus the VAD, view and speaker the console reads."""
    from omnivox.core.runtime.speech_pipeline import speech_pipeline
    from omnivox.plugins.silero_vad import SileroVAD
    from omnivox.plugins.sounddevice_io import MicrophoneInput, SpeakerOutput

    kit = model_options.load_kit(args, say=say)
    model, encoder, codec, max_steps = kit.model, kit.encoder, kit.codec, args.max_steps or kit.max_steps
    mic = MicrophoneInput(args.input_device, device_rate=args.input_rate)
    vad = SileroVAD(threshold=args.threshold, min_speech_ms=args.min_speech_ms, end_silence_ms=args.silence_ms,
                    pre_roll_ms=args.pre_roll_ms, duplex=args.duplex, echo_gate=not args.no_echo_gate,
                    turn_end=None if args.turn_end == "off" else args.turn_end,
                    turn_end_silence_ms=args.turn_end_silence_ms, turn_end_threshold=args.turn_end_threshold,
                    hold_silence_ms=args.hold_silence_ms, speculate=speculate_bar(args))
    view = TurnView()
    speaker = SpeakerOutput(args.output_device, rate=codec.grid.sample_rate, jitter_ms=args.jitter_ms,
                            record=args.record)
    # the VAD, the view and the speaker share the pipeline's PlaybackState ("default")
    pipeline = speech_pipeline([mic], model=model, encoder=encoder, codec=codec, vad=vad, sinks=[speaker],
                               lm=dict(strategy=args.strategy, task="A1A2", max_steps=max_steps, seed=args.seed,
                                       int8=args.int8, memory=keeps_memory(args, model),
                                       context=args.context or None), after_lm=[view])
    return pipeline, mic, vad, view, speaker


def speculation(value: str) -> float | str:
    """--speculate's value: a P(complete) bar, or 'off'."""
    if value == "off":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a probability nor 'off' (e.g. 0, 0.5, off)") from None


def speculate_bar(args: argparse.Namespace) -> float | None:
    """The VAD's guess bar: --speculate as given ('off': none); by default DEFAULT_SPECULATE with the end-of-turn
    detector, none without one (there is nothing to guess from)."""
    if args.speculate == "off":
        return None
    if args.speculate is None:
        return None if args.turn_end == "off" else DEFAULT_SPECULATE
    return args.speculate


def keeps_memory(args: argparse.Namespace, model) -> bool:
    """Whether the turns form one conversation: --memory / --no-memory, else the model's declared format; never
    with --conversation-silence 0."""
    from omnivox.core.kernel.conversation_format import ConversationFormat

    if args.conversation_silence == 0:
        return False
    return ConversationFormat.of(model).memory if args.memory is None else args.memory


def check_conversation_options(args: argparse.Namespace) -> None:
    silence = args.conversation_silence
    if not silence >= 0:  # also refuses NaN
        raise ConfigError(f"--conversation-silence must be >= 0 seconds, got {silence}",
                          "pass e.g. 120, or 0 for turns that stand alone")
    if silence == 0 and args.memory:
        raise ConfigError("--memory keeps a conversation but --conversation-silence 0 makes every turn stand alone",
                          "drop one of them")


def listen(args: argparse.Namespace) -> int:
    if args.list_devices:
        return list_devices()
    for flag in ("max_turns", "max_steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}", "pass a positive number")
    check_conversation_options(args)
    from omnivox.plugins.sounddevice_io import resolve_device

    resolve_device(args.input_device, "input")  # a missing device fails before the models load
    resolve_device(args.output_device, "output")
    pipeline, mic, vad, view, speaker = build(args, say=lambda line: print(line, file=sys.stderr))
    timeout = None
    if lm_stage(pipeline).conversations.memory:
        timeout = ConversationTimeout(args.conversation_silence)
        print(f"conversation memory on: a conversation ends after {timeout.silence_s:g} s without speech",
              file=sys.stderr)
    trace = open(args.trace, "w", encoding="utf-8") if args.trace else None  # noqa: SIM115 (closed below)
    try:
        console = Console(vad, view, speaker, trace=trace)
        asyncio.run(_serve(pipeline, mic, console, args.max_turns, timeout))
        counts = dict(mic_blocks_dropped=mic.dropped, speaker_underruns=speaker.underruns,
                      onsets_ignored_while_speaking=vad.ignored, onsets_taken_for_echo=vad.echoes,
                      barge_ins=vad.barge_ins, turns=vad.turn_id)
        if trace is not None:
            trace.write(json.dumps({"summary": counts}) + "\n")
    finally:
        if trace is not None:
            trace.close()
    from omnivox.core.runtime.metrics import format_summary

    print(format_summary(pipeline.metrics.turns), file=sys.stderr)
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()), file=sys.stderr)
    return report_stage_errors("listen", pipeline.errors, turn=True)


def lm_stage(pipeline):
    from omnivox.core.runtime.model_stages import LMStage

    return next(stage for stage in pipeline.stages if isinstance(stage, LMStage))


async def end_conversation(pipeline, session_id: str, console: Console, timeout: ConversationTimeout) -> None:
    """The conversation timed out: its history goes (the LM stage consumes the ResetConversation, which reaches it
    through the pipeline's input like a transport's control), and the console says so."""
    await pipeline.feed(ResetConversation(session_id=session_id, turn_id=NO_TURN))
    console.line(f"conversation reset: no speech for {timeout.silence_s:g} s (the context stays)")


async def _serve(pipeline, mic, console: Console, max_turns: int | None,
                 timeout: ConversationTimeout | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await pipeline.start()
    try:
        while not stop.is_set():
            console.tick(mic.level_db)
            if timeout is not None and timeout.update(time.monotonic(), busy=console.state() != "listening"):
                await end_conversation(pipeline, mic.session_id, console, timeout)
            if max_turns is not None and console.finished >= max_turns:
                break
            if any(error.stage == mic.name for error in pipeline.errors):  # the microphone failed
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.05)
            except asyncio.TimeoutError:
                pass
    finally:
        await pipeline.stop()
        if console.tty:
            console.out.write("\n")
