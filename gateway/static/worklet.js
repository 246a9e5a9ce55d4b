// hushwire console: the AudioWorklet of the live stream (runs on the audio rendering thread).
//
// Input: the microphone (any channel count, mixed down to mono), cut into frames of
// `processorOptions.frameSamples` samples (10 ms at the context's rate) and posted to the page as
// {type: "frame", samples: Float32Array, gaps: n} (the buffer is transferred, not copied).
// The render clock is the stream's clock: a render quantum with no input at all (the browser hands
// the processor an empty input while its source delivers nothing) is captured as silence and counted
// in `gaps`, so a microphone that falters leaves a silent stretch of the right length instead of
// stopping the stream (which the page and the server would take for a stall, or an idle stream).
// Output: the denoised audio the page posts back as {type: "play", samples: Float32Array}, played
// from a small jitter buffer: playback starts once PREBUFFER_S is queued, a gap (underrun) plays
// silence and waits for the buffer to fill again, and at most MAX_QUEUE_S stays queued (the oldest
// audio is dropped), so a late network never makes the delay grow without bound.
// {type: "stop"} ends capture; {type: "close"} ends the processor.
"use strict";

const PREBUFFER_S = 0.04;
const RENDER_QUANTUM = 128;   // samples per process() call (Web Audio's render quantum)
const MAX_QUEUE_S = 0.5;

class HushwireLive extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = options.processorOptions.frameSamples;
    this.frame = new Float32Array(this.frameSamples);
    this.filled = 0;
    this.gaps = 0;          // render quanta that had no input (captured as silence)
    this.capturing = true;
    this.alive = true;
    this.queue = [];        // Float32Arrays waiting to be played
    this.head = 0;          // read position in queue[0]
    this.queued = 0;        // samples in the queue
    this.playing = false;
    this.prebuffer = Math.round(PREBUFFER_S * sampleRate);
    this.maxQueued = Math.round(MAX_QUEUE_S * sampleRate);
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === "play") {
      this.queue.push(msg.samples);
      this.queued += msg.samples.length;
      while (this.queued - this.head > this.maxQueued && this.queue.length > 1) {
        this.queued -= this.queue.shift().length;
        this.head = 0;
      }
    } else if (msg.type === "stop") {
      this.capturing = false;
    } else if (msg.type === "close") {
      this.alive = false;
    }
  }

  capture(input, quantum) {
    if (!this.capturing) {
      return;
    }
    if (input.length === 0) {
      this.gaps += 1;
    }
    const n = input.length ? input[0].length : quantum;
    const gain = input.length ? 1 / input.length : 0;
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let c = 0; c < input.length; c++) {
        s += input[c][i];
      }
      this.frame[this.filled++] = s * gain;
      if (this.filled === this.frameSamples) {
        this.port.postMessage({ type: "frame", samples: this.frame, gaps: this.gaps }, [this.frame.buffer]);
        this.frame = new Float32Array(this.frameSamples);
        this.filled = 0;
      }
    }
  }

  play(output) {
    const out = output[0];
    if (!out) {
      return;
    }
    if (!this.playing && this.queued - this.head >= this.prebuffer) {
      this.playing = true;
    }
    let i = 0;
    while (this.playing && i < out.length) {
      if (this.queue.length === 0) {
        this.playing = false;   // underrun: silence until the buffer has filled again
        break;
      }
      const chunk = this.queue[0];
      const take = Math.min(out.length - i, chunk.length - this.head);
      out.set(chunk.subarray(this.head, this.head + take), i);
      i += take;
      this.head += take;
      if (this.head === chunk.length) {
        this.queue.shift();
        this.queued -= chunk.length;
        this.head = 0;
      }
    }
    out.fill(0, i);
    for (let c = 1; c < output.length; c++) {
      output[c].set(out);
    }
  }

  process(inputs, outputs) {
    const out = outputs[0] || [];
    this.capture(inputs[0] || [], out.length ? out[0].length : RENDER_QUANTUM);
    this.play(out);
    return this.alive;
  }
}

registerProcessor("hushwire-live", HushwireLive);
