// hushwire console: files (POST /enhance, GET /stat/jobs/<id>) and live (the /live WebSocket).
//
// Plain JavaScript, no build step, no CDN. Every request goes to the gateway's public routes, the
// same ones any other client uses. The API key is read from #api-key whenever an action starts,
// checked with GET /me, and kept in sessionStorage; it leaves the page only as the Authorization
// header and as the key in the WebSocket's first message.
//
// The /live protocol (the gateway's gateway/live.py documents the same):
//   page -> gateway  text  {"key", "sample_rate_hz", "channels": 1, "encoding": "float32",
//                           "attenuation_limit_db": null | dB}        first, exactly once
//   gateway -> page  text  {"algorithmic_delay_samples": N}           the stream is open
//   page -> gateway  binary  float32 little-endian mono frames (10 ms each here)
//                    text  {"attenuation_limit_db": dB} / {"bypass": bool}   live settings
//                    text  {"end": true}                               half-close: flush the tail
//   gateway -> page  binary  one per frame sent, in order: float32 voice probability (4 bytes),
//                            then the denoised float32 audio (possibly none); one more after "end"
//                    text  {"end": true} (complete) or {"error": {"code", "msg"}}, then close
// The received audio is the input's length plus N samples; the recording drops the first N.
"use strict";

(() => {
  const KEY_STORAGE = "hushwire.apiKey";
  const FRAME_MS = 10;                 // audio per WebSocket message
  const POLL_MS = 700;                 // job status polling
  const MAX_RECORD_S = 600;            // the live recording keeps at most this much (PCM16 in memory)
  const LATENCY_WINDOW = 50;           // round trips in the median shown
  const UI_INTERVAL_MS = 60;           // meters and readouts refresh at most this often
  const NO_LIMIT_DB = 100;             // the slider's top: no attenuation limit
  // The stream's limits (rates, channels, the attenuation limit's range) are the gateway's to say:
  // GET console/limits.json serves the contract's values, so none is copied here.
  const SPECTRO = { rate: 16000, fft: 512, width: 480, height: 160, floorDb: -100, topDb: -20 };

  const $ = (id) => document.getElementById(id);

  // -- errors in plain words ----------------------------------------------------------------------

  class UserError extends Error {}

  const CODE_WORDS = {
    API_KEY_NOT_FOUND: "The API key was not accepted: it is unknown or has been revoked. Check the key and try again.",
    SERVICE_UNAVAILABLE: "The hushwire server cannot be reached right now (it may be down or restarting). Try again in a moment.",
    OVERLOADED: "The hushwire server is serving as many live streams as it can. Try again in a moment.",
    UPSTREAM_TIMEOUT: "The hushwire server did not answer in time. Try again in a moment.",
    RATE_LIMITED: "A usage limit of your account was reached",
    SLOW_CONSUMER: "The connection could not keep up with the audio, so the live stream was ended.",
    FILE_TOO_LARGE: "The file is too large for this server",
    INVALID_FILE: "The server cannot read this file as audio",
    REQUEST_TIMEOUT: "The upload stalled and was given up",
    FORBIDDEN_ORIGIN: "This page may not open the live stream from its current address.",
  };

  function words(code, msg) {
    const base = CODE_WORDS[code];
    if (!base) {
      return msg || code || "Something went wrong.";
    }
    if (base.endsWith(".")) {
      return base;
    }
    return msg ? `${base}: ${msg}` : `${base}.`;
  }

  async function replyError(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) {
        return new UserError(words(body.error.code, body.error.msg));
      }
    } catch (_) {
      // not the gateway's JSON error: fall through
    }
    return new UserError(`The gateway answered ${resp.status} ${resp.statusText}.`);
  }

  function showError(err) {
    const box = $("error");
    const text = err instanceof UserError ? err.message : `Unexpected error: ${err && err.message ? err.message : err}`;
    box.textContent = text;
    box.hidden = false;
    if (!(err instanceof UserError)) {
      console.error(err);
    }
  }

  function clearError() {
    $("error").textContent = "";
    $("error").hidden = true;
  }

  async function gatewayFetch(url, init) {
    try {
      return await fetch(url, init);
    } catch (_) {
      throw new UserError("The hushwire gateway cannot be reached. Check the network, or whether the gateway is running.");
    }
  }

  // -- the stream's limits -------------------------------------------------------------------------

  let limitsPromise = null;

  // {sample_rates_hz, max_channels, encodings, max_chunk_seconds, min_attenuation_limit_db}; fetched
  // once (again after a failure).
  function streamLimits() {
    if (!limitsPromise) {
      limitsPromise = (async () => {
        const resp = await gatewayFetch("console/limits.json");
        if (!resp.ok) {
          throw await replyError(resp);
        }
        return resp.json();
      })();
      limitsPromise.catch(() => { limitsPromise = null; });
    }
    return limitsPromise;
  }

  // -- the key --------------------------------------------------------------------------------------

  // Read the key from the input, check it with GET /me, and keep it for this tab. Throws UserError.
  async function checkKey() {
    const key = $("api-key").value.trim();
    if (!key) {
      throw new UserError("Enter your API key first.");
    }
    const resp = await gatewayFetch("me", { headers: { Authorization: key } });
    if (resp.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      $("who").textContent = "";
      throw new UserError(CODE_WORDS.API_KEY_NOT_FOUND);
    }
    if (!resp.ok) {
      throw await replyError(resp);
    }
    const me = await resp.json();
    sessionStorage.setItem(KEY_STORAGE, key);
    $("who").textContent = `key of ${me.name || "user"} (user ${me.uid})`;
    return key;
  }

  async function action(fn) {
    clearError();
    try {
      await fn();
    } catch (err) {
      showError(err);
    }
  }

  // -- files ----------------------------------------------------------------------------------------

  const jobs = new Map();   // job id -> {row, file, timer}

  async function uploadFiles(files) {
    if (!files.length) {
      return;
    }
    const key = await checkKey();
    const status = $("upload-status");
    for (const file of files) {
      status.textContent = `Uploading ${file.name}…`;
      const formdata = new FormData();   // as the DeepHearing seed does: one file under "file_key"
      formdata.append("file_key", file);
      const callbackUrl = $("callback-url").value.trim();
      if (callbackUrl) {
        formdata.append("callback_url", callbackUrl);
      }
      const resp = await gatewayFetch("enhance", { method: "POST", headers: { Authorization: key }, body: formdata });
      if (!resp.ok) {
        status.textContent = "";
        const err = await replyError(resp);
        throw new UserError(`${file.name}: ${err.message}`);
      }
      const reply = await resp.json();
      addJob(reply.file_key, file);
    }
    status.textContent = "";
  }

  function cell(row, cls) {
    const td = document.createElement("td");
    td.className = cls;
    row.appendChild(td);
    return td;
  }

  function addJob(jobId, file) {
    const row = document.createElement("tr");
    row.dataset.jobId = jobId;
    row.dataset.status = "pending";
    cell(row, "name").textContent = file.name;
    cell(row, "status").textContent = "pending";
    const progress = document.createElement("progress");
    progress.max = 1;
    progress.value = 0;
    cell(row, "progress").appendChild(progress);
    cell(row, "result");
    $("jobs").tBodies[0].prepend(row);
    const job = { row, file, timer: 0 };
    jobs.set(jobId, job);
    poll(jobId);
  }

  async function poll(jobId) {
    const job = jobs.get(jobId);
    const key = $("api-key").value.trim() || sessionStorage.getItem(KEY_STORAGE) || "";
    let stat;
    try {
      const resp = await gatewayFetch(`stat/jobs/${encodeURIComponent(jobId)}`, { headers: { Authorization: key } });
      if (!resp.ok) {
        throw await replyError(resp);
      }
      stat = await resp.json();
    } catch (err) {
      showError(err);
      job.timer = setTimeout(() => poll(jobId), POLL_MS * 4);
      return;
    }
    const row = job.row;
    row.dataset.status = stat.job_status;
    row.querySelector(".status").textContent = stat.job_status;
    const hookPending = showCallback(row, stat.callback);
    row.querySelector("progress").value = stat.job_status === "completed" ? 1 : stat.progress || 0;
    const finished = stat.job_status === "completed" || stat.job_status === "failed";
    if (finished && !job.shown) {
      job.shown = true;
      if (stat.job_status === "completed") {
        showResult(job, stat);
      } else {
        const err = stat.error || {};
        const p = document.createElement("span");
        p.className = "job-error";
        p.textContent = words(err.code, err.msg);
        row.querySelector(".result").replaceChildren(p);
      }
    }
    if (!finished) {
      job.timer = setTimeout(() => poll(jobId), POLL_MS);
    } else if (hookPending) {   // the job is done; follow its webhook until it is delivered or given up
      job.timer = setTimeout(() => poll(jobId), POLL_MS * 4);
    }
  }

  // The job's webhook (its `callback` status) under its state; true while the delivery may still change.
  function showCallback(row, callback) {
    if (!callback) {
      return false;
    }
    const line = document.createElement("div");   // the status cell was just rewritten: a new line each time
    line.className = "callback muted";
    row.querySelector(".status").appendChild(line);
    line.dataset.state = callback.state;
    line.dataset.attempts = String(callback.attempts);
    let text = `webhook: ${callback.state}`;
    if (callback.attempts) {
      text += ` after ${callback.attempts} attempt${callback.attempts === 1 ? "" : "s"}`;
    }
    if (callback.last_status_code) {
      text += ` (last answer HTTP ${callback.last_status_code})`;
    } else if (callback.last_error) {
      text += ` (${callback.last_error})`;
    }
    line.textContent = text;
    line.title = callback.url;
    return callback.state === "waiting" || callback.state === "pending";
  }

  function figure(caption, media) {
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(cap, ...media);
    return fig;
  }

  function showResult(job, stat) {
    const before = document.createElement("audio");
    before.controls = true;
    before.preload = "none";
    before.src = URL.createObjectURL(job.file);
    const after = document.createElement("audio");
    after.controls = true;
    after.preload = "none";
    after.src = stat.result;
    const canvasBefore = spectrogramCanvas("spectrogram of the original");
    const canvasAfter = spectrogramCanvas("spectrogram of the enhanced audio");
    const links = document.createElement("div");
    links.className = "links";
    const download = document.createElement("a");
    download.href = stat.result;
    download.download = "";
    download.className = "download-result";
    download.textContent = "Download the enhanced file";
    links.append(download);
    const box = document.createElement("div");
    box.className = "compare";
    box.append(figure("original", [before, canvasBefore]), figure("enhanced", [after, canvasAfter]), links);
    job.row.querySelector(".result").replaceChildren(box);
    drawFileSpectrogram(canvasBefore, job.file.arrayBuffer());
    drawFileSpectrogram(canvasAfter, fetch(stat.result).then((r) => {
      if (!r.ok) {
        throw new Error(`result download answered ${r.status}`);
      }
      return r.arrayBuffer();
    }));
  }

  // -- spectrograms (drawn here, no server-side rendering) -------------------------------------------

  function spectrogramCanvas(label) {
    const canvas = document.createElement("canvas");
    canvas.width = SPECTRO.width;
    canvas.height = SPECTRO.height;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", label);
    return canvas;
  }

  async function drawFileSpectrogram(canvas, bytesPromise) {
    try {
      const bytes = await bytesPromise;
      // Decoding into a 16 kHz context resamples the file: the picture shows 0-8 kHz whatever its rate.
      const ctx = new OfflineAudioContext(1, 1, SPECTRO.rate);
      const audio = await ctx.decodeAudioData(bytes);
      const mono = new Float32Array(audio.length);
      for (let c = 0; c < audio.numberOfChannels; c++) {
        const data = audio.getChannelData(c);
        for (let i = 0; i < mono.length; i++) {
          mono[i] += data[i] / audio.numberOfChannels;
        }
      }
      drawSpectrogram(canvas, mono);
      canvas.dataset.drawn = "true";
    } catch (err) {
      canvas.dataset.drawn = "failed";
      canvas.title = `no spectrogram: ${err.message || err}`;
    }
  }

  function makeFft(n) {
    const levels = Math.log2(n);
    const rev = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      let r = 0;
      for (let b = 0; b < levels; b++) {
        r = (r << 1) | ((i >> b) & 1);
      }
      rev[i] = r;
    }
    const cos = new Float64Array(n / 2);
    const sin = new Float64Array(n / 2);
    for (let i = 0; i < n / 2; i++) {
      cos[i] = Math.cos((2 * Math.PI * i) / n);
      sin[i] = Math.sin((2 * Math.PI * i) / n);
    }
    // In-place iterative radix-2 FFT of (re, im).
    return (re, im) => {
      for (let i = 0; i < n; i++) {
        const j = rev[i];
        if (j > i) {
          [re[i], re[j]] = [re[j], re[i]];
          [im[i], im[j]] = [im[j], im[i]];
        }
      }
      for (let size = 2; size <= n; size *= 2) {
        const half = size / 2;
        const step = n / size;
        for (let start = 0; start < n; start += size) {
          for (let k = 0; k < half; k++) {
            const a = start + k;
            const b = a + half;
            const wr = cos[k * step];
            const wi = -sin[k * step];
            const xr = re[b] * wr - im[b] * wi;
            const xi = re[b] * wi + im[b] * wr;
            re[b] = re[a] - xr;
            im[b] = im[a] - xi;
            re[a] += xr;
            im[a] += xi;
          }
        }
      }
    };
  }

  // Dark blue -> purple -> orange -> pale yellow, for 0..1.
  function colour(v) {
    const stops = [[0, [8, 8, 32]], [0.35, [92, 24, 124]], [0.65, [222, 88, 52]], [1, [252, 240, 160]]];
    for (let i = 1; i < stops.length; i++) {
      if (v <= stops[i][0]) {
        const [p0, c0] = stops[i - 1];
        const [p1, c1] = stops[i];
        const t = (v - p0) / (p1 - p0);
        return c0.map((c, k) => Math.round(c + t * (c1[k] - c)));
      }
    }
    return stops[stops.length - 1][1];
  }

  // One FFT column per pixel (Hann window); levels in dB re a full-scale sine, on one fixed scale
  // so the original and the enhanced pictures compare directly.
  function drawSpectrogram(canvas, x) {
    const { fft: n, width: w, height: h, floorDb, topDb } = SPECTRO;
    const fft = makeFft(n);
    const win = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      win[i] = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / n);
    }
    const bins = n / 2;
    const hop = Math.max(1, (x.length - n) / (w - 1));
    const re = new Float64Array(n);
    const im = new Float64Array(n);
    const image = canvas.getContext("2d").createImageData(w, h);
    const scale = 2 / (n / 2);   // a full-scale sine's peak bin -> 1
    for (let col = 0; col < w; col++) {
      const start = Math.floor(col * hop);
      for (let i = 0; i < n; i++) {
        const s = start + i < x.length ? x[start + i] : 0;
        re[i] = s * win[i];
        im[i] = 0;
      }
      fft(re, im);
      for (let row = 0; row < h; row++) {
        const lo = Math.floor((row * bins) / h);
        const hi = Math.max(lo + 1, Math.floor(((row + 1) * bins) / h));
        let peak = 0;
        for (let b = lo; b < hi; b++) {
          peak = Math.max(peak, re[b] * re[b] + im[b] * im[b]);
        }
        const db = 10 * Math.log10(peak * scale * scale + 1e-20);
        const v = Math.min(1, Math.max(0, (db - floorDb) / (topDb - floorDb)));
        const [r, g, b] = colour(v);
        const at = ((h - 1 - row) * w + col) * 4;
        image.data[at] = r;
        image.data[at + 1] = g;
        image.data[at + 2] = b;
        image.data[at + 3] = 255;
      }
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
  }

  // -- live -----------------------------------------------------------------------------------------

  let live = null;   // the running session, see startLive

  function liveUrl() {
    const url = new URL("live", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function micWords(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "Microphone access was refused. Allow the microphone for this page in the browser, then press Start again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "No microphone was found. Connect one, then press Start again.";
    }
    if (name === "NotReadableError") {
      return "The microphone is in use by another program or could not be opened.";
    }
    return `The microphone could not be opened (${(err && err.message) || err}).`;
  }

  function limitValue() {
    const v = Number($("attenuation-limit").value);
    return v >= NO_LIMIT_DB ? null : v;
  }

  function showLimit() {
    const v = limitValue();
    $("attenuation-value").textContent = v === null ? "no limit" : `${v} dB`;
  }

  function setLiveState(text) {
    $("live-state").textContent = text;
  }

  function levelDb(samples) {
    let sum = 0;
    for (let i = 0; i < samples.length; i++) {
      sum += samples[i] * samples[i];
    }
    return samples.length ? 10 * Math.log10(sum / samples.length + 1e-12) : -120;
  }

  function showMeter(id, db) {
    const meter = $(id);
    meter.value = Math.max(Number(meter.min), Math.min(0, db));
    meter.dataset.db = db.toFixed(1);
    $(`${id}-text`).textContent = db <= -99 ? "– dB" : `${db.toFixed(0)} dB`;
  }

  async function openSocket(url) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new UserError("The live stream could not connect to the hushwire gateway."));
      ws.onclose = (event) => reject(new UserError(event.code === 1006
        ? "The live stream could not connect to the hushwire gateway."
        : `The gateway closed the live stream (${event.code}).`));
    });
    return ws;
  }

  // The gateway's first text message: the delay, or an error.
  function firstReply(ws) {
    return new Promise((resolve, reject) => {
      ws.onmessage = (event) => {
        let msg = null;
        try {
          msg = typeof event.data === "string" ? JSON.parse(event.data) : null;
        } catch (_) {
          // not JSON: answered below as not understood
        }
        if (msg && msg.error) {
          reject(new UserError(words(msg.error.code, msg.error.msg)));
        } else if (msg && typeof msg.algorithmic_delay_samples === "number") {
          resolve(msg.algorithmic_delay_samples);
        } else {
          reject(new UserError("The gateway answered the live stream in a way this page does not understand."));
        }
      };
      ws.onclose = () => reject(new UserError("The gateway closed the live stream before it started."));
      ws.onerror = () => {};
    });
  }

  async function startLive() {
    if (live) {
      return;
    }
    $("live-start").disabled = true;
    const session = {
      ws: null, ctx: null, node: null, stream: null, rate: 0, delay: 0, sent: [], rtts: [],
      recorded: [], recordedSamples: 0, truncated: false, ending: false, done: null, lastUi: 0,
      levelIn: -120, levelOut: -120, vp: 0, error: null, framesSent: 0, repliesReceived: 0, inputGaps: 0,
      source: null,
    };
    live = session;
    try {
      const key = await checkKey();
      setLiveState("opening the microphone…");
      if (!navigator.mediaDevices || !window.AudioWorkletNode) {
        throw new UserError("This browser allows the microphone and audio worklets only on https:// pages or on localhost.");
      }
      try {
        session.stream = await navigator.mediaDevices.getUserMedia({
          audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        });
      } catch (err) {
        throw new UserError(micWords(err));
      }
      const rates = (await streamLimits()).sample_rates_hz;
      let ctx = new AudioContext({ latencyHint: "interactive" });
      if (!rates.includes(ctx.sampleRate)) {
        await ctx.close();
        ctx = new AudioContext({ latencyHint: "interactive", sampleRate: Math.max(...rates) });
      }
      session.ctx = ctx;
      session.rate = ctx.sampleRate;
      await ctx.audioWorklet.addModule("console/worklet.js");
      session.node = new AudioWorkletNode(ctx, "hushwire-live", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { frameSamples: Math.round((ctx.sampleRate * FRAME_MS) / 1000) },
      });
      setLiveState("connecting…");
      session.ws = await openSocket(liveUrl());
      const reply = firstReply(session.ws);
      session.ws.send(JSON.stringify({
        key, sample_rate_hz: session.rate, channels: 1, encoding: "float32", attenuation_limit_db: limitValue(),
      }));
      session.delay = await reply;
      if ($("bypass").checked) {
        session.ws.send(JSON.stringify({ bypass: true }));
      }
      wireSession(session);
      // Held by the session: the graph alone is not a reference the page can count on to keep the
      // microphone's node (and so the input) alive for the whole session.
      session.source = ctx.createMediaStreamSource(session.stream);
      session.source.connect(session.node);
      session.node.connect(ctx.destination);
      await ctx.resume();
      $("live-rate").textContent = `${session.rate} Hz, ${((1000 * session.delay) / session.rate).toFixed(0)} ms algorithmic delay`;
      $("live-stop").disabled = false;
      $("live-download").hidden = true;
      $("live-download").removeAttribute("href");
      $("live-record-info").textContent = "";
      setLiveState("live");
    } catch (err) {
      teardown(session);
      live = null;
      $("live-start").disabled = false;
      setLiveState("stopped");
      throw err;
    }
  }

  function wireSession(session) {
    const ws = session.ws;
    session.done = new Promise((resolve) => {
      ws.onmessage = (event) => {
        if (typeof event.data === "string") {
          let msg = {};
          try {
            msg = JSON.parse(event.data);
          } catch (_) {
            return;   // not the gateway's JSON: ignore it
          }
          if (msg.error) {
            session.error = new UserError(words(msg.error.code, msg.error.msg));
          }
          return;
        }
        received(session, event.data);
      };
      ws.onclose = (event) => {
        if (!session.ending && !session.error) {
          session.error = new UserError(event.code === 1006
            ? "The connection to the hushwire gateway was lost."
            : `The gateway ended the live stream (${event.code}).`);
        }
        resolve();
        if (!session.ending) {
          finishLive(session);   // ended from the far side: stop capture and keep what arrived
        }
      };
    });
    session.node.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type !== "frame" || session.ending || ws.readyState !== WebSocket.OPEN) {
        return;
      }
      ws.send(msg.samples.buffer);
      session.sent.push(performance.now());
      session.framesSent += 1;
      session.inputGaps = msg.gaps;
      session.levelIn = levelDb(msg.samples);
      refreshUi(session);
    };
  }

  function received(session, buffer) {
    const now = performance.now();
    session.repliesReceived += 1;
    const sentAt = session.sent.shift();
    if (sentAt !== undefined) {
      session.rtts.push(now - sentAt);
      if (session.rtts.length > LATENCY_WINDOW) {
        session.rtts.shift();
      }
    }
    session.vp = new DataView(buffer, 0, 4).getFloat32(0, true);
    const audio = new Float32Array(buffer, 4);
    if (audio.length) {
      record(session, audio);
      if (!session.ending) {
        session.levelOut = levelDb(audio);
        session.node.port.postMessage({ type: "play", samples: audio.slice() });
      }
    }
    refreshUi(session);
  }

  function record(session, audio) {
    const room = MAX_RECORD_S * session.rate - session.recordedSamples;
    if (room <= 0) {
      session.truncated = true;
      return;
    }
    const n = Math.min(room, audio.length);
    const pcm = new Int16Array(n);
    for (let i = 0; i < n; i++) {
      const s = Math.max(-1, Math.min(1, audio[i]));
      pcm[i] = Math.round(s * 32767);
    }
    session.recorded.push(pcm);
    session.recordedSamples += n;
  }

  function refreshUi(session) {
    const now = performance.now();
    if (now - session.lastUi < UI_INTERVAL_MS) {
      return;
    }
    session.lastUi = now;
    const state = $("live-state");   // counters for scripts and tests: frames sent, replies received
    state.dataset.sent = session.framesSent;
    state.dataset.received = session.repliesReceived;
    state.dataset.inputGaps = session.inputGaps;   // render quanta the microphone delivered nothing for
    showMeter("level-in", session.levelIn);
    showMeter("level-out", session.levelOut);
    const vad = $("vad");
    vad.dataset.probability = session.vp.toFixed(2);
    vad.classList.toggle("active", session.vp >= 0.5);
    vad.textContent = `${session.vp >= 0.5 ? "speech" : "no speech"} (${Math.round(session.vp * 100)}%)`;
    if (session.rtts.length) {
      const sorted = [...session.rtts].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      const latency = $("live-latency");
      latency.dataset.ms = median.toFixed(1);
      latency.textContent = `${median.toFixed(0)} ms`;
    }
  }

  function resetReadouts() {
    showMeter("level-in", -120);
    showMeter("level-out", -120);
    const vad = $("vad");
    vad.dataset.probability = "0";
    vad.classList.remove("active");
    vad.textContent = "–";
  }

  function sendUpdate(update) {
    if (live && live.ws && live.ws.readyState === WebSocket.OPEN && !live.ending && live.done) {
      live.ws.send(JSON.stringify(update));
    }
  }

  async function stopLive() {
    const session = live;
    if (!session || session.ending) {
      return;
    }
    $("live-stop").disabled = true;
    setLiveState("finishing…");
    session.ending = true;
    session.node.port.postMessage({ type: "stop" });
    if (session.ws.readyState === WebSocket.OPEN) {
      session.ws.send(JSON.stringify({ end: true }));
    }
    const timeout = new Promise((resolve) => setTimeout(resolve, 5000));
    await Promise.race([session.done, timeout]);
    finishLive(session);
  }

  function teardown(session) {
    if (session.stream) {
      session.stream.getTracks().forEach((t) => t.stop());
    }
    if (session.source) {
      session.source.disconnect();
    }
    if (session.node) {
      session.node.port.postMessage({ type: "close" });
      session.node.disconnect();
    }
    if (session.ctx && session.ctx.state !== "closed") {
      session.ctx.close();
    }
    if (session.ws && session.ws.readyState <= WebSocket.OPEN) {
      session.ws.close(1000);
    }
  }

  function finishLive(session) {
    if (session.finished) {
      return;
    }
    session.finished = true;
    session.ending = true;
    teardown(session);
    if (live === session) {
      live = null;
    }
    const wav = wavBlob(session.recorded, session.delay, session.rate);
    if (wav) {
      const link = $("live-download");
      if (link.href && link.href.startsWith("blob:")) {
        URL.revokeObjectURL(link.href);
      }
      link.href = URL.createObjectURL(wav.blob);
      link.hidden = false;
      $("live-record-info").textContent = `${wav.seconds.toFixed(1)} s at ${session.rate} Hz`
        + (session.truncated ? ` (only the first ${MAX_RECORD_S / 60} minutes are kept)` : "");
    }
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    setLiveState("stopped");
    resetReadouts();
    if (session.error) {
      showError(session.error);
    }
  }

  // A mono PCM16 WAV of the recording without its first `skip` samples (the algorithmic delay).
  function wavBlob(chunks, skip, rate) {
    const total = chunks.reduce((n, c) => n + c.length, 0) - skip;
    if (total <= 0) {
      return null;
    }
    const header = new DataView(new ArrayBuffer(44));
    const ascii = (at, s) => [...s].forEach((ch, i) => header.setUint8(at + i, ch.charCodeAt(0)));
    ascii(0, "RIFF");
    header.setUint32(4, 36 + 2 * total, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    header.setUint32(16, 16, true);
    header.setUint16(20, 1, true);          // PCM
    header.setUint16(22, 1, true);          // mono
    header.setUint32(24, rate, true);
    header.setUint32(28, rate * 2, true);   // bytes per second
    header.setUint16(32, 2, true);          // bytes per frame
    header.setUint16(34, 16, true);         // bits per sample
    ascii(36, "data");
    header.setUint32(40, 2 * total, true);
    const parts = [header];
    let toSkip = skip;
    for (const chunk of chunks) {
      if (toSkip >= chunk.length) {
        toSkip -= chunk.length;
        continue;
      }
      parts.push(toSkip ? chunk.subarray(toSkip) : chunk);
      toSkip = 0;
    }
    return { blob: new Blob(parts, { type: "audio/wav" }), seconds: total / rate };
  }

  // -- wiring ---------------------------------------------------------------------------------------

  function init() {
    const stored = sessionStorage.getItem(KEY_STORAGE);
    if (stored && !$("api-key").value) {
      $("api-key").value = stored;
    }
    $("key-check").addEventListener("click", () => action(checkKey));
    $("api-key").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        action(checkKey);
      }
    });

    const input = $("upload-input");
    input.addEventListener("change", () => {
      const files = [...input.files];
      input.value = "";
      action(() => uploadFiles(files));
    });
    const zone = $("drop-zone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      action(() => uploadFiles([...event.dataTransfer.files]));
    });

    $("live-start").addEventListener("click", () => action(startLive));
    $("live-stop").addEventListener("click", () => action(stopLive));
    const slider = $("attenuation-limit");
    streamLimits().then((limits) => { slider.min = String(limits.min_attenuation_limit_db); }, () => {});
    let lastSent = 0;
    let pending = 0;
    const sendLimit = () => {
      pending = 0;
      lastSent = performance.now();
      const v = limitValue();
      sendUpdate({ attenuation_limit_db: v === null ? NO_LIMIT_DB : v });
    };
    slider.addEventListener("input", () => {
      showLimit();
      if (!pending) {   // at most ~10 updates a second while dragging
        pending = setTimeout(sendLimit, Math.max(0, 100 - (performance.now() - lastSent)));
      }
    });
    slider.addEventListener("change", () => {
      showLimit();
      clearTimeout(pending);
      sendLimit();
    });
    showLimit();
    $("bypass").addEventListener("change", () => sendUpdate({ bypass: $("bypass").checked }));
  }

  init();
})();
