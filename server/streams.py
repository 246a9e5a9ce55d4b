"""Live streams' domain logic, without grpc: admit and count streams, check each chunk, run the denoiser.

The servicer unpacks protobuf messages into these calls and maps :class:`HushwireError` to a status.
Who does what:

- :class:`StreamRegistry` admits streams and is the one place that counts them (open, per user,
  configured), for the drain, the limits, the batcher and the ``hushwire_streams_open`` gauge;
- :class:`StreamSession` is one configured stream: bytes in, denoised bytes out, its rows in a
  :class:`DenoiserPools` pool of its rate;
- :class:`StreamBatcher` only schedules: it denoises the chunks of all streams that arrive within
  a short window as one batch per pool (see ``server/dsp/denoiser.py``, ``DenoiserPool``). Under
  load the per-call cost of numpy is shared by many streams, which is what lets one core serve many.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from hushwire.contract import pcm
from hushwire.contract.limits import MAX_CHANNELS, MAX_CHUNK_SECONDS, SUPPORTED_RATES, check_attenuation_limit
from hushwire.contract.metadata import REFUSED_FOR_CAP, REFUSED_FOR_LOAD, REFUSED_FOR_USERS
from server.admission import Admission, stream_weight
from server.dsp import Denoiser, DenoiserPool
from server.errors import HushwireError
from server.metrics import METRICS, observe_many
from server.shared import USER_ROWS, Refused, SharedState

__all__ = ["DenoiserPools", "StreamBatcher", "StreamRegistry", "StreamSession"]

_FULL_MSG = "this server cannot take another live stream in real time; retry, ideally on another replica"
_CAP_MSG = "this server is serving its most live streams ({}); retry, ideally on another replica"
_USERS_MSG = "this server is serving live streams for the most users it counts at once ({}); retry, ideally on " \
             "another replica"


class StreamRegistry:
    """The live streams: admits them (limits, admission control), counts them, and ends them on drain.

    It is the only place that counts streams: ``tasks`` holds every open stream (configured or
    not), :attr:`live` the configured ones, which send audio; the batcher and the
    ``hushwire_streams_open`` gauge read that count from here. Use from the event loop's thread only.
    """

    def __init__(self, max_per_user: int = 256, max_streams: int | None = None,
                 admission: Admission | None = None, shared: SharedState | None = None) -> None:
        self.tasks: dict[asyncio.Task[object], int] = {}  # task -> uid
        self.weights: dict[asyncio.Task[object], float] = {}  # task -> weight reserved in ``admission``
        self.admission = admission
        self.per_user: collections.Counter[int] = collections.Counter()
        self.max_per_user = max_per_user
        self.max_streams = max_streams  # the operator's cap on this server (--max-streams), or None
        # With serve --processes N, the per-user limit and the cap count every sibling's streams
        # (server/shared.py); ``per_user`` and ``tasks`` stay this process's own.
        self.shared = shared
        self.shutting_down = False
        self._live: set[asyncio.Task[object]] = set()  # streams whose config was accepted
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def live(self) -> int:
        """Configured streams open now (they send audio; the batcher waits for them)."""
        return len(self._live)

    def add(self, task: asyncio.Task[object], uid: int) -> None:
        """Register a stream; RATE_LIMITED when the user already has ``max_per_user`` open (a quota:
        not worth retrying), OVERLOADED when the server has ``max_streams`` or cannot keep one more stream
        in real time (server/admission.py; retry, ideally elsewhere). Until its config arrives, a stream
        reserves the cost of one 16 kHz mono stream. With sibling processes, both limits count the
        streams of the whole group; admission control is this process's."""
        self._count(uid)
        if self.admission is not None:
            if not self.admission.try_reserve(1.0):
                if self.shared is not None:
                    self.shared.close_stream(uid)
                METRICS.streams_refused.labels(REFUSED_FOR_LOAD).inc()
                raise HushwireError("OVERLOADED", _FULL_MSG, REFUSED_FOR_LOAD)
            self.weights[task] = 1.0
        self.tasks[task] = uid
        self.per_user[uid] += 1
        self._idle.clear()

    def _count(self, uid: int) -> None:
        """Check the per-user limit and the cap; with a group, count the stream in the shared state
        (atomically with the check)."""
        if self.shared is None:
            if self.per_user[uid] >= self.max_per_user:
                raise HushwireError("RATE_LIMITED", f"at most {self.max_per_user} concurrent streams per user")
            if self.max_streams is not None and len(self.tasks) >= self.max_streams:
                METRICS.streams_refused.labels(REFUSED_FOR_CAP).inc()
                raise HushwireError("OVERLOADED", _CAP_MSG.format(self.max_streams), REFUSED_FOR_CAP)
            return
        try:
            self.shared.open_stream(uid, self.max_per_user, self.max_streams)
        except Refused as refused:
            if refused.reason == "user":
                raise HushwireError("RATE_LIMITED",
                                    f"at most {self.max_per_user} concurrent streams per user") from None
            if refused.reason == "cap":
                METRICS.streams_refused.labels(REFUSED_FOR_CAP).inc()
                raise HushwireError("OVERLOADED", _CAP_MSG.format(self.max_streams), REFUSED_FOR_CAP) from None
            # The users' table is full: not the operator's cap, and no sibling would take it either.
            METRICS.streams_refused.labels(REFUSED_FOR_USERS).inc()
            raise HushwireError("OVERLOADED", _USERS_MSG.format(USER_ROWS), REFUSED_FOR_USERS) from None

    def configured(self, task: asyncio.Task[object], weight: float) -> None:
        """The stream's config was accepted: set its reservation from its rate and channels (OVERLOADED
        when the larger one does not fit; a server's only stream always fits), and count it live."""
        if self.admission is not None and task in self.weights:
            old = self.weights[task]
            if weight <= old:
                self.admission.release(old - weight)
            elif len(self.weights) > 1 and not self.admission.try_reserve(weight - old):
                METRICS.streams_refused.labels(REFUSED_FOR_LOAD).inc()
                raise HushwireError("OVERLOADED", _FULL_MSG, REFUSED_FOR_LOAD)
            elif len(self.weights) <= 1:
                self.admission.reserved_weight += weight - old
            self.weights[task] = weight
        if task in self.tasks:
            self._live.add(task)
            METRICS.streams(len(self._live))

    def discard(self, task: asyncio.Task[object]) -> None:
        weight = self.weights.pop(task, None)
        if weight is not None and self.admission is not None:
            self.admission.release(weight)
        if task in self._live:
            self._live.discard(task)
            METRICS.streams(len(self._live))
        uid = self.tasks.pop(task, None)
        if uid is not None:
            if self.shared is not None:
                self.shared.close_stream(uid)
            self.per_user[uid] -= 1
            if self.per_user[uid] <= 0:
                del self.per_user[uid]
        if not self.tasks:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def end_all(self) -> None:
        self.shutting_down = True
        for task in list(self.tasks):
            task.cancel()


class DenoiserPools:
    """The live streams' DSP state: one :class:`DenoiserPool` per sample rate, made on first use.

    Use from the event loop's thread only.
    """

    def __init__(self) -> None:
        self._pools: dict[int, DenoiserPool] = {}

    def pool(self, sample_rate: int) -> DenoiserPool:
        if sample_rate not in self._pools:
            self._pools[sample_rate] = DenoiserPool(sample_rate)
        return self._pools[sample_rate]


def _invalid(msg: str) -> HushwireError:
    return HushwireError("INVALID_ARGUMENT", msg)


def _check_limit(db: float | None) -> float | None:
    try:
        return check_attenuation_limit(db)
    except ValueError as exc:
        raise _invalid(str(exc)) from None


class StreamSession:
    """A configured stream: bytes in, denoised bytes out, same encoding and channels."""

    def __init__(
        self, sample_rate_hz: int, channels: int, encoding: int, attenuation_limit_db: float | None = None,
        pools: DenoiserPools | None = None,
    ) -> None:
        if sample_rate_hz not in SUPPORTED_RATES:
            rates = ", ".join(str(r) for r in SUPPORTED_RATES)
            raise _invalid(f"unsupported sample_rate_hz {sample_rate_hz}; supported: {rates}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise _invalid(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        if encoding not in pcm.BYTES_PER_SAMPLE:
            raise _invalid(f"unsupported encoding {encoding}: use SAMPLE_ENCODING_PCM16 or SAMPLE_ENCODING_FLOAT32")
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.encoding = encoding
        self.frame_bytes = pcm.BYTES_PER_SAMPLE[encoding] * channels
        self.weight = stream_weight(sample_rate_hz, channels)  # its cost against 16 kHz mono
        self.max_chunk_bytes = int(MAX_CHUNK_SECONDS * sample_rate_hz) * self.frame_bytes
        pool = pools.pool(sample_rate_hz) if pools is not None else None  # None: a pool of its own
        self.denoiser = Denoiser(sample_rate_hz, channels, _check_limit(attenuation_limit_db), pool=pool)
        self.frames_in = 0
        self.frames_out = 0

    @property
    def delay_samples(self) -> int:
        return int(self.denoiser.latency_samples)

    def update(self, attenuation_limit_db: float | None, bypass: bool | None) -> None:
        """Apply a mid-stream update; ``None`` leaves a setting unchanged."""
        if attenuation_limit_db is not None:
            self.denoiser.attenuation_limit_db = _check_limit(attenuation_limit_db)
        if bypass is not None:
            self.denoiser.bypass = bool(bypass)

    def decode(self, audio: bytes) -> npt.NDArray[np.float32]:
        """Check one chunk and decode it to ``(frames, channels)`` floats."""
        self.check(audio)
        return pcm.decode(audio, self.encoding, self.channels)

    def check(self, audio: bytes) -> None:
        """Check one chunk (whole frames, at most a second) and count its frames as input."""
        if len(audio) % self.frame_bytes:
            raise _invalid(
                f"audio chunk of {len(audio)} bytes is not whole frames "
                f"({self.frame_bytes} bytes per frame: {self.channels} channel(s))"
            )
        if len(audio) > self.max_chunk_bytes:
            raise _invalid(
                f"audio chunk of {len(audio) // self.frame_bytes} frames is over "
                f"{MAX_CHUNK_SECONDS:g} s ({self.max_chunk_bytes // self.frame_bytes} frames)"
            )
        self.frames_in += len(audio) // self.frame_bytes

    def encode(self, y: npt.NDArray[np.float32]) -> tuple[bytes, float]:
        """The denoiser's output as bytes in the stream's encoding, and the chunk's voice probability."""
        self.frames_out += y.shape[0]
        return pcm.encode(y, self.encoding), float(self.denoiser.voice_probability)

    def process(self, audio: bytes) -> tuple[bytes, float]:
        """Denoise one chunk on its own; returns the output that became ready and the voice probability."""
        return self.encode(self.denoiser.process(self.decode(audio)))

    def flush(self) -> bytes:
        y: np.ndarray = self.denoiser.flush()
        self.frames_out += y.shape[0]
        return pcm.encode(y, self.encoding)

    def close(self) -> None:
        """Free the denoiser's state (its rows in the pool); closing twice does nothing."""
        self.denoiser.close()


_Queued = tuple[StreamSession, bytes, "asyncio.Future[tuple[bytes, float, float]]"]


def _by_encoding(items: list[_Queued]) -> list[list[int]]:
    """The items' indices grouped by their stream's encoding (one group in the usual case)."""
    first = items[0][0].encoding
    if all(session.encoding == first for session, _, _ in items):
        return [list(range(len(items)))]
    groups: dict[int, list[int]] = {}
    for i, (session, _, _) in enumerate(items):
        groups.setdefault(session.encoding, []).append(i)
    return list(groups.values())


class StreamBatcher:
    """Denoises the chunks that live streams submit within a short window as one batch per pool.

    ``await process(session, audio)`` queues the chunk. The first chunk of a batch starts a
    window of ``window_s``; the chunks that arrive meanwhile join it, and it runs when the window
    ends or as soon as every open stream has a chunk queued. ``open_streams`` says how many are
    open (the registry's :attr:`StreamRegistry.live`; the batcher counts nothing itself). With
    fewer than ``min_streams`` open streams there is no window: the batch runs in the loop's next
    turn (``call_soon``) with whatever arrived in this one. A batch costs a fixed ~0.25 ms plus ~45 us per 20 ms chunk,
    so real-time streams spread evenly over time would otherwise rarely share one until the
    core is saturated; the window trades at most ``window_s`` of latency for that. Measured at
    40-50 streams of 20 ms on one core (bench.streams): no window 21.5 ms of CPU per
    stream-second and 2.3 chunks per batch; 1 ms: 14.6 ms and 5-9 chunks; 4 ms: 12.5 ms and 14
    chunks but a p99 latency twice as high. The server's default is 1 ms.
    Use from the event loop's thread only.
    """

    def __init__(self, open_streams: Callable[[], int], window_s: float = 0.0, min_streams: int = 4) -> None:
        self.window_s = max(0.0, float(window_s))
        self.min_streams = min_streams
        self._open_streams = open_streams
        self._queue: list[_Queued] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # batches run, and chunks in them: their ratio is the mean batch size
        self.chunks = 0

    async def process(self, session: StreamSession, audio: bytes) -> tuple[bytes, float, float]:
        """Denoise one chunk with the others of this turn: ``(audio out, voice probability, seconds)``.

        ``seconds`` is this chunk's share of its batch's processing time.
        """
        return await self.submit(session, audio)

    def submit(self, session: StreamSession, audio: bytes) -> asyncio.Future[tuple[bytes, float, float]]:
        """Queue one chunk (checked now, decoded with its batch); the future gets what :meth:`process`
        returns. The servicer awaits it directly: one coroutine frame less to resume per chunk."""
        session.check(audio)   # decoded with the rest of its batch
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[bytes, float, float]] = loop.create_future()
        queue = self._queue
        queue.append((session, audio, fut))
        if not self._scheduled:
            self._scheduled = True
            if self.window_s > 0 and self._open_streams() >= self.min_streams:
                self._timer = loop.call_later(self.window_s, self._run)
            else:
                loop.call_soon(self._run)
        elif self._timer is not None and len(queue) >= self._open_streams():
            self._timer.cancel()  # every open stream is waiting: no one else can join
            self._timer = None
            loop.call_soon(self._run)
        return fut

    def _run(self) -> None:
        self._scheduled = False
        self._timer = None
        queue, self._queue = self._queue, []
        by_pool: dict[DenoiserPool, list[_Queued]] = {}
        for item in queue:
            if not item[2].done():  # a cancelled stream's chunk is dropped (its state may be freed)
                by_pool.setdefault(item[0].denoiser.pool, []).append(item)
        for pool, items in by_pool.items():
            self._run_batch(pool, items)

    def _run_batch(self, pool: DenoiserPool, items: list[_Queued]) -> None:
        """One pool's chunks: decode, denoise, encode, answer; the metrics once per batch."""
        t0 = time.perf_counter()
        n = len(items)
        try:
            groups = _by_encoding(items)
            if len(groups) == 1:   # the usual case: one encoding, the codec once for the batch
                encoding = items[0][0].encoding
                xs = pcm.decode_many([item[1] for item in items], encoding, [item[0].channels for item in items])
                cpu1 = time.thread_time()
                outs = pool.process_many([(item[0].denoiser, x) for item, x in zip(items, xs, strict=True)])
                cpu2 = time.thread_time()
                audio = pcm.encode_many(outs, encoding)
            else:
                xs = [np.empty(0, np.float32)] * n
                for group in groups:   # the codec runs once per batch and encoding, not once per chunk
                    decoded = pcm.decode_many([items[i][1] for i in group], items[group[0]][0].encoding,
                                              [items[i][0].channels for i in group])
                    for i, x in zip(group, decoded, strict=True):
                        xs[i] = x
                cpu1 = time.thread_time()
                outs = pool.process_many([(item[0].denoiser, x) for item, x in zip(items, xs, strict=True)])
                cpu2 = time.thread_time()
                audio = [b""] * n
                for group in groups:
                    encoded = pcm.encode_many([outs[i] for i in group], items[group[0]][0].encoding)
                    for i, data in zip(group, encoded, strict=True):
                        audio[i] = data
        except Exception as exc:  # a bug, not bad input (chunks are checked in process): fail this batch only
            for _, _, fut in items:
                fut.set_exception(exc)
            return
        share = (time.perf_counter() - t0) / n
        self.batches += 1
        self.chunks += n
        METRICS.batch_chunks.observe(n)
        METRICS.denoiser_cpu.inc(cpu2 - cpu1)
        observe_many(METRICS.chunk_seconds, share, n)
        for (session, _, fut), y, out in zip(items, outs, audio, strict=True):
            session.frames_out += y.shape[0]
            fut.set_result((out, session.denoiser.voice_probability, share))
        # Real-time factor: this share over the chunk's duration; chunks of one size share a bucket
        # (all of them, in the usual batch: equal chunks of streams of one layout).
        rate = items[0][0].sample_rate_hz   # one pool per rate
        first, first_bytes = items[0][0].frame_bytes, len(items[0][1])
        if all(len(data) == first_bytes and session.frame_bytes == first for session, data, _ in items):
            if first_bytes:
                observe_many(METRICS.realtime_factor, share * rate * first / first_bytes, n)
            return
        sizes = collections.Counter((len(data), session.frame_bytes) for session, data, _ in items)
        for (nbytes, frame_bytes), count in sizes.items():
            if nbytes:
                observe_many(METRICS.realtime_factor, share * rate * frame_bytes / nbytes, count)
