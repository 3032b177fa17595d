// The live mode's microphone processor (an AudioWorklet, loaded by live.js): the captured audio resampled to
// 16 kHz (a Hann-windowed sinc, 32 taps, its weights tabled for PHASES fractional positions) and posted to the
// page as 10 ms frames of s16le PCM, each with its RMS level and the context time just after its last sample.
"use strict";

const OUT_RATE = 16000; // what the server's VAD and the model hear
const FRAME = 160; // 10 ms at OUT_RATE (live.js FRAME)
const HALF = 16; // filter taps on each side of an output sample
const PHASES = 64; // fractional positions between two input samples with their own weights

class MicProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    const cutoff = Math.min(1, OUT_RATE / sampleRate) * 0.9; // of the input's Nyquist frequency
    this.weights = []; // phase -> the 2 * HALF taps' weights, normalised to a gain of 1
    for (let phase = 0; phase < PHASES; phase++) {
      const taps = new Float32Array(2 * HALF);
      for (let j = 0; j < 2 * HALF; j++) {
        const t = HALF - 1 - j + phase / PHASES; // distance from the output instant, in input samples
        const x = Math.PI * cutoff * t;
        taps[j] = (t === 0 ? 1 : Math.sin(x) / x) * (0.5 + 0.5 * Math.cos((Math.PI * t) / HALF));
      }
      const sum = taps.reduce((a, b) => a + b, 0);
      this.weights.push(taps.map((w) => w / sum));
    }
    this.input = new Float32Array(0); // input samples not yet used up (HALF of history before `position`)
    this.position = HALF; // where the next output sample falls in `input`
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no input yet (the track is starting)
    const input = new Float32Array(this.input.length + channel.length);
    input.set(this.input);
    input.set(channel, this.input.length);
    const endTime = currentTime + channel.length / sampleRate;
    if (this.step === 1) {
      for (const x of channel) this.push(x, endTime);
      return true;
    }
    while (this.position + HALF < input.length) {
      this.push(this.sample(input, this.position), endTime);
      this.position += this.step;
    }
    const keep = Math.floor(this.position) - HALF; // the history the next output samples need
    this.input = input.slice(keep);
    this.position -= keep;
    return true;
  }

  // the band-limited value of `input` at fractional position `at`
  sample(input, at) {
    const whole = Math.floor(at);
    const taps = this.weights[Math.min(PHASES - 1, Math.round((at - whole) * PHASES))];
    const first = whole - HALF + 1;
    let sum = 0;
    for (let j = 0; j < 2 * HALF; j++) sum += input[first + j] * taps[j];
    return sum;
  }

  push(x, endTime) {
    this.frame[this.filled++] = x;
    if (this.filled < FRAME) return;
    const pcm = new Int16Array(FRAME);
    let energy = 0;
    for (let i = 0; i < FRAME; i++) {
      const v = Math.max(-1, Math.min(1, this.frame[i]));
      pcm[i] = v * 0x7fff;
      energy += v * v;
    }
    this.filled = 0;
    this.port.postMessage({ pcm: pcm.buffer, level: Math.sqrt(energy / FRAME), time: endTime }, [pcm.buffer]);
  }
}

registerProcessor("omnivox-mic", MicProcessor);
