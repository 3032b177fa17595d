// The omnivox page: record the microphone (WebAudio), post it as a 16 kHz WAV to /v1/chat, play the streamed
// answer (WebAudio, chunk by chunk as it arrives) and show the streaming text and the latency figures. A server
// started with a token answers 401: the page then asks for it, keeps it in sessionStorage and sends it as
// `Authorization: Bearer`. window.omnivox holds what the tests read: audioChunks, audioSeconds, text, turns,
// lastError.
"use strict";

const omnivox = (window.omnivox = { audioChunks: 0, audioSeconds: 0, text: "", turns: 0, lastError: null });
const $ = (id) => document.getElementById(id);
let context = null; // one AudioContext for recording and playback
let recorder = null; // {source, node, stream, chunks: Float32Array[]}
let playAt = 0; // when the next answer chunk starts (context time)
let lastAsked = null; // [body, seconds] of the last question, asked again once a token is given
const TOKEN_KEY = "omnivox-token";
const QUESTION_RATE = 16000; // what the model hears; the page resamples to it

function audioContext() {
  if (!context) context = new AudioContext();
  if (context.state === "suspended") context.resume();
  return context;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function startRecording() {
  if (!navigator.mediaDevices) {
    status("the microphone needs HTTPS or localhost: serve with --http-tls-cert/--http-tls-key (typing works)", true);
    return;
  }
  const ctx = audioContext();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  } catch (err) {
    status(`no microphone: ${err.message} (allow microphone access, or type a question)`, true);
    return;
  }
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  recorder = { source, node, stream, chunks: [] };
  node.onaudioprocess = (e) => recorder && recorder.chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(ctx.destination); // a ScriptProcessor runs only while connected; it outputs silence
  $("record").classList.add("recording");
  $("record").disabled = true;
  $("stop").disabled = false;
  status("recording…");
}

async function stopAndSend() {
  if (!recorder) return;
  const { source, node, stream, chunks } = recorder;
  recorder = null;
  source.disconnect();
  node.disconnect();
  stream.getTracks().forEach((t) => t.stop());
  $("record").classList.remove("recording");
  $("record").disabled = false;
  $("stop").disabled = true;
  const samples = concat(chunks);
  if (samples.length < context.sampleRate * 0.2) {
    status("the recording is too short: hold Record for at least a second", true);
    return;
  }
  const question = await resample(samples, context.sampleRate, QUESTION_RATE);
  await ask({ audio: base64(wavFile(question, QUESTION_RATE)) }, samples.length / context.sampleRate);
}

// `samples` at `rate` resampled to `to` Hz (by the browser's own resampler)
async function resample(samples, rate, to) {
  if (rate === to) return samples;
  const offline = new OfflineAudioContext(1, Math.ceil((samples.length * to) / rate), to);
  const buffer = offline.createBuffer(1, samples.length, rate);
  buffer.copyToChannel(samples, 0);
  const source = offline.createBufferSource();
  source.buffer = buffer;
  source.connect(offline.destination);
  source.start();
  return (await offline.startRendering()).getChannelData(0);
}

function concat(chunks) {
  const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

// 16-bit PCM mono WAV of `samples` (floats in [-1, 1])
function wavFile(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return new Uint8Array(view.buffer);
}

function base64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function resetFigures() {
  omnivox.text = "";
  $("answer").textContent = "";
  for (const id of ["first-text", "first-audio", "server-first-audio", "server-rtf"]) $(id).textContent = "–";
}

async function ask(body, seconds) {
  lastAsked = [body, seconds];
  omnivox.lastError = null;
  resetFigures();
  audioContext();
  const sent = performance.now();
  let firstText = null, firstAudio = null;
  status(seconds ? `sent ${seconds.toFixed(1)} s of audio, waiting…` : "sent, waiting…");
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch("v1/chat", { method: "POST", headers, body: JSON.stringify(body) });
  } catch (err) {
    return failed(`the server cannot be reached: ${err.message}`);
  }
  if (!response.ok) {
    const error = (await response.json().catch(() => ({}))).error || {};
    if (response.status === 401) {
      $("auth").hidden = false;
      $("token").focus();
      return failed(`${error.message || "this server asks for a token"}: enter it above and press Use token`);
    }
    return failed(`${error.message || response.statusText}${error.fix ? ` (fix: ${error.fix})` : ""}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      if (!line.trim()) continue;
      const event = JSON.parse(line);
      const ms = performance.now() - sent;
      if (event.event === "text") {
        if (firstText === null) { firstText = ms; $("first-text").textContent = `${ms.toFixed(0)} ms`; }
        omnivox.text += event.text;
        $("answer").textContent = omnivox.text;
      } else if (event.event === "audio") {
        if (firstAudio === null) { firstAudio = ms; $("first-audio").textContent = `${ms.toFixed(0)} ms`; }
        play(event);
        status("answering…");
      } else if (event.event === "metrics") {
        if (event.first_audio_ms != null) $("server-first-audio").textContent = `${event.first_audio_ms.toFixed(0)} ms`;
        if (event.rtf != null) $("server-rtf").textContent = event.rtf.toFixed(2);
      } else if (event.event === "error") {
        failed(`${event.stage}: ${event.message}`);
      } else if (event.event === "turn-end") {
        omnivox.turns += 1;
        status(event.reason === "done" ? "done" : `ended: ${event.reason}`);
      }
    }
  }
}

function failed(message) {
  omnivox.lastError = message;
  status(message, true);
}

// One s16le mono chunk of the answer, scheduled right after the previous one (gapless)
function play(event) {
  const bytes = Uint8Array.from(atob(event.pcm), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  const ctx = audioContext();
  const buffer = ctx.createBuffer(1, pcm.length, event.rate);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  const node = ctx.createBufferSource();
  node.buffer = buffer;
  node.connect(ctx.destination);
  playAt = Math.max(playAt, ctx.currentTime + 0.05);
  node.start(playAt);
  playAt += buffer.duration;
  omnivox.audioChunks += 1;
  omnivox.audioSeconds += buffer.duration;
  $("audio-chunks").textContent = String(omnivox.audioChunks);
  $("audio-seconds").textContent = `${omnivox.audioSeconds.toFixed(2)} s`;
}

$("record").addEventListener("click", startRecording);
$("stop").addEventListener("click", stopAndSend);
$("ask").addEventListener("click", () => {
  const text = $("question").value.trim();
  if (text) ask({ text });
});
$("question").addEventListener("keydown", (e) => e.key === "Enter" && $("ask").click());
$("use-token").addEventListener("click", () => {
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("auth").hidden = true;
  if (lastAsked) ask(...lastAsked);
});
$("token").addEventListener("keydown", (e) => e.key === "Enter" && $("use-token").click());
