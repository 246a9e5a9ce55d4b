"""``hushwire mic``: capture the microphone, denoise it live through the server, play and record it.

Threads and why:

- PortAudio's input callback only copies each block into a bounded queue (and notes overflows);
  it never blocks, so a slow network can only cost dropped blocks, which are counted.
- A network thread feeds the queue into one live gRPC stream and puts the denoised audio into a
  jitter buffer and the recording files. The client library retries opening the stream while the
  server is full (``OVERLOADED``) or draining, and resumes on a new stream when the server goes
  away mid-stream (``BackendLost``, said on the console), with its jittered backoff and within
  ``--connect-timeout``; past that the session ends with the reason.
- PortAudio's output callback reads the jitter buffer; an empty buffer plays silence (counted).
- The main thread prints one status line and handles Ctrl-C.
"""

from __future__ import annotations

import collections
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.core import RetryBudget
from client.errors import HushwireClientError
from client.stream import BackendLost, EnhancerClient
from hushwire.contract.defaults import CONNECT_TIMEOUT_SECONDS
from hushwire.contract.limits import MAX_CHANNELS, SUPPORTED_RATES

__all__ = ["MicError", "MicOptions", "run_mic"]

CAPTURE_QUEUE_BLOCKS = 50        # ~1 s at 20 ms blocks: beyond that, capture blocks are dropped
JITTER_TARGET_BLOCKS = 1         # playback starts once this much denoised audio is buffered
JITTER_MAX_SECONDS = 0.5         # older audio is dropped beyond this, so latency cannot creep up
STATUS_EVERY_S = 0.25
PROBE_SECONDS = 1.0              # one readiness probe's wait, so "retrying" shows while the server is away


class MicError(Exception):
    """A problem the user can fix (no PortAudio, no device, bad rate, server unreachable, bad key)."""


@dataclass
class MicOptions:
    target: str
    key: str | None
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    input_device: str | None = None
    output_device: str | None = None
    rate: int | None = None
    channels: int = 1
    block_ms: float = 20.0
    attenuation_limit_db: float | None = None
    record: str | None = None
    record_raw: str | None = None
    playback: bool = True
    duration: float | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def client(self) -> EnhancerClient:
        return EnhancerClient(self.target, self.key, connect_timeout=self.connect_timeout, tls_ca=self.tls_ca,
                              tls_cert=self.tls_cert, tls_key=self.tls_key)


@dataclass
class Stats:
    captured_blocks: int = 0
    dropped_blocks: int = 0          # capture queue full (network too slow)
    input_overflows: int = 0         # PortAudio reported lost input
    output_underflows: int = 0       # playback found the jitter buffer empty
    jitter_drops: int = 0            # denoised audio dropped because the buffer was too deep
    sent_frames: int = 0
    received_frames: int = 0
    reconnects: int = 0
    in_level_db: float = -120.0
    out_level_db: float = -120.0
    voice: float = 0.0
    latencies_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=500))

    def latency(self, q: float) -> float:
        return float(np.percentile(list(self.latencies_ms), q)) if self.latencies_ms else math.nan


def _level_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12)) if x.size else -120.0


class JitterBuffer:
    """Denoised frames waiting for playback; thread-safe, bounded."""

    def __init__(self, channels: int, max_frames: int, start_frames: int) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self._frames = 0
        self._lock = threading.Lock()
        self._max = max_frames
        self._start = start_frames
        self._started = False
        self.channels = channels

    @property
    def frames(self) -> int:
        return self._frames

    def write(self, x: np.ndarray) -> int:
        """Add frames; returns how many old frames were dropped to stay under the bound."""
        dropped = 0
        with self._lock:
            self._chunks.append(x)
            self._frames += x.shape[0]
            while self._frames > self._max and self._chunks:
                old = self._chunks.popleft()
                self._frames -= old.shape[0]
                dropped += old.shape[0]
        return dropped

    def read_into(self, out: np.ndarray) -> bool:
        """Fill ``out``; returns False (and fills silence) on an underrun."""
        n = out.shape[0]
        with self._lock:
            if not self._started:
                if self._frames < self._start:
                    out.fill(0)
                    return True
                self._started = True
            pos = 0
            while pos < n and self._chunks:
                head = self._chunks[0]
                take = min(n - pos, head.shape[0])
                out[pos : pos + take] = head[:take]
                if take == head.shape[0]:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
                self._frames -= take
                pos += take
            if pos < n:
                out[pos:] = 0
                self._started = False  # rebuffer before playing again
                return False
        return True


def _import_sounddevice() -> Any:
    try:
        import sounddevice as sd
    except ImportError:   # the light client install leaves it to the `mic` extra
        raise MicError("the microphone needs sounddevice: pip install 'hushwire-client[mic]' "
                       "(or the full install)") from None
    except OSError as exc:
        raise MicError(
            "the PortAudio library was not found, so no audio device can be opened. Install it: "
            "Debian/Ubuntu `sudo apt-get install libportaudio2`, Fedora `sudo dnf install portaudio`, "
            f"macOS `brew install portaudio` ({exc})"
        ) from None
    return sd


def list_devices() -> str:
    return str(_import_sounddevice().query_devices())


def _find_device(sd: Any, spec: str | None, kind: str) -> int:
    """A device index from an index or a case-insensitive name substring; the default when None."""
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = sd.query_devices()
    if spec is None:
        idx = sd.default.device[0 if kind == "input" else 1]
        if idx is None or idx < 0:
            candidates = [i for i, d in enumerate(devices) if d[key] > 0]
            if not candidates:
                raise MicError(f"no {kind} device found (see `hushwire mic --list-devices`)")
            idx = candidates[0]
        return int(idx)
    if spec.isdigit():
        idx = int(spec)
        if idx >= len(devices) or devices[idx][key] <= 0:
            raise MicError(f"device {idx} is not an {kind} device (see `hushwire mic --list-devices`)")
        return idx
    matches = [i for i, d in enumerate(devices) if spec.lower() in d["name"].lower() and d[key] > 0]
    if not matches:
        raise MicError(f"no {kind} device matches {spec!r} (see `hushwire mic --list-devices`)")
    return matches[0]


def _choose_rate(sd: Any, opts: MicOptions, device: int) -> int:
    if opts.rate is not None:
        if opts.rate not in SUPPORTED_RATES:
            raise MicError(f"--rate {opts.rate} is not supported; use one of {', '.join(map(str, SUPPORTED_RATES))}")
        return opts.rate
    native = int(sd.query_devices(device)["default_samplerate"])
    return native if native in SUPPORTED_RATES else max(SUPPORTED_RATES)


class MicSession:
    def __init__(self, opts: MicOptions, sd: Any, in_dev: int, out_dev: int | None, rate: int) -> None:
        self.opts = opts
        self.sd = sd
        self.in_dev, self.out_dev, self.rate = in_dev, out_dev, rate
        self.block = max(1, int(round(rate * opts.block_ms / 1000.0)))
        self.stats = Stats()
        self.capture: queue.Queue[tuple[np.ndarray, float] | None] = queue.Queue(CAPTURE_QUEUE_BLOCKS)
        self.jitter = JitterBuffer(opts.channels, int(JITTER_MAX_SECONDS * rate), JITTER_TARGET_BLOCKS * self.block)
        self.stop = threading.Event()        # set on Ctrl-C: drain what was captured, then end
        self.reached_duration = False         # --duration reached: end the stream now
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.delay = 0
        self._pending: collections.deque[tuple[int, float]] = collections.deque()  # (end sample, capture time)
        self._files: list[Any] = []
        self._rec = self._raw = None
        self._out_latency_s = 0.0
        self._rec_skip = 0

    # -- PortAudio callbacks: copy and count, nothing else ---------------------------------------

    def _on_input(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.stats.input_overflows += 1
        self.stats.captured_blocks += 1
        try:
            self.capture.put_nowait((indata.copy(), time.monotonic()))
        except queue.Full:
            self.stats.dropped_blocks += 1

    def _on_output(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow or not self.jitter.read_into(outdata):
            self.stats.output_underflows += 1

    # -- network thread -------------------------------------------------------------------------------

    def _blocks(self) -> Any:
        while not self.reached_duration:
            try:
                item = self.capture.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if item is None:
                return
            x, t = item
            if self._raw is not None:
                self._raw.write(x)
            self.stats.in_level_db = _level_db(x)
            self.stats.sent_frames += x.shape[0]
            self._pending.append((self.stats.sent_frames, t))
            if self.opts.duration is not None and self.stats.sent_frames >= self.opts.duration * self.rate:
                self.reached_duration = True
            yield x

    def _network(self) -> None:
        try:
            with self.opts.client() as c:
                # The library retries opening (a full or draining server) and resumes a lost stream
                # within the connect budget (client.core); past it, the session ends with the error.
                live = c.stream(self._blocks(), self.rate, self.opts.channels,
                                attenuation_limit_db=self.opts.attenuation_limit_db)
                self.delay = live.delay_samples
                self._rec_skip = self.delay
                for out in live:
                    if out.backend_lost is not None:  # the library resumed on a new stream
                        self._resumed(out.backend_lost)
                        continue
                    self._received(out.audio, out.voice_probability)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done.set()

    def _resumed(self, ev: BackendLost) -> None:
        self.stats.reconnects += 1
        self.delay = ev.delay_samples
        self._rec_skip = self.delay  # the new stream's output starts over with its delay
        lost_ms = 1000.0 * ev.frames_lost / self.rate
        _say(f"lost the server ({ev.status.name if ev.status else 'error'}: {ev.message}); resumed on a new "
             f"stream after {ev.outage_s:.1f} s, {lost_ms:.0f} ms of audio lost")

    def _received(self, y: np.ndarray, voice: float) -> None:
        if y.shape[0] == 0:
            return
        self.stats.received_frames += y.shape[0]
        self.stats.out_level_db = _level_db(y)
        self.stats.voice = voice
        if self._rec is not None:  # the recording is aligned to the capture: the delay is dropped
            skip = min(self._rec_skip, y.shape[0])
            self._rec_skip -= skip
            self._rec.write(y[skip:])
        if self.opts.playback:
            self.stats.jitter_drops += self.jitter.write(y)
        # Round trip: the capture time of the newest input this output covers, to when it will be heard.
        covered = self.stats.received_frames - self.delay
        now = time.monotonic()
        t_cap = None
        while self._pending and self._pending[0][0] <= covered:
            t_cap = self._pending.popleft()[1]
        if t_cap is not None:
            heard = now + (self.jitter.frames / self.rate if self.opts.playback else 0.0) + self._out_latency_s
            self.stats.latencies_ms.append((heard - t_cap) * 1000.0)

    # -- the session ----------------------------------------------------------------------------------

    def _open_recordings(self) -> None:
        import soundfile as sf

        if self.opts.record:
            self._rec = sf.SoundFile(self.opts.record, "w", self.rate, self.opts.channels, "PCM_16")
            self._files.append(self._rec)
        if self.opts.record_raw:
            self._raw = sf.SoundFile(self.opts.record_raw, "w", self.rate, self.opts.channels, "PCM_16")
            self._files.append(self._raw)

    def run(self) -> Stats:
        sd = self.sd
        self._open_recordings()
        net = threading.Thread(target=self._network, name="hushwire-mic-net", daemon=True)
        streams = []
        try:
            inp = sd.InputStream(device=self.in_dev, samplerate=self.rate, channels=self.opts.channels,
                                 dtype="float32", blocksize=self.block, latency="low", callback=self._on_input)
            streams.append(inp)
            if self.opts.playback:
                out = sd.OutputStream(device=self.out_dev, samplerate=self.rate, channels=self.opts.channels,
                                      dtype="float32", blocksize=self.block, latency="low",
                                      callback=self._on_output)
                streams.append(out)
                self._out_latency_s = float(out.latency)
            self._out_latency_s += float(inp.latency)
            net.start()
            for s in streams:
                s.start()
            last = 0.0
            while not self.done.is_set():
                if time.monotonic() - last >= STATUS_EVERY_S:
                    _status(self)
                    last = time.monotonic()
                self.done.wait(0.05)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop.set()
            for s in streams[:1]:
                s.stop()
                s.close()
            net.join(timeout=self.opts.connect_timeout + 5)
            for s in streams[1:]:
                s.stop()
                s.close()
            for f in self._files:
                f.close()
            sys.stderr.write("\n")
        if self.error is not None:
            raise self.error
        return self.stats


def _say(msg: str) -> None:
    sys.stderr.write(f"\r\x1b[K{msg}\n")
    sys.stderr.flush()


def _status(s: MicSession) -> None:
    st = s.stats
    line = (f"in {st.in_level_db:6.1f} dBFS | out {st.out_level_db:6.1f} dBFS | voice {st.voice:4.2f} | "
            f"latency p50 {st.latency(50):5.1f} ms p95 {st.latency(95):5.1f} ms | "
            f"dropped {st.dropped_blocks} overflows {st.input_overflows} underruns {st.output_underflows}")
    sys.stderr.write(f"\r\x1b[K{line}")
    sys.stderr.flush()


def _summary(s: MicSession, st: Stats) -> str:
    secs = st.sent_frames / s.rate
    return (f"streamed {secs:.1f} s at {s.rate} Hz ({s.opts.channels} ch), algorithmic delay "
            f"{1000 * s.delay / s.rate:.1f} ms; latency p50 {st.latency(50):.1f} ms p95 {st.latency(95):.1f} ms; "
            f"captured {st.captured_blocks} blocks, dropped {st.dropped_blocks}, input overflows "
            f"{st.input_overflows}, playback underruns {st.output_underflows}, reconnects {st.reconnects}"
            + (f"; recorded {s.opts.record}" if s.opts.record else "")
            + (f"; raw capture {s.opts.record_raw}" if s.opts.record_raw else ""))


def _connect(opts: MicOptions) -> None:
    """Wait for the server, retrying with the library's backoff within the connect budget, and say so."""
    retry = RetryBudget(opts.connect_timeout)
    attempt = 0
    with opts.client() as c:
        while True:
            try:
                c.wait_ready(timeout=max(0.1, min(retry.left(), PROBE_SECONDS)))
                return
            except HushwireClientError as err:
                if (wait := retry.wait_after(err)) is None:
                    raise MicError(f"the hushwire server at {opts.target} is unreachable or not serving; gave up "
                                   f"after {opts.connect_timeout:g} s ({err.msg}; is `hushwire serve` running? "
                                   f"--target?)") from None
                reason = err.msg
            attempt += 1
            _say(f"server at {opts.target} not ready ({reason}); retrying ({attempt})...")
            time.sleep(wait)


def run_mic(opts: MicOptions) -> int:
    sd = _import_sounddevice()
    if not 1 <= opts.channels <= MAX_CHANNELS:
        raise MicError(f"--channels must be 1..{MAX_CHANNELS}")
    in_dev = _find_device(sd, opts.input_device, "input")
    out_dev = _find_device(sd, opts.output_device, "output") if opts.playback else None
    rate = _choose_rate(sd, opts, in_dev)
    try:
        sd.check_input_settings(device=in_dev, channels=opts.channels, samplerate=rate, dtype="float32")
        if out_dev is not None:
            sd.check_output_settings(device=out_dev, channels=opts.channels, samplerate=rate, dtype="float32")
    except Exception as exc:  # PortAudioError or ValueError, with PortAudio's reason
        raise MicError(f"the audio device does not support {rate} Hz with {opts.channels} channel(s): {exc}") from None
    _connect(opts)
    session = MicSession(opts, sd, in_dev, out_dev, rate)
    _say(f"streaming {sd.query_devices(in_dev)['name']!r} at {rate} Hz to {opts.target}; Ctrl-C stops")
    try:
        stats = session.run()
    except HushwireClientError as err:
        if err.code == "API_KEY_NOT_FOUND":
            raise MicError("the server rejected the API key (API_KEY_NOT_FOUND): check --key or "
                           "HUSHWIRE_API_KEY") from None
        if err.code == "OVERLOADED":
            raise MicError(f"the hushwire server at {opts.target} is full (OVERLOADED) and stayed so for "
                           f"--connect-timeout {opts.connect_timeout:g} s; try again later ({err.msg})") from None
        raise MicError(str(err)) from None
    _say(_summary(session, stats))
    return 0
