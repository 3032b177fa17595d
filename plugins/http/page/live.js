// The page's live mode: one full-duplex session over the /v1/live WebSocket (docs/live_api.md). The microphone
// streams continuously from an AudioWorklet (mic-worklet.js; echo cancellation, noise suppression and gain
// control on); the server cuts it into turns and streams each answer back; answers play through a jitter buffer
// (JITTER_S of audio queued before a turn starts playing, and again after an underrun) and stop the moment the
// server says `interrupted` (barge-in). The page shows the state, each turn's answer and its latency: end of
// speech to the answer's first sample on the playback clock, from the end of speech the server's VAD heard (as
// `omnivox listen` counts) and from the last loud microphone frame. Uses app.js's
// audioContext(), $, base64, omnivox and TOKEN_KEY. window.omnivox.live holds what the tests read.
"use strict";

const JITTER_S = 0.04; // audio queued before a turn plays, as in `omnivox listen`
const MARGIN_S = 0.005; // a turn's first chunk starts this far ahead of the audio clock, so chunks chain gaplessly
const LOUD = 0.02; // RMS of a microphone frame that holds speech (-34 dBFS)
const KEPT_TURNS = 8; // answers whose audio the page keeps (omnivox.live.answerAudio)
const HEADER = 12; // b"OVA\x01", uint32 turn, uint32 seq (big-endian)
const FRAME = 160; // samples per microphone frame (10 ms at 16 kHz, mic-worklet.js)
const FRAME_TIMES = 32768; // microphone frames whose capture time is kept (5.5 min)
const HELD_FRAMES = 500; // microphone frames (5 s) kept while the session opens, sent once it has started

const live = (omnivox.live = {
  state: "off", // off, connecting, listening, hearing, thinking, speaking
  session: null,
  // turn -> {text, latencyMs (from the end of speech the server's VAD heard), fromLastLoudMs (from the last loud
  // microphone frame), split, serverFirstAudioMs, audioSeconds (received), playedSeconds (at a barge-in),
  // underruns, interrupted, reason, speechEndS (where the server heard the speech end, in seconds of the
  // microphone stream from its first frame)}
  turns: {},
  bargeIns: [], // {turn, ms}: the server's detection (its clock) to the page's playback stopping (audio clock)
  startMs: null, // Start live pressed to the session started
  heldFrames: 0, // microphone frames captured while the session opened, sent once it started (none lost)
  errors: [],
  answerAudio: (turn) => answerAudio(turn), // {rate, pcm: base64 s16le} of a kept answer
});
let socket = null;
let microphone = null; // {stream, source, node}
let seq = 0;
let held = []; // frames captured before the session started (at most HELD_FRAMES, the newest)
let startPressed = null; // performance.now() when Start live was pressed
const frameTimes = new Float64Array(FRAME_TIMES); // seq % FRAME_TIMES -> context time after the frame's last sample
let lastLoud = null; // context time after the last loud microphone frame
const playing = {}; // turn -> {rate, waiting, waitingS, nodes, playAt, first, chunks, lastLoud}

function setState(state) {
  live.state = state;
  $("live-state").textContent = state;
  $("live-state").className = `state ${state}`;
}

function liveUrl() {
  const url = new URL("v1/live", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) url.searchParams.set("token", token);
  return url.href;
}

async function startLive() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    return liveFailed("live mode needs HTTPS or localhost: serve with --http-tls-cert/--http-tls-key");
  }
  $("live").disabled = true;
  setState("connecting");
  // a new session: its turns are numbered from 1 again
  Object.assign(live, { turns: {}, bargeIns: [], errors: [], startMs: null, heldFrames: 0 });
  startPressed = performance.now();
  for (const turn of Object.keys(playing)) delete playing[turn];
  $("live-transcript").replaceChildren();
  $("live-status").textContent = "";
  const ctx = audioContext();
  let stream;
  try {
    await ctx.audioWorklet.addModule("mic-worklet.js"); // first: the microphone's frames flow from the moment it opens
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    $("live").disabled = false;
    return liveFailed(`no microphone: ${err.message} (allow microphone access)`);
  }
  const source = ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ctx, "omnivox-mic", { numberOfOutputs: 0 });
  microphone = { stream, source, node };
  seq = 0;
  held = [];
  socket = new WebSocket(liveUrl());
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send(JSON.stringify({ event: "start", version: 1, rate: 16000 }));
  socket.onmessage = (message) => (typeof message.data === "string" ? onEvent(JSON.parse(message.data))
    : onAudio(message.data));
  socket.onclose = () => onClosed();
  node.port.onmessage = (message) => onMicrophone(message.data);
  source.connect(node);
  $("live-stop").disabled = false;
}

// What the user says while the session opens is kept (the newest HELD_FRAMES) and sent once it has started, so
// a first question spoken right after pressing Start live is heard whole.
function onMicrophone({ pcm, level, time }) {
  if (level > LOUD) lastLoud = time;
  const frame = new Uint8Array(HEADER + pcm.byteLength);
  frame.set([0x4f, 0x56, 0x41, 0x01]); // "OVA" 1
  frame.set(new Uint8Array(pcm), HEADER);
  if (!socket || socket.readyState !== WebSocket.OPEN || live.session === null) {
    held.push({ frame, time });
    if (held.length > HELD_FRAMES) held.shift();
    return;
  }
  sendFrame(frame, time);
}

function sendFrame(frame, time) {
  new DataView(frame.buffer).setUint32(8, seq);
  frameTimes[seq++ % FRAME_TIMES] = time;
  socket.send(frame);
}

function turnOf(turn) {
  if (!live.turns[turn]) {
    live.turns[turn] = { text: "", latencyMs: null, fromLastLoudMs: null, split: null, serverFirstAudioMs: null,
      audioSeconds: 0, playedSeconds: null, underruns: 0, interrupted: false, reason: null, speechEnd: null,
      speechEndS: null, decidedAt: null };
    const row = document.createElement("li");
    row.id = `live-turn-${turn}`;
    $("live-transcript").append(row);
    for (const old of Object.keys(live.turns).map(Number).filter((t) => t <= turn - KEPT_TURNS)) {
      delete playing[old];
    }
  }
  return live.turns[turn];
}

function showTurn(turn) {
  const t = live.turns[turn];
  const figures = [t.latencyMs === null ? null : `${t.latencyMs.toFixed(0)} ms to first audio`,
    t.serverFirstAudioMs === null ? null : `server ${t.serverFirstAudioMs.toFixed(0)} ms`,
    t.interrupted ? "interrupted" : null].filter(Boolean).join(", ");
  $(`live-turn-${turn}`).textContent = `${turn}: ${t.text || "…"}${figures ? ` (${figures})` : ""}`;
}

function onEvent(event) {
  const turn = event.turn;
  switch (event.event) {
    case "started":
      live.session = event.session;
      live.startMs = performance.now() - startPressed;
      live.heldFrames = held.length;
      held.forEach(({ frame, time }) => sendFrame(frame, time));
      held = [];
      setState("listening");
      break;
    case "voice-started":
      turnOf(turn);
      showTurn(turn);
      setState("hearing");
      break;
    case "voice-stopped":
      turnOf(turn).decidedAt = audioContext().currentTime;
      turnOf(turn).speechEnd = streamTime(event.stream_s);
      turnOf(turn).speechEndS = event.stream_s;
      setState("thinking");
      break;
    case "text":
      turnOf(turn).text += event.text;
      showTurn(turn);
      break;
    case "audio-start":
      playing[turn] = { rate: event.rate, waiting: [], waitingS: 0, nodes: [], playAt: null, first: null, chunks: [],
        lastLoud };
      break;
    case "interrupted":
      stopTurn(turn, event.server_time);
      break;
    case "turn-end":
      turnOf(turn).reason = event.reason;
      if (playing[turn] && !live.turns[turn].interrupted) schedule(turn); // what the jitter buffer still holds
      if (!playing[turn] || playing[turn].playAt === null || playing[turn].playAt <= audioContext().currentTime) {
        afterTurn();
      }
      break;
    case "metrics":
      if (event.first_audio_ms != null) {
        turnOf(turn).serverFirstAudioMs = event.first_audio_ms;
        showTurn(turn);
      }
      break;
    case "error":
      live.errors.push(event);
      liveFailed(`${event.code}: ${event.message}${event.fix ? ` (fix: ${event.fix})` : ""}`);
      break;
    default:
      break; // action, action-warning: shown by nothing yet
  }
}

// One binary frame of answer audio: queued in the turn's jitter buffer, played once JITTER_S are queued (or
// the turn has ended), then chained gaplessly; a turn that runs dry fills the buffer again
function onAudio(data) {
  const turn = new DataView(data).getUint32(4);
  const p = playing[turn];
  if (!p || live.turns[turn]?.interrupted) return;
  const pcm = new Int16Array(data.slice(HEADER));
  p.chunks.push(pcm);
  const buffer = audioContext().createBuffer(1, pcm.length, p.rate);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  p.waiting.push(buffer);
  p.waitingS += buffer.duration;
  const t = turnOf(turn);
  t.audioSeconds += buffer.duration;
  if (p.playAt !== null && p.playAt < audioContext().currentTime) {
    t.underruns += 1;
    p.playAt = null;
  }
  if (p.playAt !== null || p.waitingS >= JITTER_S) schedule(turn);
  showTurn(turn);
}

function schedule(turn) {
  const p = playing[turn];
  if (!p.waiting.length) return;
  const ctx = audioContext();
  const t = live.turns[turn];
  if (p.playAt === null) p.playAt = ctx.currentTime + MARGIN_S;
  if (p.first === null) {
    p.first = p.playAt;
    const ms = (from, to) => (from === null || to === null ? null : (to - from) * 1000);
    t.latencyMs = ms(t.speechEnd, p.first);
    t.fromLastLoudMs = ms(p.lastLoud, p.first);
    // the server's end of speech -> its decision arrived -> first audio queued -> it plays (on the audio clock)
    t.split = { turnEndMs: ms(t.speechEnd, t.decidedAt), answerMs: ms(t.decidedAt, ctx.currentTime),
      bufferMs: ms(ctx.currentTime, p.first) };
    setState("speaking");
  }
  for (const buffer of p.waiting) {
    const node = ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(ctx.destination);
    node.start(p.playAt);
    p.playAt += buffer.duration;
    p.nodes.push(node);
    node.onended = () => {
      if (p.nodes[p.nodes.length - 1] === node && t.reason !== null) afterTurn();
    };
  }
  p.waiting = [];
  p.waitingS = 0;
}

// The context time at which sample `streamS` seconds into the stream sent was captured
function streamTime(streamS) {
  if (streamS == null) return null;
  const sample = Math.round(streamS * 16000);
  const frame = Math.max(0, Math.ceil(sample / FRAME) - 1);
  if (frame >= seq || seq - frame > FRAME_TIMES) return null;
  return frameTimes[frame % FRAME_TIMES] - ((frame + 1) * FRAME - sample) / 16000;
}

// Barge-in: the turn's audio stops now; how long after the server heard the voice is read off the playback clock
function stopTurn(turn, serverTime) {
  const t = turnOf(turn);
  t.interrupted = true;
  const p = playing[turn];
  if (p) p.waiting = [];
  if (p && p.first !== null) {
    const ctx = audioContext();
    const stopAt = Math.min(ctx.currentTime, p.playAt); // the audio had run out by itself at p.playAt
    for (const node of p.nodes) node.stop();
    t.playedSeconds = Math.max(0, stopAt - p.first);
    if (serverTime != null) {
      const stamp = ctx.getOutputTimestamp(); // context time <-> performance time, output latency included
      const heard = performance.timeOrigin + stamp.performanceTime + (stopAt - stamp.contextTime) * 1000;
      live.bargeIns.push({ turn, ms: heard - serverTime * 1000 });
    }
  }
  showTurn(turn);
}

function afterTurn() {
  if (socket && live.session !== null && live.state !== "hearing") setState("listening");
}

function stopLive() {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ event: "stop" }));
  closeMicrophone();
}

function closeMicrophone() {
  if (!microphone) return;
  microphone.source.disconnect();
  microphone.node.port.onmessage = null;
  microphone.stream.getTracks().forEach((track) => track.stop());
  microphone = null;
  held = [];
}

async function onClosed() {
  const wasStarted = live.session !== null;
  socket = null;
  live.session = null;
  closeMicrophone();
  for (const p of Object.values(playing)) p.nodes.forEach((node) => node.stop());
  setState("off");
  $("live").disabled = false;
  $("live-stop").disabled = true;
  if (!wasStarted && live.errors.length === 0) {
    // the upgrade was refused: ask the server why (a token it wants, most likely)
    const token = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch("v1/live", { headers: token ? { Authorization: `Bearer ${token}` } : {} })
      .catch(() => null);
    if (response && response.status === 401) {
      $("auth").hidden = false;
      return liveFailed("this server asks for a token: enter it below, press Use token, then Start live again");
    }
    liveFailed("the live session could not be opened (is the server running?)");
  }
}

function liveFailed(message) {
  live.errors.push({ message });
  $("live-status").textContent = message;
  $("live-status").className = "error";
}

function answerAudio(turn) {
  const p = playing[turn];
  if (!p) return null;
  const total = p.chunks.reduce((n, c) => n + c.length, 0);
  const pcm = new Int16Array(total);
  let at = 0;
  for (const c of p.chunks) { pcm.set(c, at); at += c.length; }
  return { rate: p.rate, pcm: base64(new Uint8Array(pcm.buffer)) };
}

$("live").addEventListener("click", startLive);
$("live-stop").addEventListener("click", stopLive);
